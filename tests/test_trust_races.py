"""Issue 10 items 1-8 at the core-API level, on real servers: plan/drop races in `clean`,
databases in use, template holds, interrupted creations, lock_timeout bounds, role mismatches.

The subprocess-level counterparts (real runs, real kills) are in
tests/reliability/test_runs_never_break_runs.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import database_names
from psycopg import sql
from sqlalchemy.engine import URL

from finreport_testdb.core.admin import Admin
from finreport_testdb.core.clean import IN_USE, RUN_IN_PROGRESS, TEMPLATE_HELD
from finreport_testdb.core.marker import ROLE_SCRATCH, ROLE_WORKER, Marker, owned_marker, utc_now
from finreport_testdb.core.names import creating_name
from finreport_testdb.core.settings import MAX_LOCK_TIMEOUT, resolve_settings
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.errors import (
    ConfigError,
    DatabaseInUse,
    PermissionProblem,
    TemplateBuildError,
)

scram_only = pytest.mark.parametrize("server", ["scram"], indirect=True)
trust_only = pytest.mark.parametrize("server", ["trust"], indirect=True)

MakeDatabases = Callable[..., ProjectDatabases]


def connect(server: URL, database: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(autocommit=True, **psycopg_connect_kwargs(server, database=database))


def poll(condition: Callable[[], object], *, what: str, timeout: float = 30.0) -> None:
    """Poll with a deadline (never sleep to synchronise)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def oid_of(server: URL, name: str) -> int | None:
    with connect(server) as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return None if row is None else int(row[0])


@pytest.fixture
def databases(make_databases: MakeDatabases) -> ProjectDatabases:
    db = make_databases()
    db.ensure_template()
    return db


# -- item 1: clean re-checks at drop time ---------------------------------------------------------


@scram_only
def test_clean_does_not_drop_a_worker_database_recreated_after_the_plan(
    databases: ProjectDatabases, make_databases: MakeDatabases, server: URL
) -> None:
    """Plan, then another run re-creates the worker database (same name, same second, so the
    same marker text is possible), then execute the plan: the new database survives."""
    first = databases.clone_for_worker("gw0")
    databases.close()  # that run ended, keeping its database
    cleaner = make_databases()
    plan = cleaner.plan_clean()
    assert first.name in {db.name for db in plan.drop}
    other = make_databases()
    other.clone_for_worker("gw0")  # replaces it: a new database under the same name
    other.close()
    recreated = oid_of(server, first.name)
    assert cleaner.clean(plan) == []
    assert dict(plan.skipped)[first.name].startswith("changed since the plan")
    assert oid_of(server, first.name) == recreated


@scram_only
def test_clean_skips_a_database_a_run_claimed_after_the_plan(
    databases: ProjectDatabases, make_databases: MakeDatabases, server: URL
) -> None:
    """A run that (re)uses the database between plan and drop holds its lock: skipped."""
    name = databases.clone_for_worker("gw0").name
    databases.close()
    cleaner = make_databases()
    plan = cleaner.plan_clean()
    make_databases(reuse=True).clone_for_worker("gw0", reuse=True)  # a run adopts it, still open
    assert cleaner.clean(plan) == []
    assert (name, RUN_IN_PROGRESS) in plan.skipped
    assert name in database_names(server, name)


@scram_only
def test_a_failing_drop_says_what_was_already_dropped(
    databases: ProjectDatabases, make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    """The first drop succeeds; the second dies with the cleaner's session (terminated while
    the DROP waits for a lock a concurrent COMMENT holds): the error names what is gone."""
    for worker in ("gw0", "gw1"):
        databases.clone_for_worker(worker)
    databases.close()
    cleaner = make_databases()
    plan = cleaner.plan_clean()
    first, second = f"{base_name}_gw0", f"{base_name}_gw1"
    assert [db.name for db in plan.drop] == [first, second]
    errors: list[BaseException] = []

    def run_clean() -> None:
        try:
            cleaner.clean(plan)
        except BaseException as exc:
            errors.append(exc)

    with connect(server) as blocker:
        comment = blocker.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (second,),
        ).fetchone()
        assert comment is not None
        with blocker.transaction():  # COMMENT locks the database object until commit
            blocker.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(second), sql.Literal(comment[0])
                )
            )
            with cleaner.admin() as admin:
                pid = admin.conn.info.backend_pid
            thread = threading.Thread(target=run_clean, daemon=True)
            thread.start()
            poll(
                lambda: (
                    blocker.execute(
                        "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)
                    ).fetchone()
                    == (1,)
                ),
                what="the second DROP to wait for its lock",
            )
            blocker.execute("SELECT pg_terminate_backend(%s)", (pid,))
            thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1 and f"(already dropped: {first})" in str(errors[0]), errors
    assert first not in database_names(server, base_name)
    assert second in database_names(server, base_name)


