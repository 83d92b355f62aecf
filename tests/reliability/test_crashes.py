"""Crashes: SIGKILL in the middle of a template build and of an xdist run; stray sessions."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL

from finreport_testdb.core.marker import ROLE_SCRATCH, ROLE_TEMPLATE, ROLE_TEST, ROLE_WORKER, Marker
from finreport_testdb.core.urls import psycopg_connect_kwargs

from .conftest import (
    PYTHON,
    TESTDB,
    Gate,
    child_env,
    comments,
    create_database,
    database_flags,
    execute,
    inner_pytest,
    run_cli,
    wait_for,
    write_tests,
)


def roles(server: URL, base: str) -> dict[str, tuple[str, bool] | None]:
    """name -> (marker role, ready) for the databases of this base; None = no valid marker."""
    found: dict[str, tuple[str, bool] | None] = {}
    for name, comment in comments(server, base).items():
        marker = Marker.parse(comment)
        found[name] = None if marker is None else (marker.role, marker.ready)
    return found


def kill_build_in_migration(
    url: URL, project: Path, gate: Gate, spawn, block: str
) -> tuple[str, dict[str, str]]:
    """Start `prepare-template`, wait until it is inside the migration chain, SIGKILL it.

    `block="python"`: the migration waits in Python (its backends are idle and exit at once);
    `block="sql"`: it waits in `SELECT pg_sleep(60)`, so its backend lingers after the kill.
    """
    base = url.database
    assert base
    env = child_env(url, **gate.env)
    if block == "sql":
        env["RELIABILITY_SQL_BLOCK"] = "1"
    builder = spawn([TESTDB, "prepare-template"], env=env, cwd=project)
    wait_for(lambda: gate.builds() == 1, what="the build to enter the gate revision")
    scratch = wait_for(
        lambda: [n for n, r in roles(url, base).items() if r == (ROLE_SCRATCH, False)],
        what="the scratch database",
    )[0]
    builder.kill()
    assert builder.proc.returncode == -9
    found = roles(url, base)
    assert found == {scratch: (ROLE_SCRATCH, False)}, f"after SIGKILL: {found}"
    assert not [n for n, r in found.items() if r and r[0] == ROLE_TEMPLATE]
    return scratch, {
        k: v for k, v in env.items() if k not in ("RELIABILITY_GATE", "RELIABILITY_SQL_BLOCK")
    }


def test_sigkill_mid_build_then_clean_removes_scratch(
    scram_base: URL, project: Path, gate: Gate, spawn
) -> None:
    """SIGKILL during the migration chain: no ready template; `testdb clean` (run at once, while
    the killed client's server backends may still be exiting) drops the scratch database; the
    next `prepare-template` builds a ready template."""
    base = scram_base.database
    assert base
    # Blocked in `pg_sleep`: the killed client's backend is still busy when `clean` runs.
    scratch, env = kill_build_in_migration(scram_base, project, gate, spawn, "sql")

    cleaned = run_cli("clean", "--yes", env=env, cwd=project)
    assert cleaned.returncode == 0, cleaned.describe()
    assert f"dropping {scratch}" in cleaned.stdout, cleaned.describe()
    assert roles(scram_base, base) == {}, "clean left the interrupted build behind"

    rebuilt = run_cli("prepare-template", env=env, cwd=project)
    assert rebuilt.returncode == 0, rebuilt.describe()
    assert "built template" in rebuilt.stdout
    assert list(roles(scram_base, base).values()) == [(ROLE_TEMPLATE, True)]
    assert gate.builds() == 2


def test_sigkill_mid_build_then_prepare_template_recovers(
    scram_base: URL, project: Path, gate: Gate, spawn
) -> None:
    """Without a clean in between, the next `prepare-template` replaces the leftover scratch."""
    base = scram_base.database
    assert base
    scratch, env = kill_build_in_migration(scram_base, project, gate, spawn, "python")

    rebuilt = run_cli("prepare-template", env=env, cwd=project)
    assert rebuilt.returncode == 0, rebuilt.describe()
    found = roles(scram_base, base)
    assert scratch not in found
    assert list(found.values()) == [(ROLE_TEMPLATE, True)]
    again = run_cli("prepare-template", env=env, cwd=project)
    assert again.returncode == 0 and "up to date" in again.stdout, again.describe()
    assert gate.builds() == 2


@pytest.mark.parametrize("block", ["python", "sql"])
def test_ctrl_c_mid_build_leaves_nothing(
    scram_base: URL, project: Path, gate: Gate, spawn, block: str
) -> None:
    """SIGINT (Ctrl-C) during the migration chain: the build stops, its scratch database is
    dropped on the way out, no template exists, and the user sees no traceback."""
    base = scram_base.database
    assert base
    env = child_env(scram_base, **gate.env)
    if block == "sql":
        env["RELIABILITY_SQL_BLOCK"] = "1"
    builder = spawn([TESTDB, "prepare-template"], env=env, cwd=project)
    wait_for(lambda: gate.builds() == 1, what="the build to enter the gate revision")
    wait_for(lambda: roles(scram_base, base), what="the scratch database")
    builder.proc.send_signal(signal.SIGINT)
    result = builder.result(timeout=30)
    assert result.returncode != 0, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert roles(scram_base, base) == {}, "Ctrl-C left a database behind"


BLOCKING_TESTS = """
    import os
    import time


    def hold(name):
        open(os.path.join(os.environ["RELIABILITY_READY"], name), "w").close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # held until the test runner is SIGKILLed
            time.sleep(0.05)


    def test_a(test_database, fresh_database):
        hold(fresh_database.name)


    def test_b(test_database, fresh_database):
        hold(fresh_database.name)


    def test_c(test_database, fresh_database):
        hold(fresh_database.name)


    def test_d(test_database, fresh_database):
        hold(fresh_database.name)
"""


def test_sigkill_xdist_run_then_clean_drops_only_its_databases(
    scram_base: URL, project: Path, spawn, tmp_path: Path
) -> None:
    """SIGKILL a `pytest -n 2` run (controller and workers) while both workers hold their
    databases and a per-test clone each. `testdb clean` drops exactly those; an unmarked
    database with a matching name, one with a marker copied from a real worker database, and the
    template all survive."""
    base = scram_base.database
    assert base
    write_tests(project, BLOCKING_TESTS)
    ready = tmp_path / "ready"
    ready.mkdir()
    env = child_env(scram_base, RELIABILITY_READY=str(ready))
    run = spawn([PYTHON, "-m", "pytest", "-n", "2", "tests"], env=env, cwd=project)
    wait_for(lambda: len(list(ready.iterdir())) == 2, timeout=60, what="both workers in a test")
    before = roles(scram_base, base)
    orphans = {n for n, r in before.items() if r and r[0] in (ROLE_WORKER, ROLE_TEST)}
    assert {f"{base}_gw0", f"{base}_gw1"} <= orphans and len(orphans) == 4, before
    template = next(n for n, r in before.items() if r == (ROLE_TEMPLATE, True))
    run.kill()

    lookalike = f"{base}_gw7"
    create_database(scram_base, lookalike)
    forged = f"{base}_gw8"
    create_database(scram_base, forged, comment=comments(scram_base, f"{base}_gw0")[f"{base}_gw0"])

    cleaned = run_cli("clean", "--yes", env=child_env(scram_base), cwd=project)
    assert cleaned.returncode == 0, cleaned.describe()
    assert set(comments(scram_base, base)) == {template, lookalike, forged}, cleaned.describe()
    for name in orphans:
        assert f"dropping {name} " in cleaned.stdout
    assert f"skipped {lookalike}: no testdb ownership marker" in cleaned.stdout
    assert f"skipped {forged}: no testdb ownership marker" in cleaned.stdout


def test_clone_succeeds_despite_sessions_on_template(scram_base: URL, project: Path) -> None:
    """Someone re-enabled connections on the template and left psql sessions on it (idle, idle
    in a transaction, running a query): cloning, through a real pytest run with a worker and a
    per-test clone, terminates them instead of failing with SQLSTATE 55006."""
    base = scram_base.database
    assert base
    env = child_env(scram_base)
    prepared = run_cli("prepare-template", "--json", env=env, cwd=project)
    assert prepared.returncode == 0, prepared.describe()
    template = prepared.json()["template"]
    execute(scram_base, f'ALTER DATABASE "{template}" WITH ALLOW_CONNECTIONS true')
    kwargs = psycopg_connect_kwargs(scram_base, database=template)
    idle = psycopg.connect(autocommit=True, **kwargs)
    in_transaction = psycopg.connect(**kwargs)
    in_transaction.execute("SELECT count(*) FROM accounts")
    active = psycopg.connect(autocommit=True, **kwargs)
    active.pgconn.send_query(b"SELECT pg_sleep(60)")
    try:
        write_tests(
            project,
            """
            from sqlalchemy import text

            def test_clone(db_session, fresh_database):
                assert db_session.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
            """,
        )
        result = inner_pytest("tests", env=env, cwd=project)
        assert result.returncode == 0, result.describe()
        assert "1 passed" in result.stdout
        assert "55006" not in result.output
    finally:
        for conn in (idle, in_transaction, active):
            conn.close()
    assert set(comments(scram_base, base)) == {template}
    assert database_flags(scram_base, template) is not None
