"""Workload 2: `testdb prepare-template` cold (build) vs warm (fingerprint unchanged), whole process."""

from __future__ import annotations

import json

from .common import BIN, REPO, Series, Server, log, run


def run_template(server: Server, reps: int) -> dict[str, Series]:
    cold = Series("testdb prepare-template, cold (builds the template)")
    warm = Series("testdb prepare-template, warm (fingerprint unchanged)")
    cold_inner = Series("  of which ensure_template (cold)")
    warm_inner = Series("  of which ensure_template (warm)")
    noop = Series("testdb --help (interpreter + CLI import only)")
    click_only = Series("python -c 'import click' (the floor for --help)")
    testdb = str(BIN / "testdb")
    for rep in range(reps):
        env = server.child_env(base=f"{server.prefix}_cli{rep}")
        wall, proc = run([testdb, "prepare-template", "--json"], env=env, cwd=REPO)
        result = json.loads(proc.stdout)
        assert result["action"] == "built", result
        cold.add(wall)
        cold_inner.add(result["seconds"])
        wall, proc = run([testdb, "prepare-template", "--json"], env=env, cwd=REPO)
        result = json.loads(proc.stdout)
        assert result["action"] == "reused", result
        warm.add(wall)
        warm_inner.add(result["seconds"])
        wall, _ = run([testdb, "--help"], env=env, cwd=REPO)
        noop.add(wall)
        wall, _ = run([str(BIN / "python"), "-c", "import click"], env=env, cwd=REPO)
        click_only.add(wall)
        log(
            f"template: repetition {rep + 1}/{reps}: cold {cold.values[-1]:.2f} s, warm {warm.values[-1]:.2f} s"
        )
    return {
        "cold": cold,
        "warm": warm,
        "cold_inner": cold_inner,
        "warm_inner": warm_inner,
        "noop": noop,
        "click": click_only,
    }