# -- item 2: never drop a database with sessions unless forced ------------------------------------


@scram_only
def test_drop_without_force_refuses_a_database_with_sessions(
    databases: ProjectDatabases, server: URL
) -> None:
    name = databases.clone_for_worker("gw0").name
    with connect(server, name) as holder:
        with Admin(server) as admin, pytest.raises(DatabaseInUse, match="--force"):
            admin.drop_database(name)
        assert holder.execute("SELECT 1").fetchone() == (1,)
    databases.drop_database(name)  # the run's own teardown still drops it


@scram_only
def test_teardown_drop_of_own_database_ends_own_pooled_connections(
    databases: ProjectDatabases, server: URL
) -> None:
    name = databases.clone_for_worker("gw0").name
    pooled = connect(server, name)  # the code under test left a connection open
    databases.drop_database(name)
    assert oid_of(server, name) is None
    pooled.close()


# -- item 3: a run in progress protects its template ----------------------------------------------


@scram_only
def test_clean_skips_a_template_a_run_holds(
    databases: ProjectDatabases, make_databases: MakeDatabases, server: URL
) -> None:
    template = databases.hold_template()
    cleaner = make_databases()
    plan = cleaner.plan_clean(templates=True)
    assert (template, TEMPLATE_HELD) in plan.skipped
    assert cleaner.clean(plan) == []
    assert oid_of(server, template) is not None
    databases.close()  # the run ends: now it may go
    plan = cleaner.plan_clean(templates=True)
    assert cleaner.clean(plan) == [template]


@scram_only
def test_hold_taken_after_plan_still_protects_the_template(
    databases: ProjectDatabases, make_databases: MakeDatabases, server: URL
) -> None:
    template = databases.template_name
    cleaner = make_databases()
    plan = cleaner.plan_clean(templates=True)
    assert template in {db.name for db in plan.drop}
    run = make_databases()
    run.hold_template()  # a run starts between plan and drop
    assert cleaner.clean(plan) == []
    assert (template, TEMPLATE_HELD) in plan.skipped
    assert run.clone_for_worker("gw0").name


# -- item 4: interrupted creations never block ----------------------------------------------------


@scram_only
def test_an_unmarked_creating_leftover_does_not_block_the_next_clone_and_clean_drops_it(
    databases: ProjectDatabases, make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    """What a kill between CREATE DATABASE and COMMENT leaves: `<name>.creating`, unmarked."""
    name = f"{base_name}_gw0"
    leftover = creating_name(name)
    with connect(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(leftover)))
    assert databases.clone_for_worker("gw0").name == name
    assert leftover not in database_names(server, base_name)
    databases.drop_database(name)
    with connect(server) as conn:  # again, and this time `clean` meets it
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(leftover)))
    cleaner = make_databases()
    plan = cleaner.plan_clean()
    assert plan.interrupted == [leftover]
    assert cleaner.clean(plan) == [leftover]
    assert database_names(server, base_name) == {databases.template_name}


@scram_only
def test_a_marked_creating_leftover_is_ours_and_replaced(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    """Killed between COMMENT and RENAME: the leftover carries the real name's marker."""
    name = f"{base_name}_gw0"
    marker = Marker(
        role=ROLE_WORKER,
        base=base_name,
        namespace="",
        fingerprint=databases.fingerprint,
        created_at=utc_now(),
        worker="gw0",
    )
    leftover = creating_name(name)
    with connect(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(leftover)))
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(leftover), sql.Literal(marker.to_comment())
            )
        )
    assert owned_marker(leftover, marker.to_comment(), base_name) == marker
    assert databases.clone_for_worker("gw0").name == name
    assert database_names(server, base_name) == {name, databases.template_name}


@scram_only
def test_a_creating_name_with_a_foreign_comment_is_left_alone(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    leftover = creating_name(f"{base_name}_gw0")
    with connect(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(leftover)))
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS 'somebody else''s'").format(sql.Identifier(leftover))
        )
    with pytest.raises(Exception, match="not created by testdb"):
        databases.clone_for_worker("gw0")
    assert leftover in database_names(server, base_name)
    plan = databases.plan_clean()
    assert leftover not in plan.interrupted and leftover in dict(plan.skipped)


# -- item 5: a build is seen from any maintenance database ----------------------------------------


@scram_only
def test_scratch_marker_names_its_builder_and_clean_sees_it_from_another_maintenance_db(
    make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    maintenance = f"{base_name}_maint"
    with connect(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(maintenance)))
    fp = "f" * 64
    databases = make_databases()
    scratch = databases.naming.scratch(fp)
    with Admin(server) as builder:  # a builder whose build lock is in `postgres`
        marker = Marker(
            role=ROLE_SCRATCH,
            base=base_name,
            namespace="",
            fingerprint=fp,
            created_at=utc_now(),
            builder=builder.backend_identity(),
        )
        builder.create_database(scratch, comment=marker.to_comment())
        other = make_databases(maintenance_db=maintenance)
        plan = other.plan_clean()
        assert (scratch, "a template build is in progress") in plan.skipped
    # The builder's session ended: its scratch database is a dead build's leftover.
    poll(lambda: scratch in {db.name for db in other.plan_clean().drop}, what="the builder to go")
    plan = other.plan_clean()
    assert other.clean(plan) == [scratch]


