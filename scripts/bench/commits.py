"""Workload 9: what a test that commits for real costs under each isolation (issue 17).

A generated suite of N serial tests on the repo's 33-revision finance schema. Each test does what
an app's test does through the app's own engine (built at import time from DATABASE_URL): opens
an organisation (1 row + its chart of accounts, audited by triggers), posts a balanced journal
entry (the deferred balance check runs at COMMIT), and reads the trial balance. Modes, each a
whole pytest process, interleaved repetition by repetition:

  commit      the default isolation: the test commits, the plugin undoes it afterwards;
  self        the same tests, each rolling its own work back instead of committing (the floor:
              the same statements, nothing committed, nothing to undo);
  rollback    isolation="rollback": the same work through `db_sessionmaker` (SAVEPOINTs);
  fresh       isolation="fresh": drop + re-clone of the worker database per test;
  empty       tests that touch no database, with the plugin on (the worker database exists, so
              each test pays the check that nothing was committed) ...
  no plugin   ... and the same tests with `-p no:testdb`: what a bare test costs.

On the run's server (tmpfs: the embedded one) and on the machine's disk cluster (fsync=on). Per
test: setup + call + teardown as pytest measured them (`report.duration`, written by a recorder
conftest; JUnit's millisecond rounding is too coarse for the empty tests); the plugin's own timing
of each undo (`testdb_undo_ms`) and of each fresh reset (`testdb_fresh_reset_ms`). Wall: the whole
process.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .common import BIN, REPO, Server, log, run

PYPROJECT = """
[project]
name = "bench-commits"
version = "0"

[tool.testdb]
alembic_config = "{alembic}"
export_url_as = ["DATABASE_URL"]
"""

RECORDER = """
import json
import os

_TESTS = {}


def pytest_runtest_logreport(report):
    slot = _TESTS.setdefault(report.nodeid, {"seconds": 0.0, "props": {}})
    slot["seconds"] += report.duration
    slot["props"].update(dict(report.user_properties))


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_RECORD"], "w") as out:
        json.dump(_TESTS, out)
"""

TESTS = """
import datetime as dt
import os
from decimal import Decimal

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from finance_app import ledger

# The app's own engine, built at import (no URL without the plugin: the empty tests need none).
ENGINE = create_engine(os.environ.get("DATABASE_URL", "postgresql+psycopg://"))
MODE = "{mode}"
pytestmark = [pytest.mark.testdb(isolation="{isolation}")] if "{isolation}" else []


def work(session):
    org = ledger.open_organisation(session, "Bench Ltd")
    cash = ledger.account(session, org.id, "1000")
    sales = ledger.account(session, org.id, "4000")
    ledger.post_entry(
        session,
        org.id,
        dt.date(2024, 5, 31),
        [ledger.Posting(cash, debit=Decimal("10")), ledger.Posting(sales, credit=Decimal("10"))],
    )
    assert ledger.balances(session, org.id)["1000"] == Decimal("10")


@pytest.mark.parametrize("i", range({n}))
def test_work(i, request):
    if MODE == "empty":
        return
    if MODE == "rollback":
        maker = request.getfixturevalue("db_sessionmaker")
        with maker() as session:
            work(session)
            session.commit()  # releases a SAVEPOINT
        return
    with Session(ENGINE) as session:
        work(session)
        if MODE == "self":
            session.rollback()
        else:
            session.commit()
