"""Issue 10 items 1-6: no run, build or `clean` destroys another one's work.

Real `testdb` and `pytest` subprocesses on the suite's own scram server. Timing is controlled by
gates (a file a test or migration waits for) and by locks the test holds, never by sleeping.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from finreport_testdb.core.admin import Admin
from finreport_testdb.core.clean import TEMPLATE_HELD
from finreport_testdb.core.marker import ROLE_SCRATCH, ROLE_TEMPLATE, Marker, utc_now
from finreport_testdb.core.names import Naming, creating_name
from finreport_testdb.core.urls import psycopg_connect_kwargs

from .conftest import (
    PYTHON,
    TESTDB,
    Gate,
    child_env,
    comments,
    core,
    inner_pytest,
    run_cli,
    wait_for,
    write_project,
    write_tests,
)

#: A test that reports it started (with its database's name) and then waits for a gate file,
#: optionally holding a connection to its database while it waits.
HOLDING_TESTS = """
    import os
    import time
    from pathlib import Path

    from sqlalchemy import text


    def _wait_for_gate():
        deadline = time.monotonic() + 90
        while not os.path.exists(os.environ["HOLD_GATE"]):
            assert time.monotonic() < deadline, "gate never opened"
            time.sleep(0.02)


    def test_first_waits(request):
        if os.environ.get("HOLD_CONNECTED"):
            engine = request.getfixturevalue("db_engine")
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                Path(os.environ["HOLD_STARTED"]).write_text("connected")
                _wait_for_gate()
                assert conn.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
        elif os.environ.get("HOLD_CLONED"):
            name = request.getfixturevalue("test_database").name  # cloned, never connected
            Path(os.environ["HOLD_STARTED"]).write_text(name)
            _wait_for_gate()
        else:  # no database yet: workers clone lazily
            Path(os.environ["HOLD_STARTED"]).write_text("started")
            _wait_for_gate()


    def test_then_uses_the_database(db_session):
        assert db_session.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
"""


def connect(server: URL) -> psycopg.Connection[Any]:
    return psycopg.connect(autocommit=True, **psycopg_connect_kwargs(server, database="postgres"))


def hold_env(url: URL, tmp_path: Path, **extra: str) -> tuple[dict[str, str], Path, Path]:
    started, gate = tmp_path / "hold.started", tmp_path / "hold.gate"
    env = child_env(url, HOLD_STARTED=str(started), HOLD_GATE=str(gate), **extra)
    return env, started, gate


# -- item 1 ---------------------------------------------------------------------------------------


def test_build_started_between_plan_and_drop_keeps_its_scratch_database(
    scram_base: URL, project: Path, gate: Gate, spawn
) -> None:
    """Plan while a dead build's scratch database is there, then a build starts (replacing it
    with its own), then the plan is executed: the new build's scratch survives, it completes."""
    databases = core(scram_base, project)
    fingerprint = databases.fingerprint
    scratch = databases.naming.scratch(fingerprint)
    dead = Marker(
        role=ROLE_SCRATCH,
        base=databases.naming.base,
        namespace="",
        fingerprint=fingerprint,
        created_at=utc_now(),
    )
    with Admin(scram_base) as admin:
        admin.create_database(scratch, comment=dead.to_comment())
    plan = databases.plan_clean()
    assert scratch in {db.name for db in plan.drop}

    builder = spawn(
        [TESTDB, "prepare-template", "--json"], env=child_env(scram_base, **gate.env), cwd=project
    )
    wait_for(lambda: gate.builds() == 1, what="the build to replace the scratch database")
    assert databases.clean(plan) == []
    assert (scratch, "a template build is in progress") in plan.skipped
    gate.open()
    built = builder.result()
    assert built.returncode == 0 and built.json()["action"] == "built", built.describe()
    databases.close()


# -- item 2 ---------------------------------------------------------------------------------------


