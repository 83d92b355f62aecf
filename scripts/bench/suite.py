"""Workloads 3 and 5: one generated 800-test finance suite, run five ways, interleaved.

(a) serial, migrations once per session (the "before");  (b) `-n 2`, every worker migrates its
own database (naive xdist);  (c) `-n 2` with this plugin (template + clones + db_session);
(d) as (c) with `fresh_database` for 10 % of the tests;  (e) `-n 2` with pytest-postgresql's
`postgresql_noproc` + `postgresql` (a database cloned and dropped per test).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import BIN, PYTEST_RECORDED, REPO, Series, Server, log, run
from .suite_tests import (
    CONFTEST_MIGRATE,
    CONFTEST_PEER,
    CONFTEST_PLUGIN,
    HELPERS,
    RECORDER,
    render_module,
)

# Wraps the core API calls the plugin makes, so each process reports its DB set-up exactly.
RECORDER_CORE = r"""

def pytest_configure(config):
    try:
        from finreport_testdb.databases import ProjectDatabases
    except ImportError:
        return
    core = _BENCH.setdefault("core", {})

    def wrap(name, fn, is_classmethod=False):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                slot = core.setdefault(name, [0.0, 0])
                slot[0] += time.perf_counter() - started
                slot[1] += 1
        return classmethod(lambda cls, *a, **k: timed(*a, **k)) if is_classmethod else timed

    if getattr(ProjectDatabases, "_bench_wrapped", False):
        return
    ProjectDatabases._bench_wrapped = True
    original = ProjectDatabases.from_settings.__func__
    ProjectDatabases.from_settings = wrap(
        "from_settings", lambda *a, **k: original(ProjectDatabases, *a, **k), is_classmethod=True)
    names = ("ensure_template", "clone_for_worker", "clone_for_test", "drop_database")
    for name in names:
        setattr(ProjectDatabases, name, wrap(name, getattr(ProjectDatabases, name)))
"""

PYPROJECT = """
[project]
name = "bench-finance-suite"
version = "0"

[tool.testdb]
alembic_config = "{alembic}"

