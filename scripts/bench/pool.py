"""Workload 7: what `isolation="fresh"` costs per test with the warm pool, without it, and what
rollback costs, on tmpfs (the run's server) and on a disk-backed cluster, in one run (issue 12).

A generated suite of N tests on the repo's 33-revision finance schema; each test does `work` ms of
its own (a sleep: the time the pool has to refill) and inserts a row through `db_bind`. Three
modes, run as serial pytest processes, interleaved repetition by repetition:
  rollback   the default isolation (outer transaction + SAVEPOINT);
  pool       every test `fresh`, pool_size 2 (a rename swap when the pool is ready);
  no pool    every test `fresh`, pool_size 0 (drop + re-clone of the worker database).
Per test: the testcase's setup + call + teardown from the JUnit XML minus its own work, and the
reset itself (`testdb_fresh_reset_ms`, what `reset_worker` took). Wall: the whole pytest process.
"""

from __future__ import annotations

import statistics
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .common import BIN, REPO, Server, log, run

PYPROJECT = """
[project]
name = "bench-pool"
version = "0"

[tool.testdb]
alembic_config = "{alembic}"
"""

TESTS = """
import time

import pytest
from sqlalchemy import Engine, text

pytestmark = pytest.mark.testdb(isolation="{isolation}")
INSERT = text("INSERT INTO users (email, display_name) VALUES ('bench@example.com', 'b')")


@pytest.mark.parametrize("i", range({n}))
def test_work(i, db_bind):
    time.sleep({work} / 1000)
    if isinstance(db_bind, Engine):  # fresh: a real commit
        with db_bind.begin() as connection:
            connection.execute(INSERT)
    else:  # rollback: the test's rolled-back connection
        db_bind.execute(INSERT)
"""

MODES = (("rollback", "rollback", 0), ("pool", "fresh", 2), ("no pool", "fresh", 0))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _one_run(
    server: Server, base: str, root: Path, mode: tuple[str, str, int], work: int, n: int
) -> dict[str, Any]:
    _, isolation, pool_size = mode
    (root / "test_pool_bench.py").write_text(TESTS.format(isolation=isolation, n=n, work=work))
    xml = root / "junit.xml"
    env = server.child_env(base, TESTDB_POOL_SIZE=str(pool_size))
    wall, proc = run(
        [
            str(BIN / "pytest"),
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--junitxml={xml}",
        ],
        env=env,
        cwd=root,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pool bench run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    per_test, resets = [], []
    for case in ET.parse(xml).getroot().iter("testcase"):
        per_test.append(float(case.get("time", "0")) * 1000 - work)
        for prop in case.iter("property"):
            if prop.get("name") == "testdb_fresh_reset_ms":
                resets.append(float(prop.get("value", "0")))
    return {"wall": wall, "per_test": per_test, "resets": resets}


def run_pool(servers: list[tuple[str, Server, int]], reps: int) -> dict[str, Any]:
    """`servers`: (label, server, number of tests). Returns rows keyed by (server, work, mode)."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text(PYPROJECT.format(alembic=REPO / "alembic.ini"))
        for label, server, n in servers:
            base = f"{server.prefix}_pool"
            for rep in range(reps):
                for work in (0, 20):
                    for mode in MODES:
                        log(
                            f"9 pool: {label}, {n} tests of {work} ms, {mode[0]}, rep {rep + 1}/{reps}"
                        )
                        got = _one_run(server, base, root, mode, work, n)
                        slot = results.setdefault(
                            f"{label}|{work}|{mode[0]}",
                            {"wall": [], "per_test": [], "resets": [], "n": n},
                        )
                        slot["wall"].append(got["wall"])
                        slot["per_test"].extend(got["per_test"])
                        slot["resets"].extend(got["resets"])
    return results


def rows(results: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """(measurement rows, goal rows) for the page."""
    out: list[list[str]] = []
    for key, slot in results.items():
        label, work, mode = key.split("|")
        what = f"{label}, {slot['n']} tests of {work} ms, {mode}"
        per = slot["per_test"]
        out.append(
            [
                "9 pool",
                f"{what}: wall (median of {len(slot['wall'])})",
                f"{statistics.median(slot['wall']):.2f} s",
                "",
            ]
        )
        out.append(
            [
                "9 pool",
                f"{what}: per-test cost beyond own work",
                f"{statistics.median(per):.1f} ms",
                f"p95 {_pct(per, 0.95):.1f} ms",
            ]
        )
        if slot["resets"]:
            r = slot["resets"]
            out.append(
                [
                    "9 pool",
                    f"{what}: fresh reset (reset_worker)",
                    f"{statistics.median(r):.1f} ms",
                    f"p95 {_pct(r, 0.95):.1f} ms",
                ]
            )
    goals: list[list[str]] = []
    for work in ("0", "20"):
        pool = results.get(f"tmpfs|{work}|pool")
        rb = results.get(f"tmpfs|{work}|rollback")
        if pool and rb:
            ratio = statistics.median(pool["wall"]) / statistics.median(rb["wall"])
            goals.append(
                [
                    f"{pool['n']} fresh tests of {work} ms, serial, tmpfs: wall vs rollback",
                    f"{ratio:.2f}x",
                    "≤ 1.5x",
                    "met" if ratio <= 1.5 else f"missed by {ratio / 1.5:.2f}x",
                ]
            )
    pool20 = results.get("tmpfs|20|pool")
    if pool20 and pool20["resets"]:
        p50 = statistics.median(pool20["resets"])
        goals.append(
            [
                "fresh reset p50, tests of 20 ms, tmpfs",
                f"{p50:.1f} ms",
                "≤ 3 ms",
                "met" if p50 <= 3 else f"missed by {p50 - 3:.1f} ms",
            ]
        )
    return out, goals