def test_clean_leaves_a_running_tests_database_alone(
    scram_base: URL, project: Path, spawn, tmp_path: Path
) -> None:
    """`testdb clean` (same namespace) while a run's test holds a connection: skipped as in use,
    and the run's tests pass."""
    write_tests(project, HOLDING_TESTS)
    env, started, gate = hold_env(scram_base, tmp_path, HOLD_CONNECTED="1")
    run = spawn([PYTHON, "-m", "pytest", "tests"], env=env, cwd=project)
    wait_for(started.exists, timeout=90, what="the run's test to connect")
    assert scram_base.database
    name = Naming(scram_base.database).worker("master")  # the serial run's database
    cleaned = run_cli("clean", "--yes", "--json", env=child_env(scram_base), cwd=project)
    assert cleaned.returncode == 0, cleaned.describe()
    assert name in cleaned.json()["skipped_in_use"], cleaned.describe()
    assert name not in cleaned.json()["dropped"]
    gate.touch()
    result = run.result()
    assert result.returncode == 0 and "2 passed" in result.stdout, result.describe()


# -- item 3 ---------------------------------------------------------------------------------------


def test_stale_template_clean_spares_the_template_of_a_run_in_progress(
    scram_base: URL, project: Path, spawn, tmp_path: Path
) -> None:
    """A run (`-n 1`, exporting no URL: its worker clones lazily) has adopted its template but
    not cloned yet;
    `clean --stale-templates` from a checkout with another migration chain sees that template
    as stale, and must skip it. The run then clones and passes."""
    base = scram_base.database
    assert base
    write_tests(project, HOLDING_TESTS)
    template = core(scram_base, project).template_name
    env, started, gate = hold_env(scram_base, tmp_path)
    # Exporting DATABASE_URL (the default) makes every worker clone before its first test.
    pytest_args = [PYTHON, "-m", "pytest", "-n", "1", "--testdb-export-url-as=", "tests"]
    run = spawn(pytest_args, env=env, cwd=project)
    wait_for(started.exists, timeout=90, what="the run to start its first test")
    assert template in comments(scram_base, base)
    assert f"{base}_gw0" not in comments(scram_base, base)  # not cloned yet

    newer = write_project(
        tmp_path / "newer",
        revisions={
            "0004_more.py": 'revision = "0004"\ndown_revision = "0003"\ndef upgrade():\n    pass\n'
        },
    )
    cleaned = run_cli(
        "clean", "--stale-templates", "--yes", "--json", env=child_env(scram_base), cwd=newer
    )
    assert cleaned.returncode == 0, cleaned.describe()
    assert {"name": template, "reason": TEMPLATE_HELD} in cleaned.json()["skipped"]
    assert template in comments(scram_base, base)
    gate.touch()
    result = run.result()
    assert result.returncode == 0 and "2 passed" in result.stdout, result.describe()


# -- item 4 ---------------------------------------------------------------------------------------


def test_kill_between_create_and_comment_of_a_clone_blocks_no_later_run(
    scram_base: URL, project: Path, spawn
) -> None:
    """SIGKILL a run after its `CREATE DATABASE` and before the `COMMENT` that marks it (held
    there: the test locks pg_shdescription, which COMMENT writes). The next run passes and
    `clean` leaves only the template: no manual DROP needed."""
    base = scram_base.database
    assert base
    serial = Naming(base).worker("master")  # the serial run's database
    env = child_env(scram_base)
    prepared = run_cli("prepare-template", "--json", env=env, cwd=project)
    assert prepared.returncode == 0, prepared.describe()
    template = prepared.json()["template"]
    write_tests(project, "def test_clone(test_database):\n    assert test_database.name\n")

    # libpq names the run's sessions, so only its backend is watched (other tests share the server).
    app = f"frt-kill-{uuid.uuid4().hex[:8]}"
    with connect(scram_base) as observer, connect(scram_base) as blocker, blocker.transaction():
        blocker.execute("LOCK TABLE pg_shdescription IN EXCLUSIVE MODE")
        run = spawn([PYTHON, "-m", "pytest", "tests"], env={**env, "PGAPPNAME": app}, cwd=project)

        def waiting_backend() -> int | None:
            row = observer.execute(
                "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE NOT l.granted AND l.relation = 'pg_shdescription'::regclass "
                "AND a.application_name = %s",
                (app,),
            ).fetchone()
            return None if row is None else int(row[0])

        pid = wait_for(waiting_backend, timeout=90, what="the clone's COMMENT to wait")
        run.kill()
        # The client is gone; its backend would still run the COMMENT once unblocked.
        observer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(
            lambda: (
                observer.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                == (0,)
            ),
            what="the killed run's backend to exit",
        )
    unmarked = {name for name, comment in comments(scram_base, base).items() if comment is None}
    assert unmarked == {creating_name(serial)}, "the crash point was not reached as intended"

    rerun = inner_pytest("tests", env=env, cwd=project)
    assert rerun.returncode == 0 and "1 passed" in rerun.stdout, rerun.describe()
    assert set(comments(scram_base, base)) == {template}
    # Once more, leaving the leftover to `clean` this time.
    with connect(scram_base) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(creating_name(serial))))
    cleaned = run_cli("clean", "--yes", "--json", env=env, cwd=project)
    assert cleaned.returncode == 0 and cleaned.json()["dropped"] == [creating_name(serial)]
    assert set(comments(scram_base, base)) == {template}