[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["fresh: needs a fresh database (real commits)"]
asyncio_default_fixture_loop_scope = "function"
"""


@dataclass
class Mode:
    key: str
    label: str
    conftest: str
    args: list[str]
    base_suffix: str
    env: dict[str, str] = field(default_factory=dict)


MODES = [
    Mode(
        "a",
        "(a) serial, migrations once per session",
        CONFTEST_MIGRATE,
        ["-p", "no:testdb"],
        "naive",
    ),
    Mode(
        "b",
        "(b) -n 2, each worker migrates its own db",
        CONFTEST_MIGRATE,
        ["-n", "2", "-p", "no:testdb"],
        "naive",
    ),
    Mode(
        "c",
        "(c) -n 2, testdb: template + clones + db_session",
        CONFTEST_PLUGIN,
        ["-n", "2"],
        "suite",
    ),
    Mode(
        "d",
        "(d) -n 2, testdb, fresh_database for 10 % of tests",
        CONFTEST_PLUGIN,
        ["-n", "2"],
        "suite",
        {"BENCH_FRESH": "1"},
    ),
    Mode(
        "e",
        "(e) -n 2, pytest-postgresql noproc + postgresql (peer)",
        CONFTEST_PEER,
        ["-n", "2", "-p", "no:testdb"],
        "peer",
    ),
]


def write_project(root: Path, tests: int, per_module: int = 40) -> None:
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT.format(alembic=REPO / "alembic.ini"))
    (root / "benchrec.py").write_text(RECORDER + RECORDER_CORE)
    (root / "tests" / "helpers.py").write_text(HELPERS)
    modules = max(1, tests // per_module)
    for i in range(modules):
        count = per_module if i < modules - 1 else tests - per_module * (modules - 1)
        (root / "tests" / f"test_finance_{i:02d}.py").write_text(render_module(i, count))


def _records(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in directory.glob("*.json")}


def _core(rec: dict[str, Any], *names: str) -> float:
    return sum(rec.get("core", {}).get(n, [0.0])[0] for n in names)


def _fixture(rec: dict[str, Any], *names: str) -> float:
    return sum(rec.get("fixtures", {}).get(n, [0.0])[0] for n in names)


def setup_seconds(mode: str, records: dict[str, dict[str, Any]]) -> float:
    """DB set-up on the critical path: the controller's part, then the slowest worker's."""
    controller = records.get("controller", {})
    workers = [r for k, r in records.items() if k != "controller"] or [controller]
    if mode in ("a", "b"):
        return max(_fixture(r, "migrated_engine") for r in workers)
    if mode == "e":
        return max(_fixture(r, "postgresql_noproc") for r in workers)
    head = (
        _core(controller, "from_settings", "ensure_template")
        if records.get("controller") and len(records) > 1
        else 0.0
    )
    return head + max(
        _core(r, "from_settings", "ensure_template", "clone_for_worker") for r in workers
    )


def per_test_fixture_ms(records: dict[str, dict[str, Any]]) -> float:
    """Mean setup+teardown per test (fixtures), in ms. Under xdist the controller sees every
    worker's reports again, so only the workers count."""
    total = n = 0.0
    workers = [r for k, r in records.items() if k != "controller"] or list(records.values())
    for r in workers:
        total += r["phases"]["setup"] + r["phases"]["teardown"]
        n += r["tests"]
    return total / n * 1000 if n else float("nan")


def run_suite(server: Server, reps: int, tests: int, modes: str) -> dict[str, Any]:
    chosen = [m for m in MODES if m.key in modes]
    walls = {m.key: Series(m.label) for m in chosen}
    setups = {m.key: Series(f"DB set-up {m.key}") for m in chosen}
    fixture_ms = {m.key: Series(f"per-test fixtures {m.key}", unit="ms") for m in chosen}
    # Cores the pytest processes actually got: their CPU seconds / wall (PostgreSQL's not included).
    cores = {m.key: Series(f"client cores used {m.key}", unit="cores") for m in chosen}
    load = {m.key: Series(f"1-min load average after {m.key}", unit="load") for m in chosen}
    lines: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        project = Path(tmp) / "project"
        write_project(project, tests)
        log(f"suite: generated {tests} tests in {project}")
        pytest = list(PYTEST_RECORDED)
        # The template is built before timing starts: (c) measures the steady state (unchanged
        # fingerprint). A cold build costs workload 2's cold figure once per schema change.
        env = server.child_env(base=f"{server.prefix}_suite")
        wall, proc = run([str(BIN / "testdb"), "prepare-template"], env=env, cwd=project)
        log(f"suite: {proc.stdout.strip()}")
        for rep in range(reps):
            for mode in chosen:
                record_dir = Path(tmp) / f"rec-{mode.key}-{rep}"
                record_dir.mkdir()
                (project / "tests" / "conftest.py").write_text(mode.conftest)
                base = f"{server.prefix}_{mode.base_suffix}"
                env = server.child_env(
                    base=base,
                    BENCH_BASE=base,
                    BENCH_ALEMBIC_INI=str(REPO / "alembic.ini"),
                    BENCH_RECORD_DIR=str(record_dir),
                    PYTHONPATH=str(project),
                    **mode.env,
                )
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall, proc = run([*pytest, *mode.args], env=env, cwd=project, timeout=1800)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                cores[mode.key].add(cpu / wall)
                load[mode.key].add(os.getloadavg()[0])
                summary = proc.stdout.strip().splitlines()[-1]
                if not re.search(rf"\b{tests} passed\b", summary):
                    raise RuntimeError(f"suite mode {mode.key}: {summary}\n{proc.stdout[-3000:]}")
                records = _records(record_dir)
                walls[mode.key].add(wall)
                setups[mode.key].add(setup_seconds(mode.key, records))
                fixture_ms[mode.key].add(per_test_fixture_ms(records))
                lines[mode.key] = [
                    ln
                    for ln in (proc.stdout + proc.stderr).splitlines()
                    if ln.startswith("testdb:")
                ]
                log(
                    f"suite: rep {rep + 1}/{reps} {mode.label}: {wall:.1f} s "
                    f"(DB set-up {setups[mode.key].values[-1]:.2f} s)"
                )
                shutil.rmtree(record_dir)
    return {
        "walls": walls,
        "setups": setups,
        "fixture_ms": fixture_ms,
        "cores": cores,
        "load": load,
        "plugin_lines": lines,
    }
