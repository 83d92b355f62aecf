"""Workload 4: per-test isolation cost, measured inside pytest, side by side in one process.

Groups of tests do the same small piece of work (insert an organisation and three accounts, read
them back) on the plugin's worker database:
  bare       a session-scoped connection; the test rolls its own work back (the baseline: nothing
             committed, so the plugin's check after the test finds nothing to undo);
  commit     the same connection, the test commits: the default isolation undoes it afterwards;
  db_session isolation="rollback": the plugin's rolled-back transaction + SAVEPOINT session;
  fresh      the plugin's `fresh_database` (a clone per test, dropped after), its own connection;
  truncate   the hand-written reset: TRUNCATE every table after each test (wipes the seed rows); the
             plugin's undo of the tables it truncated comes on top.
Per-test cost = mean (setup + call + teardown) of the group minus that of `bare`, per repetition.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from .common import PYTEST_RECORDED, REPO, Series, Server, log, run
from .suite import PYPROJECT, RECORDER, RECORDER_CORE

CONFTEST = r'''
import itertools
import os

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

_n = itertools.count()
SEED_COUNTS = {}


def work(conn):
    k = next(_n)
    org = conn.execute(
        text("INSERT INTO organisations (name, country_code, functional_currency) VALUES (:n, 'DE', 'EUR') RETURNING id"),
        {"n": f"org-{os.getpid()}-{k}"},
    ).scalar_one()
    for code in ("1000", "2000", "4000"):
        conn.execute(
            text("INSERT INTO accounts (organisation_id, code, name, account_type, normal_balance) "
                 "VALUES (:o, :c, 'a', 'asset', 'debit')"),
            {"o": org, "c": code},
        )
    assert conn.execute(
        text("SELECT count(*) FROM accounts WHERE organisation_id = :o"), {"o": org}
    ).scalar_one() == 3


@pytest.fixture(scope="session")
def bare_connection(db_engine):
    with db_engine.connect() as connection:
        yield connection


@pytest.fixture
def bare(bare_connection):
    yield bare_connection
    bare_connection.rollback()  # the test's own work, never committed


@pytest.fixture
def committed(bare_connection):
    yield bare_connection
    bare_connection.commit()  # the default isolation undoes it after the test


@pytest.fixture(scope="session")
def truncate_engine(db_engine):
    """The hand-written reset: TRUNCATE every table after each test. It wipes the seed rows the
    migrations inserted, so like most such resets it re-inserts the ones the app cannot run without
    (currencies); roles and permissions stay wiped."""
    with db_engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        tables = connection.execute(text(
            "SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )).scalar_one()
        count = "SELECT (SELECT count(*) FROM currencies) + (SELECT count(*) FROM roles) + (SELECT count(*) FROM permissions) + (SELECT count(*) FROM role_permissions)"
        SEED_COUNTS["seed_rows_before"] = connection.execute(text(count)).scalar_one()
        SEED_COUNTS["tables"] = tables.count(",") + 1
        reseed = connection.execute(text(
            "SELECT 'INSERT INTO currencies SELECT * FROM json_populate_recordset(NULL::currencies, '"
            " || quote_literal(json_agg(c)::text) || ')' FROM currencies c"
        )).scalar_one()
        yield connection, tables, reseed
        SEED_COUNTS["seed_rows_after"] = connection.execute(text(count)).scalar_one()
        out = os.environ.get("BENCH_RECORD_DIR")
        if out:
            import json
            with open(os.path.join(out, "seeds.json"), "w") as fh:
                json.dump(SEED_COUNTS, fh)


@pytest.fixture
def truncated(truncate_engine):
    connection, tables, reseed = truncate_engine
    yield connection
    connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    connection.exec_driver_sql(reseed)


@pytest.fixture
def fresh_conn(fresh_database):
    engine = create_engine(fresh_database.sync_url, poolclass=NullPool)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection
    engine.dispose()
'''

#: file -> (module header, one test's body)
TESTS = {
    "test_1_bare.py": ("", "def test_bare_{k}(bare):\n    work(bare)\n"),
    "test_2_db_session.py": (
        "import pytest\n\npytestmark = pytest.mark.testdb(isolation='rollback')\n\n",
        "def test_db_session_{k}(db_session):\n    work(db_session)\n",
    ),
    "test_3_fresh.py": ("", "def test_fresh_{k}(fresh_conn):\n    work(fresh_conn)\n"),
    "test_4_truncate.py": ("", "def test_truncate_{k}(truncated):\n    work(truncated)\n"),
    "test_5_commit.py": ("", "def test_commit_{k}(committed):\n    work(committed)\n"),
}


def run_isolation(server: Server, reps: int, n: int, n_fresh: int) -> dict[str, Any]:
    out = {
        "db_session": Series(
            "db_session (isolation=rollback) vs bare connection, per test", unit="ms"
        ),
        "commit": Series(
            "commit, undone after the test (the default) vs bare, per test", unit="ms"
        ),
        "fresh": Series("fresh_database (clone + connect + drop) vs bare, per test", unit="ms"),
        "fresh_fixture": Series(
            "fresh_database: clone_for_test + drop_database (core API time), per test", unit="ms"
        ),
        "fresh_phases": Series(
            "fresh_database + first connection to it (setup+teardown) vs bare, per test", unit="ms"
        ),
        "db_session_fixture": Series(
            "db_session setup+teardown vs bare, per test (fixture lifecycle only)", unit="ms"
        ),
        "truncate": Series(
            "TRUNCATE all tables (+ re-seed currencies) after each test vs bare, per test",
            unit="ms",
        ),
        "bare": Series("bare connection, whole test (setup+call+teardown)", unit="ms"),
    }
    seeds: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-iso-") as tmp:
        project = Path(tmp) / "project"
        (project / "tests").mkdir(parents=True)
        (project / "pyproject.toml").write_text(PYPROJECT.format(alembic=REPO / "alembic.ini"))
        (project / "benchrec.py").write_text(RECORDER + RECORDER_CORE)
        (project / "tests" / "conftest.py").write_text(CONFTEST)
        for filename, (header, body) in TESTS.items():
            count = n_fresh if "fresh" in filename else n
            text_ = f"{header}from conftest import work  # noqa: F401\n\n" + "\n".join(
                body.format(k=k) for k in range(count)
            )
            (project / "tests" / filename).write_text(text_)
        for rep in range(reps):
            record_dir = Path(tmp) / f"rec{rep}"
            record_dir.mkdir()
            env = server.child_env(
                base=f"{server.prefix}_iso",
                BENCH_RECORD_DIR=str(record_dir),
                PYTHONPATH=str(project),
            )
            argv = list(PYTEST_RECORDED)
            run(argv, env=env, cwd=project)
            rec = json.loads((record_dir / "controller.json").read_text())
            seeds = json.loads((record_dir / "seeds.json").read_text())
            groups = rec["per_test"]

            def per_test(
                name: str,
                phases: tuple[str, ...] = ("setup", "call", "teardown"),
                g: dict[str, Any] = groups,
            ) -> float:
                slot = g[name]
                return sum(slot[p] for p in phases) / slot["n"] * 1000

            bare = per_test("test_1_bare.py")
            out["bare"].add(bare)
            out["db_session"].add(per_test("test_2_db_session.py") - bare)
            out["commit"].add(per_test("test_5_commit.py") - bare)
            out["fresh"].add(per_test("test_3_fresh.py") - bare)
            out["fresh_phases"].add(
                per_test("test_3_fresh.py", ("setup", "teardown"))
                - per_test("test_1_bare.py", ("setup", "teardown"))
            )
            out["db_session_fixture"].add(
                per_test("test_2_db_session.py", ("setup", "teardown"))
                - per_test("test_1_bare.py", ("setup", "teardown"))
            )
            core = rec.get("core", {})
            clones = core.get("clone_for_test", [0.0, 1])
            # What `fresh_database`'s teardown calls (the session-end drops of the worker
            # databases are in it too: one per run against n_fresh per-test drops).
            drops = core.get("drop_database", [0.0, 1])
            out["fresh_fixture"].add((clones[0] / clones[1] + drops[0] / drops[1]) * 1000)
            out["truncate"].add(per_test("test_4_truncate.py") - bare)
            log(
                f"isolation: rep {rep + 1}/{reps}: db_session +{out['db_session'].values[-1]:.2f} ms, "
                f"fresh +{out['fresh'].values[-1]:.1f} ms, truncate +{out['truncate'].values[-1]:.1f} ms"
            )
    return {"series": out, "seeds": seeds}
