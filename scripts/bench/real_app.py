"""Scenario `real-app` (issue 9): examples/async_service, its original set-up vs finreport-testdb.

Modes, interleaved repetition by repetition, each a whole `pytest -n 2` process in the example:

(o) original: `-p no:testdb -p original_conftest`: create_all per worker database, TRUNCATE of every
    table + re-insert of the seed rows before every test (what the service did before);
(t) testdb: the plugin's default isolation, no marker anywhere: every test commits for real and
    what it committed is undone after it;
(d), (k) as (o) and (t), on the machine's disk cluster (--disk-url): a durable server, where
    TRUNCATE pays for fsync (skipped when --disk-url is empty).

Per test, a recorder plugin writes the setup + teardown durations (the per-test isolation cost: the
TRUNCATE fixture, or the undo after the test) and the plugin's own timing of each undo
(`testdb_undo_ms`: how many tests needed one, and what each cost). The template is built by an
untimed warm-up run of each mode (steady state, like workload 3).
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from .common import BIN, REPO, Series, Server, log, run

EXAMPLE = REPO / "examples" / "async_service"

RECORDER = r"""
import json
import os

_TESTS = []


def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        # The undo after a test is recorded in its teardown report.
        resets = [v for k, v in report.user_properties if k == "testdb_undo_ms"]
        resets = resets if report.when == "teardown" else []
        _TESTS.append(
            [report.nodeid, report.when, report.duration, "testdb" in report.keywords, resets]
        )


def pytest_sessionfinish(session):
    out = os.environ.get("BENCH_RECORD_DIR")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if out and worker:  # the controller sees every report again: only the workers write
        with open(os.path.join(out, f"{worker}.json"), "w") as fh:
            json.dump(_TESTS, fh)
"""


def _asyncpg(url: URL, database: str) -> str:
    return url.set(drivername="postgresql+asyncpg", database=database).render_as_string(
        hide_password=False
    )


def _per_test(record_dir: Path) -> tuple[list[float], list[float], list[float]]:
    """(unmarked tests, marked tests): setup + teardown seconds of each test; and the plugin's own
    timing of each undo (`testdb_undo_ms` in the test's user_properties, seconds here)."""
    totals: dict[str, list[Any]] = {}
    resets: list[float] = []
    for path in record_dir.glob("*.json"):
        for nodeid, _when, duration, fresh, reset_ms in json.loads(path.read_text()):
            slot = totals.setdefault(nodeid, [0.0, fresh])
            slot[0] += duration
            resets += [ms / 1000 for ms in reset_ms]
    rollback = [t for t, fresh in totals.values() if not fresh]
    fresh = [t for t, fresh in totals.values() if fresh]
    return rollback, fresh, resets


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_real_app(server: Server, reps: int, disk_url: str | None) -> dict[str, Any]:
    modes: dict[str, tuple[str, URL]] = {
        "o": ("(o) original: create_all per worker + TRUNCATE per test, -n 2", server.url),
        "t": ("(t) testdb: default isolation, no markers, -n 2", server.url),
    }
    disk: Server | None = None
    if disk_url:
        disk = Server(make_url(disk_url), embedded=False, cache_dir=None, started_here=False)
        modes["d"] = ("(d) original on the disk cluster, -n 2", disk.url)
        modes["k"] = ("(k) testdb on the disk cluster, -n 2", disk.url)
    walls = {k: Series(label) for k, (label, _) in modes.items()}
    mean_ms = {
        k: Series(f"{label}: fixtures per test, mean", unit="ms") for k, (label, _) in modes.items()
    }
    fresh_all: dict[str, list[float]] = {k: [] for k in modes}
    rollback_all: dict[str, list[float]] = {k: [] for k in modes}
    resets_all: dict[str, list[float]] = {k: [] for k in modes}
    counts: dict[str, int] = {}
    lines: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-real-app-") as tmp:
        (Path(tmp) / "benchrec_realapp.py").write_text(RECORDER)
        for rep in range(-1, reps):  # rep -1: untimed warm-up (builds the template)
            for key, (label, url) in modes.items():
                record_dir = Path(tmp) / f"rec-{key}-{rep}"
                record_dir.mkdir()
                base = f"{server.prefix}_ra_{key}"
                env = server.child_env(
                    BENCH_RECORD_DIR=str(record_dir),
                    PYTHONPATH=str(tmp),
                    PYTHONDONTWRITEBYTECODE="1",
                )
                env.pop("TESTDB_CACHE_DIR", None)
                argv = [
                    str(BIN / "python"),
                    "-m",
                    "pytest",
                    "-q",
                    "-n",
                    "2",
                    "-p",
                    "no:cacheprovider",
                ]
                argv += ["-p", "benchrec_realapp"]
                if key in ("o", "d"):
                    env["DATABASE_URL"] = _asyncpg(url, base)
                    argv += ["-p", "no:testdb", "-p", "original_conftest"]
                else:
                    env["TESTDB_URL"] = _asyncpg(url, base)
                wall, proc = run(argv, env=env, cwd=EXAMPLE, timeout=1800)
                summary = proc.stdout.strip().splitlines()[-1]
                passed = re.search(r"(\d+) passed", summary)
                if not passed or re.search(r"failed|error", summary):
                    raise RuntimeError(f"real-app mode {key}: {summary}\n{proc.stdout[-3000:]}")
                counts[key] = int(passed.group(1))
                lines[key] = [
                    ln
                    for ln in (proc.stdout + proc.stderr).splitlines()
                    if ln.startswith("testdb:")
                ]
                rollback, fresh, resets = _per_test(record_dir)
                if rep < 0:
                    log(f"real-app: warm-up {label}: {wall:.1f} s, {counts[key]} passed")
                    continue
                walls[key].add(wall)
                mean_ms[key].add((sum(rollback) + sum(fresh)) / (len(rollback) + len(fresh)) * 1000)
                rollback_all[key] += rollback
                fresh_all[key] += fresh
                resets_all[key] += resets
                log(f"real-app: rep {rep + 1}/{reps} {label}: {wall:.1f} s")
    if disk is not None:
        disk.prefix = server.prefix
        dropped = disk.drop_prefixed()
        log(f"real-app: dropped {len(dropped)} database(s) on the disk cluster")
    distribution = {
        key: {
            "rollback_median_ms": statistics.median(rollback_all[key]) * 1000,
            "rollback_p95_ms": p95(rollback_all[key]) * 1000,
            "fresh_median_ms": statistics.median(fresh_all[key]) * 1000 if fresh_all[key] else None,
            "fresh_p95_ms": p95(fresh_all[key]) * 1000 if fresh_all[key] else None,
            "reset_median_ms": statistics.median(resets_all[key]) * 1000
            if resets_all[key]
            else None,
            "reset_p95_ms": p95(resets_all[key]) * 1000 if resets_all[key] else None,
            "resets": len(resets_all[key]),
            "fresh_tests": len(fresh_all[key]),
            "rollback_tests": len(rollback_all[key]),
        }
        for key in modes
    }
    return {
        "walls": walls,
        "mean_ms": mean_ms,
        "distribution": distribution,
        "tests": counts,
        "plugin_lines": lines,
    }