# -- item 5 ---------------------------------------------------------------------------------------


def test_builders_with_different_maintenance_databases_do_not_destroy_each_other(
    scram_base: URL, project: Path, gate: Gate, spawn
) -> None:
    """Builder A takes its build lock in `postgres`, builder B in another maintenance database,
    so the advisory lock does not keep B out. B must wait for A's live build (seen through the
    builder session recorded in the scratch marker), not drop it; one build, B reuses it."""
    base = scram_base.database
    assert base
    maintenance = f"{base}_maint"
    with connect(scram_base) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(maintenance)))
    first = spawn(
        [TESTDB, "prepare-template", "--json"], env=child_env(scram_base, **gate.env), cwd=project
    )
    wait_for(lambda: gate.builds() == 1, what="the first build to start")
    second = spawn(
        [TESTDB, "prepare-template", "--json"],
        env=child_env(scram_base, TESTDB_MAINTENANCE_DB=maintenance, **gate.env),
        cwd=project,
    )

    def second_waits_for_the_builder() -> bool:
        with connect(scram_base) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
                (maintenance, "%backend_start IS NULL OR%"),
            ).fetchone()
        return bool(row and row[0])

    wait_for(second_waits_for_the_builder, timeout=60, what="the second builder to wait")
    gate.open()
    results = [first.result(), second.result()]
    for result in results:
        assert result.returncode == 0, result.describe()
    assert sorted(r.json()["action"] for r in results) == ["built", "reused"]
    assert gate.builds() == 1
    markers = {n: Marker.parse(c) for n, c in comments(scram_base, base).items()}
    template = results[0].json()["template"]
    marker = markers[template]
    assert marker is not None and marker.role == ROLE_TEMPLATE and marker.ready


# -- item 6 ---------------------------------------------------------------------------------------


def test_reuse_refuses_a_database_another_run_has_cloned(
    scram_base: URL, project: Path, spawn, tmp_path: Path
) -> None:
    """Two `--testdb-reuse` runs in one namespace: the first has cloned its database but not
    connected to it; the second stops with one line naming the fix instead of sharing it."""
    write_tests(project, HOLDING_TESTS)
    env, started, gate = hold_env(scram_base, tmp_path, HOLD_CLONED="1")
    first = spawn([PYTHON, "-m", "pytest", "--testdb-reuse", "tests"], env=env, cwd=project)
    wait_for(started.exists, timeout=90, what="the first run to clone")
    second = inner_pytest(
        "--testdb-reuse", "tests", "-k", "then_uses", env=child_env(scram_base), cwd=project
    )
    assert second.returncode != 0, second.describe()
    assert "in use by another test run with the same namespace" in second.stdout
    assert "TESTDB_NAMESPACE=auto" in second.stdout
    gate.touch()
    result = first.result()
    assert result.returncode == 0 and "2 passed" in result.stdout, result.describe()