"""

#: (label, isolation, test mode)
MODES = (
    ("commit", "commit", "commit"),
    ("self", "commit", "self"),
    ("rollback", "rollback", "rollback"),
    ("fresh", "fresh", "commit"),
    ("empty", "commit", "empty"),
    ("no plugin", "", "empty"),
)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _one_run(
    server: Server, base: str, root: Path, mode: tuple[str, str, str], n: int
) -> dict[str, Any]:
    _, isolation, test_mode = mode
    (root / "test_commits_bench.py").write_text(
        TESTS.format(isolation=isolation, mode=test_mode, n=n)
    )
    record = root / "record.json"
    env = server.child_env(
        base,
        PYTHONPATH=str(REPO / "examples" / "finance_app"),
        BENCH_RECORD=str(record),
    )
    plugin_off = ["-p", "no:testdb"] if not isolation else []
    wall, proc = run(
        [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *plugin_off],
        env=env,
        cwd=root,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"commits bench run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
        )
    per_test, undo, resets = [], [], []
    for slot in json.loads(record.read_text()).values():
        per_test.append(slot["seconds"] * 1000)
        if "testdb_undo_ms" in slot["props"]:
            undo.append(float(slot["props"]["testdb_undo_ms"]))
        if "testdb_fresh_reset_ms" in slot["props"]:
            resets.append(float(slot["props"]["testdb_fresh_reset_ms"]))
    return {"wall": wall, "per_test": per_test, "undo": undo, "resets": resets}


def run_commits(servers: list[tuple[str, Server, int, int]], reps: int) -> dict[str, Any]:
    """`servers`: (label, server, tests per run, tests per `fresh` run). Rows keyed by
    `server|mode`."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-commits-") as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text(PYPROJECT.format(alembic=REPO / "alembic.ini"))
        (root / "conftest.py").write_text(RECORDER)
        for label, server, n, n_fresh in servers:
            base = f"{server.prefix}_commits"
            for rep in range(-1, reps):  # rep -1: untimed warm-up (builds the template)
                for mode in MODES:
                    size = n_fresh if mode[1] == "fresh" else n
                    if rep < 0 and mode[0] != "commit":
                        continue
                    log(f"9 commits: {label}, {size} tests, {mode[0]}, rep {rep + 1}/{reps}")
                    got = _one_run(server, base, root, mode, size)
                    if rep < 0:
                        continue
                    slot = results.setdefault(
                        f"{label}|{mode[0]}",
                        {"wall": [], "per_test": [], "undo": [], "resets": [], "n": size},
                    )
                    for key in ("per_test", "undo", "resets"):
                        slot[key].extend(got[key])
                    slot["wall"].append(got["wall"])
    return results


def rows(results: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """(measurement rows, goal rows) for the page."""
    out: list[list[str]] = []
    for key, slot in results.items():
        label, mode = key.split("|")
        what = f"{label}, {slot['n']} tests, {mode}"
        per = slot["per_test"]
        out.append(
            [
                "9 commits",
                f"{what}: wall (median of {len(slot['wall'])})",
                f"{statistics.median(slot['wall']):.2f} s",
                "",
            ]
        )
        out.append(
            [
                "9 commits",
                f"{what}: per test (setup + call + teardown)",
                f"{statistics.median(per):.2f} ms",
                f"p95 {_pct(per, 0.95):.2f} ms",
            ]
        )
        for name, values in (
            ("undo (restore_worker)", slot["undo"]),
            ("fresh reset", slot["resets"]),
        ):
            if values:
                out.append(
                    [
                        "9 commits",
                        f"{what}: {name}, {len(values)} in {len(slot['wall'])} runs",
                        f"{statistics.median(values):.2f} ms",
                        f"p95 {_pct(values, 0.95):.2f} ms",
                    ]
                )
    goals: list[list[str]] = []
    for label in ("tmpfs", "disk"):
        empty, bare = results.get(f"{label}|empty"), results.get(f"{label}|no plugin")
        if empty and bare:
            extra = statistics.median(empty["per_test"]) - statistics.median(bare["per_test"])
            goals.append(
                [
                    f"a test that commits nothing, {label}: cost over a bare test (plugin off)",
                    f"{extra:.2f} ms",
                    "≤ 0.3 ms",
                    "met" if extra <= 0.3 else f"missed by {extra - 0.3:.2f} ms",
                ]
            )
    for label, target in (("tmpfs", 1.3), ("disk", 2.0)):
        commit, floor = results.get(f"{label}|commit"), results.get(f"{label}|self")
        if not (commit and floor):
            continue
        per_commit = statistics.median(commit["per_test"])
        per_floor = statistics.median(floor["per_test"])
        ratio = per_commit / per_floor
        goals.append(
            [
                f"{commit['n']} tests committing through their own engine vs rolling back "
                f"themselves, serial, {label}: per test",
                f"{ratio:.2f}x",
                f"≤ {target}x",
                "met" if ratio <= target else f"missed by {ratio / target:.2f}x",
            ]
        )
        wall = statistics.median(commit["wall"]) / statistics.median(floor["wall"])
        goals.append(
            [
                f"the same, {label}: whole pytest process (wall)",
                f"{wall:.2f}x",
                f"≤ {target}x",
                "met" if wall <= target else f"missed by {wall / target:.2f}x",
            ]
        )
    return out, goals