# -- item 6: reuse refuses a database another run holds -------------------------------------------


@scram_only
def test_reuse_refuses_a_database_another_run_cloned_and_has_not_connected_to(
    databases: ProjectDatabases, make_databases: MakeDatabases
) -> None:
    databases.clone_for_worker("gw0", reuse=True)  # cloned; no session on it yet
    second = make_databases(reuse=True)
    with pytest.raises(DatabaseInUse, match="own namespace"):
        second.clone_for_worker("gw0", reuse=True)
    with pytest.raises(DatabaseInUse, match="own namespace"):
        second.clone_for_worker("gw0")  # nor replace it
    databases.close()  # the first run ended: now it may be reused
    assert second.clone_for_worker("gw0", reuse=True).reused


# -- item 7: lock_timeout bounds ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e12", "1e400", "0.0001", "0"])
def test_lock_timeout_out_of_bounds_is_one_line_config_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_settings(cwd=tmp_path, environ={"TESTDB_LOCK_TIMEOUT": value})
    message = str(caught.value)
    assert "lock_timeout from env TESTDB_LOCK_TIMEOUT" in message and "\n" not in message
    assert "0.001" in message and "86400" in message


@pytest.mark.parametrize("value", ["0.001", "86400", "2.5"])
def test_lock_timeout_within_bounds_is_accepted(tmp_path: Path, value: str) -> None:
    settings = resolve_settings(cwd=tmp_path, environ={"TESTDB_LOCK_TIMEOUT": value})
    assert 0.001 <= settings.lock_timeout <= MAX_LOCK_TIMEOUT


@scram_only
def test_sub_millisecond_lock_timeout_times_out_instead_of_waiting_forever(server: URL) -> None:
    label = f"frt-test:{uuid.uuid4().hex}"
    holder = Admin(server)
    waiter = Admin(server)
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            waiter.advisory_lock(label, timeout=0.0004)
            outcome.append(None)
        except TemplateBuildError as exc:
            outcome.append(exc)

    try:
        assert holder.try_advisory_lock(label)
        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        thread.join(timeout=15)
        finished = not thread.is_alive()
    finally:
        holder.close()  # releases a waiter that would otherwise wait forever
    thread.join(timeout=15)
    waiter.close()
    assert finished, "a 0.4 ms lock_timeout waited forever (formatted as 0ms)"
    assert isinstance(outcome[0], TemplateBuildError)


# -- item 8: another role's template, accurate privilege messages ---------------------------------


@pytest.fixture
def other_role(trust_server: URL) -> Iterator[str]:
    role = f"frt_role_{uuid.uuid4().hex[:8]}"
    with connect(trust_server) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
    yield role
    with connect(trust_server) as conn:
        owned = conn.execute(
            "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles "
            "WHERE rolname = %s)",
            (role,),
        ).fetchall()
        for (name,) in owned:  # only if the code under test wrongly created one
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@trust_only
def test_second_role_cloning_another_roles_template_is_told_up_front(
    databases: ProjectDatabases,
    make_databases: MakeDatabases,
    other_role: str,
    server: URL,
    base_name: str,
) -> None:
    owner_run = databases.clone_for_worker("gw0").name
    databases.close()
    as_other = make_databases(
        url=render_for_driver(server.set(username=other_role, database=base_name))
    )
    before = database_names(server, base_name)
    with pytest.raises(PermissionProblem) as caught:
        as_other.clone_for_worker("gw1")
    message = str(caught.value)
    assert f"belongs to role {server.username!r}" in message and other_role in message
    assert "GRANT" in message and "\n" not in message
    assert database_names(server, base_name) == before  # nothing created
    # `clean` as the other role: the owner's database is skipped with the real reason.
    plan = as_other.plan_clean()
    assert as_other.clean(plan) == []
    reason = dict(plan.skipped)[owner_run]
    assert f"owned by role {server.username!r}" in reason and "CREATEDB" not in reason
    # And a drop the server refuses says what is missing, not "grant CREATEDB".
    with Admin(server.set(username=other_role)) as admin, pytest.raises(PermissionProblem) as err:
        admin.drop_database(owner_run)
    assert "must be owner" in str(err.value) and "CREATEDB" not in str(err.value)
    assert owner_run in database_names(server, base_name)
    as_other.close()


def test_in_use_reason_names_the_flag() -> None:
    assert "--force" in IN_USE
