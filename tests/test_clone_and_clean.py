"""Worker / per-test clones, ownership-checked drops, `clean` planning and status, on real servers."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import database_names, drop_databases_with_prefix, write_tiny_project
from psycopg import pq, sql
from sqlalchemy.engine import URL

from finreport_testdb.core.admin import Admin
from finreport_testdb.core.clean import IN_USE, IN_USE_PREPARED
from finreport_testdb.core.marker import (
    ROLE_SCRATCH,
    ROLE_TEST,
    ROLE_WORKER,
    Marker,
    owned_marker,
    utc_now,
)
from finreport_testdb.core.ownership import template_lock_label
from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.errors import (
    ConfigError,
    DatabaseInUse,
    NotManagedDatabase,
    TemplateBuildError,
)

#: Server-independent behaviour runs against the scram server only (tmpfs, fsync off); the trust
#: server (the machine's cluster: disk, fsync on) costs 0.5-2 s per CREATE/DROP DATABASE, so only
#: the core behaviours, the tests without this mark, run on both servers.
scram_only = pytest.mark.parametrize("server", ["scram"], indirect=True)


MakeDatabases = Callable[..., ProjectDatabases]


def connect(server: URL, database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(autocommit=True, **psycopg_connect_kwargs(server, database=database))


def create_raw(server: URL, name: str, comment: str | None = None) -> None:
    """A database made by someone else (or a forger): plain CREATE, optional comment."""
    with connect(server, "postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if comment is not None:
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(name), sql.Literal(comment)
                )
            )


def comment_of(server: URL, name: str) -> str | None:
    with Admin(server) as admin:
        found = admin.find(name)
        return found.comment if found else None


def oid_of(server: URL, name: str) -> int:
    with connect(server, "postgres") as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert row is not None, name
    return int(row[0])


def names_of(dbs: list[Any]) -> set[str]:
    return {db.name for db in dbs}


@pytest.fixture
def databases(make_databases: MakeDatabases) -> ProjectDatabases:
    """A manager whose template is built."""
    db = make_databases()
    db.ensure_template()
    return db


# -- clones ---------------------------------------------------------------------------------------


def test_clone_for_worker_creates_marked_database(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    clone = databases.clone_for_worker("gw0")
    assert clone.name == f"{base_name}_gw0"
    assert clone.reused is False
    assert clone.template == databases.template_name
    marker = owned_marker(clone.name, comment_of(server, clone.name), base_name)
    assert marker is not None
    assert (marker.role, marker.worker, marker.fingerprint) == (
        ROLE_WORKER,
        "gw0",
        databases.fingerprint,
    )


@scram_only
def test_worker_clone_has_tables_and_seed_rows(databases: ProjectDatabases) -> None:
    clone = databases.clone_for_worker("gw0")
    with psycopg.connect(**psycopg_connect_kwargs(clone.url)) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM accounts ORDER BY id")] == [
            "cash",
            "bank",
        ]
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (0,)


@scram_only
def test_worker_clone_is_an_ordinary_writable_database(
    databases: ProjectDatabases, server: URL
) -> None:
    clone = databases.clone_for_worker("gw2")
    with connect(server, "postgres") as conn:
        row = conn.execute(
            "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s", (clone.name,)
        ).fetchone()
    assert row == (False, True)


@scram_only
def test_worker_url_keeps_driver_and_password(databases: ProjectDatabases, server: URL) -> None:
    clone = databases.clone_for_worker("gw0")
    assert clone.url.password == server.password
    assert clone.url.drivername == server.drivername
    assert clone.url_string.startswith(f"{server.drivername}://")
    if server.password:
        assert "***" in repr(clone) and server.password not in repr(clone)


@scram_only
def test_worker_clone_with_namespace(make_databases: MakeDatabases, base_name: str) -> None:
    db = make_databases(namespace="ci_7")
    db.ensure_template()
    assert db.clone_for_worker("gw3").name == f"{base_name}_ci_7_gw3"


@scram_only
def test_serial_run_clone_has_its_own_name(databases: ProjectDatabases, base_name: str) -> None:
    assert databases.clone_for_worker("master").name == f"{base_name}_serial"


@scram_only
def test_clone_for_test_is_marked_per_test(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    clone = databases.clone_for_test("gw1", 3)
    assert clone.name == f"{base_name}_gw1_t3"
    marker = owned_marker(clone.name, comment_of(server, clone.name), base_name)
    assert marker is not None and (marker.role, marker.worker, marker.index) == (
        ROLE_TEST,
        "gw1",
        3,
    )


def test_reuse_returns_existing_clone_without_recloning(
    databases: ProjectDatabases, server: URL
) -> None:
    first = databases.clone_for_worker("gw0")
    oid = oid_of(server, first.name)
    with psycopg.connect(**psycopg_connect_kwargs(first.url), autocommit=True) as conn:
        conn.execute("INSERT INTO accounts (name) VALUES ('kept')")
    again = databases.clone_for_worker("gw0", reuse=True)
    assert again.reused is True
    assert oid_of(server, again.name) == oid
    with psycopg.connect(**psycopg_connect_kwargs(again.url)) as conn:
        assert conn.execute("SELECT count(*) FROM accounts WHERE name = 'kept'").fetchone() == (1,)


@scram_only
def test_without_reuse_an_existing_clone_is_replaced(
    databases: ProjectDatabases, server: URL
) -> None:
    first = databases.clone_for_worker("gw0")
    oid = oid_of(server, first.name)
    again = databases.clone_for_worker("gw0")
    assert again.reused is False
    assert oid_of(server, again.name) != oid


@scram_only
def test_clone_in_use_by_another_run_is_not_replaced(
    databases: ProjectDatabases, make_databases: MakeDatabases, server: URL
) -> None:
    """Two runs with the same namespace: the second must not drop the first one's database."""
    first = databases.clone_for_worker("gw0")
    oid = oid_of(server, first.name)
    # The first run's tests are connected while a second run asks for the same worker database.
    with connect(server, first.name), pytest.raises(DatabaseInUse, match="same namespace"):
        make_databases().clone_for_worker("gw0")
    assert oid_of(server, first.name) == oid


@scram_only
def test_reuse_reclones_when_fingerprint_changed(
    make_databases: MakeDatabases, tiny_project: Path, server: URL, base_name: str
) -> None:
    old = make_databases()
    old.ensure_template()
    old.clone_for_worker("gw0")
    old.close()  # that run ended, keeping its database
    path = tiny_project / "migrations" / "versions" / "0002_entries.py"
    path.write_text(path.read_text().replace("Numeric(12, 2)", "Numeric(14, 2)"))
    new = make_databases()
    new.ensure_template()
    clone = new.clone_for_worker("gw0", reuse=True)
    assert clone.reused is False
    marker = owned_marker(clone.name, comment_of(server, clone.name), base_name)
    assert marker is not None and marker.fingerprint == new.fingerprint != old.fingerprint


@scram_only
def test_clone_refuses_to_replace_unmarked_database(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    create_raw(server, f"{base_name}_gw0")
    with pytest.raises(NotManagedDatabase, match="not created by testdb"):
        databases.clone_for_worker("gw0")
    assert f"{base_name}_gw0" in database_names(server, base_name)


@scram_only
def test_clone_without_template_is_a_clear_error(
    make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    databases = make_databases()  # ensure_template() never called
    with pytest.raises(
        TemplateBuildError, match=r"template '.*_tpl_.*' does not exist.*prepare-template"
    ):
        databases.clone_for_worker("gw0")
    assert database_names(server, base_name) == set()


@scram_only
def test_a_session_left_on_the_template_is_ended_before_the_clone(
    databases: ProjectDatabases, server: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL refuses CREATE DATABASE ... TEMPLATE while the source has sessions (55006), and
    only after waiting 5 s for them: a session on the template (opened while it still allowed
    connections) is ended by the query that looks at the name, so the clone never meets it."""
    template = databases.template_name
    allow = "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}"
    with Admin(server) as admin:
        admin.conn.execute(sql.SQL(allow.format("{}", "true")).format(sql.Identifier(template)))
        holder = connect(server, template)
        admin.conn.execute(sql.SQL(allow.format("{}", "false")).format(sql.Identifier(template)))
    try:
        with caplog.at_level("INFO", logger="finreport_testdb.core.admin"):
            databases.clone_for_worker("gw0")
        assert not [r for r in caplog.records if "holding" in r.getMessage()]  # no 55006 retry
        with pytest.raises(psycopg.OperationalError):
            holder.execute("SELECT 1")
    finally:
        holder.close()


@scram_only
def test_a_clone_that_meets_a_session_on_its_source_ends_it_and_retries(
    server: URL, base_name: str, server_cleanup: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The backstop for a session that arrives after that query: the clone fails with 55006
    after PostgreSQL's wait, ends the session and retries, instead of failing."""
    source, copy = f"{base_name}_src", f"{base_name}_copy"
    with Admin(server) as admin:
        admin.create_database(source, comment="source")
    holder = connect(server, source)
    try:
        with Admin(server) as admin, caplog.at_level("INFO", logger="finreport_testdb.core.admin"):
            admin.create_database(copy, comment="copy", template=source)
        assert copy in database_names(server, base_name)
        assert [r for r in caplog.records if "holding" in r.getMessage()]
        with pytest.raises(psycopg.OperationalError):
            holder.execute("SELECT 1")
    finally:
        holder.close()


# -- drop -----------------------------------------------------------------------------------------


def test_end_sessions_returns_once_the_sessions_are_gone(
    databases: ProjectDatabases, server: URL
) -> None:
    """A forced drop and a `fresh` reset end the sessions themselves first: PostgreSQL's own wait
    for terminated sessions re-checks every 100 ms (measured: docs/benchmarks.md, workload 9)."""
    clone = databases.clone_for_test("gw0", 7)
    conns = [psycopg.connect(**psycopg_connect_kwargs(clone.url)) for _ in range(3)]
    with databases.admin() as admin:
        admin.end_sessions(clone.name)
        assert admin.session_count(clone.name) == 0
    for conn in conns:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
    databases.drop_database(clone.name)
    assert clone.name not in database_names(server, clone.name)


@scram_only
def test_drop_database_drops_an_owned_clone(databases: ProjectDatabases, server: URL) -> None:
    clone = databases.clone_for_test("gw0", 1)
    databases.drop_database(clone.name)
    assert clone.name not in database_names(server, clone.name)


@scram_only
def test_drop_database_refuses_unmarked_database(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    create_raw(server, f"{base_name}_gw0_t1")
    with pytest.raises(NotManagedDatabase, match="refusing to drop"):
        databases.drop_database(f"{base_name}_gw0_t1")
    assert f"{base_name}_gw0_t1" in database_names(server, base_name)


@scram_only
def test_drop_database_of_missing_database_is_a_no_op(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    clone = databases.clone_for_test("gw0", 1)
    before = database_names(server, base_name)
    assert clone.name in before
    databases.drop_database(f"{base_name}_gw9")
    assert database_names(server, base_name) == before


# -- clean ----------------------------------------------------------------------------------------


@pytest.fixture
def populated(databases: ProjectDatabases, server: URL, base_name: str) -> Iterator[dict[str, str]]:
    """Template, two workers, a per-test clone and a leftover scratch database, all marked."""
    names = {
        "template": databases.template_name,
        "gw0": databases.clone_for_worker("gw0").name,
        "gw1": databases.clone_for_worker("gw1").name,
        "test": databases.clone_for_test("gw0", 0).name,
    }
    other_fp = "f" * 64
    scratch = databases.naming.scratch(other_fp)
    marker = Marker(
        role=ROLE_SCRATCH, base=base_name, namespace="", fingerprint=other_fp, created_at=utc_now()
    )
    with Admin(server) as admin:
        admin.create_database(scratch, comment=marker.to_comment())
    names["scratch"] = scratch
    yield names


def test_clean_drops_marked_worker_test_and_scratch_databases(
    databases: ProjectDatabases, populated: dict[str, str], server: URL, base_name: str
) -> None:
    plan = databases.plan_clean()
    expected = {populated["gw0"], populated["gw1"], populated["test"], populated["scratch"]}
    assert names_of(plan.drop) == expected
    assert sorted(databases.clean(plan)) == sorted(expected)
    assert database_names(server, base_name) == {populated["template"]}


@scram_only
def test_clean_keeps_templates_by_default(
    databases: ProjectDatabases, populated: dict[str, str], server: URL, base_name: str
) -> None:
    databases.clean(databases.plan_clean())
    assert populated["template"] in database_names(server, base_name)


@scram_only
def test_clean_templates_drops_templates_too(
    databases: ProjectDatabases, populated: dict[str, str], server: URL, base_name: str
) -> None:
    plan = databases.plan_clean(templates=True)
    assert populated["template"] in names_of(plan.drop)
    databases.clean(plan)
    assert database_names(server, base_name) == set()


def test_clean_never_drops_unmarked_worker_lookalike(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    lookalike = f"{base_name}_gw7"
    create_raw(server, lookalike)
    plan = databases.plan_clean(all_namespaces=True, templates=True)
    assert lookalike not in names_of(plan.drop)
    assert (lookalike, "no testdb ownership marker (not created by testdb)") in plan.skipped
    databases.clean(plan)
    assert database_names(server, base_name) == {lookalike}


@scram_only
def test_clean_never_drops_marker_copied_onto_another_name(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    real = databases.clone_for_worker("gw0").name
    forged = f"{base_name}_gw8"
    create_raw(server, forged, comment=comment_of(server, real))  # gw0's marker, verbatim
    plan = databases.plan_clean(all_namespaces=True)
    assert names_of(plan.drop) == {real}
    reason = dict(plan.skipped)[forged]
    assert reason.startswith("no testdb ownership marker of its own")
    assert repr(real) in reason and "copied or forged" in reason
    databases.clean(plan)
    assert forged in database_names(server, base_name)


@scram_only
def test_clean_never_drops_database_marked_for_another_base(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    name = f"{base_name}_gw9"
    foreign = Marker(
        role=ROLE_WORKER,
        base="other_app_test",
        namespace="",
        fingerprint=databases.fingerprint,
        created_at=utc_now(),
        worker="gw9",
    )
    create_raw(server, name, comment=foreign.to_comment())
    plan = databases.plan_clean(all_namespaces=True, templates=True)
    assert name not in names_of(plan.drop)
    assert "its marker is for base 'other_app_test'" in dict(plan.skipped)[name]
    databases.clean(plan)
    assert name in database_names(server, base_name)


@scram_only
def test_clean_rechecks_the_marker_before_dropping(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    name = databases.clone_for_worker("gw0").name
    plan = databases.plan_clean()
    with Admin(server) as admin:
        admin.set_comment(name, "taken over by a human in the meantime")
    assert databases.clean(plan) == []
    assert dict(plan.skipped)[name].startswith("changed since the plan")
    assert name in database_names(server, base_name)


@scram_only
def test_clean_skips_a_database_with_sessions_unless_forced(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    """Issue 10 item 2: a worker database with live sessions (a run's tests) is not dropped
    and is reported as in use; `force` (`clean --force`) ends the sessions and drops it."""
    clone = databases.clone_for_worker("gw0")
    holder = connect(server, clone.name)
    try:
        plan = databases.plan_clean()
        assert databases.clean(plan) == []
        assert (clone.name, IN_USE) in plan.skipped
        assert clone.name in database_names(server, base_name)
        assert holder.execute("SELECT 1").fetchone() == (1,)  # the session survived
        assert databases.clean(databases.plan_clean(), force=True) == [clone.name]
        assert clone.name not in database_names(server, base_name)
    finally:
        holder.close()


@scram_only
def test_clean_skips_scratch_of_a_build_in_progress(
    databases: ProjectDatabases, server: URL, base_name: str
) -> None:
    fp = "e" * 64
    scratch = databases.naming.scratch(fp)
    marker = Marker(
        role=ROLE_SCRATCH, base=base_name, namespace="", fingerprint=fp, created_at=utc_now()
    )
    with Admin(server) as builder:
        builder.create_database(scratch, comment=marker.to_comment())
        assert builder.try_advisory_lock(template_lock_label(databases.naming.template(fp)))
        plan = databases.plan_clean()
        assert (scratch, "a template build is in progress") in plan.skipped
        assert scratch not in names_of(plan.drop)


# -- namespaces -----------------------------------------------------------------------------------


@pytest.fixture
def namespaced(make_databases: MakeDatabases) -> dict[str, ProjectDatabases]:
    managers = {ns: make_databases(namespace=ns or None) for ns in ("", "ci_a", "ci_b")}
    managers[""].ensure_template()
    for manager in managers.values():
        manager.clone_for_worker("gw0")
        manager.close()  # each run ended, keeping its database (and its claim on the name)
    return managers


@scram_only
def test_clean_default_namespace_only(
    namespaced: dict[str, ProjectDatabases], base_name: str
) -> None:
    plan = namespaced[""].plan_clean()
    assert names_of(plan.drop) == {f"{base_name}_gw0"}
    skipped = dict(plan.skipped)
    assert skipped[f"{base_name}_ci_a_gw0"] == "namespace 'ci_a'"
    assert skipped[f"{base_name}_ci_b_gw0"] == "namespace 'ci_b'"


@scram_only
def test_clean_of_configured_namespace(
    namespaced: dict[str, ProjectDatabases], base_name: str
) -> None:
    plan = namespaced["ci_a"].plan_clean()
    assert names_of(plan.drop) == {f"{base_name}_ci_a_gw0"}


@scram_only
def test_clean_explicit_namespace(
    namespaced: dict[str, ProjectDatabases], server: URL, base_name: str
) -> None:
    manager = namespaced[""]
    plan = manager.plan_clean(namespace="ci_b")
    assert names_of(plan.drop) == {f"{base_name}_ci_b_gw0"}
    manager.clean(plan)
    remaining = database_names(server, base_name)
    assert f"{base_name}_ci_b_gw0" not in remaining
    assert {f"{base_name}_gw0", f"{base_name}_ci_a_gw0"} <= remaining


@scram_only
def test_clean_all_namespaces(
    namespaced: dict[str, ProjectDatabases], server: URL, base_name: str
) -> None:
    manager = namespaced["ci_a"]
    plan = manager.plan_clean(all_namespaces=True)
    assert names_of(plan.drop) == {
        f"{base_name}_gw0",
        f"{base_name}_ci_a_gw0",
        f"{base_name}_ci_b_gw0",
    }
    manager.clean(plan)
    assert database_names(server, base_name) == {manager.template_name}


# -- stale templates ------------------------------------------------------------------------------


@pytest.fixture
def two_templates(
    make_databases: MakeDatabases, tiny_project: Path
) -> tuple[ProjectDatabases, str]:
    """(manager at the current fingerprint, name of a template of an older fingerprint)."""
    path = tiny_project / "migrations" / "versions" / "0002_entries.py"
    original = path.read_text()
    path.write_text(original.replace("Numeric(12, 2)", "Numeric(14, 2)"))
    old = make_databases().ensure_template().name
    path.write_text(original)
    current = make_databases()
    current.ensure_template()
    return current, old


@scram_only
def test_stale_templates_drops_old_keeps_current(
    two_templates: tuple[ProjectDatabases, str], server: URL, base_name: str
) -> None:
    current, old = two_templates
    plan = current.plan_clean(stale_templates=True)
    assert names_of(plan.drop) == {old}
    assert (current.template_name, "template of the current fingerprint") in plan.skipped
    current.clean(plan)
    assert database_names(server, base_name) == {current.template_name}


@scram_only
def test_stale_template_still_used_by_a_worker_is_kept(
    two_templates: tuple[ProjectDatabases, str], server: URL, base_name: str
) -> None:
    current, old = two_templates
    worker = f"{base_name}_ci_x_gw0"  # a CI job on the old branch still has its database
    marker = Marker(
        role=ROLE_WORKER,
        base=base_name,
        namespace="ci_x",
        created_at=utc_now(),
        fingerprint=_full_fp(server, old),
        worker="gw0",
    )
    with Admin(server) as admin:
        admin.create_database(worker, comment=marker.to_comment(), template=old)
    plan = current.plan_clean(stale_templates=True)
    assert old not in names_of(plan.drop)
    assert (old, "template still used by worker databases") in plan.skipped


@scram_only
def test_stale_templates_refuses_when_current_fingerprint_is_unknown(
    two_templates: tuple[ProjectDatabases, str],
    make_databases: MakeDatabases,
    tiny_project: Path,
    server: URL,
    base_name: str,
) -> None:
    """Two heads mid-merge: which template is current is unknown, so none may be called stale."""
    _, old = two_templates
    before = database_names(server, base_name)
    (tiny_project / "migrations" / "versions" / "0003_branch.py").write_text(
        'revision = "0003"\ndown_revision = "0001"\ndef upgrade():\n    pass\n'
    )
    with pytest.raises(ConfigError, match="heads"):
        make_databases().plan_clean(stale_templates=True)
    assert database_names(server, base_name) == before and old in before


def _full_fp(server: URL, template: str) -> str:
    marker = Marker.parse(comment_of(server, template))
    assert marker is not None
    return marker.fingerprint


# -- status ---------------------------------------------------------------------------------------


@scram_only
def test_managed_databases_lists_marked_and_reports_lookalikes(
    databases: ProjectDatabases, populated: dict[str, str], server: URL, base_name: str
) -> None:
    create_raw(server, f"{base_name}_gw7")
    managed, lookalikes = databases.managed_databases(with_size=True)
    assert names_of(managed) == set(populated.values())
    assert lookalikes == [f"{base_name}_gw7"]
    by_name = {db.name: db for db in managed}
    assert by_name[populated["template"]].is_template
    assert by_name[populated["gw0"]].marker.fingerprint == databases.fingerprint
    assert all(db.size_bytes and db.size_bytes > 0 for db in managed)
    age = by_name[populated["gw0"]].age_seconds()
    assert age is not None and 0 <= age < 600


@scram_only
def test_managed_databases_counts_connections(databases: ProjectDatabases, server: URL) -> None:
    clone = databases.clone_for_worker("gw0")
    with connect(server, clone.name):
        managed, _ = databases.managed_databases()
        assert {db.name: db.connections for db in managed}[clone.name] == 1


# -- a role without superuser rights --------------------------------------------------------------


@pytest.mark.parametrize("server", ["trust"], indirect=True)
def test_createdb_role_works_beside_databases_it_may_not_connect_to(
    server: URL, base_name: str, tmp_path: Path, server_cleanup: None
) -> None:
    """The usual shared CI server: the test role has CREATEDB only, and some other database on the
    server revokes CONNECT from PUBLIC. Build, clone, status (with sizes) and clean must all work."""
    role = f"{base_name}_role"
    private = f"{base_name}_private"
    with connect(server, "postgres") as su:
        su.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
        su.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(private)))
        su.execute(
            sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(private))
        )
    try:
        url = server.set(username=role, password=None, database=base_name)
        project = write_tiny_project(tmp_path / "p")
        databases = ProjectDatabases.from_settings(
            resolve_settings({"url": render_for_driver(url)}, cwd=project, environ={})
        )
        databases.ensure_template()
        clone = databases.clone_for_worker("gw0")
        managed, lookalikes = databases.managed_databases(with_size=True)
        assert names_of(managed) == {clone.name, databases.template_name}
        assert lookalikes == [private]
        assert all(db.size_bytes for db in managed)
        assert sorted(databases.clean(databases.plan_clean(templates=True))) == sorted(
            [clone.name, databases.template_name]
        )
    finally:
        drop_databases_with_prefix(server, base_name)
        with connect(server, "postgres") as su:
            su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@scram_only
def test_clean_names_prepared_transactions_and_force_rolls_them_back(
    make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    """Trust round 4, item 2: a prepared transaction left on a worker database keeps it in use
    with no session to see. `clean` says so (not "open sessions"), and `clean --force` rolls it
    back and drops the database. (The scram server allows prepared transactions; the machine's
    trust server does not.)"""
    databases = make_databases()
    databases.ensure_template()
    clone = databases.clone_for_worker("gw0")
    with connect(server, clone.name) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO accounts (name) VALUES ('in doubt')")
        conn.execute(f"PREPARE TRANSACTION '{base_name} left by a test'")  # unique on the server
    databases.close()  # the run ends (crashes): its claims go with its session
    other = make_databases()

    plan = other.plan_clean()
    assert other.clean(plan) == []
    assert (clone.name, IN_USE_PREPARED) in plan.skipped
    assert other.clean(other.plan_clean(), force=True) == [clone.name]
    assert clone.name not in database_names(server, base_name)
    with Admin(server) as admin:
        assert admin.prepared_transactions(clone.name) == []


@contextlib.contextmanager
def round_trips(conn: psycopg.Connection[Any]) -> Iterator[list[int]]:
    """Count the round trips on `conn` inside the block, from libpq's own protocol trace: every
    simple `Query` and every `Sync` the client sends is one request it waits on."""
    count = [0]
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield count
        finally:
            conn.pgconn.untrace()
            trace.seek(0)
            count[0] = sum(
                1
                for line in trace
                if line.startswith("F\t") and line.split("\t")[2].split()[0] in ("Query", "Sync")
            )


def test_a_clone_costs_at_most_three_round_trips(databases: ProjectDatabases) -> None:
    """Issue 19: claim the name and look at what is there (one query), CREATE, then COMMENT and
    the rename as one query: three round trips for a worker's clone, and for a per-test clone
    once the worker's name is claimed. (The count comes from libpq's trace, not from reading the
    code.)"""
    with databases.admin() as admin:  # the login and the server hold are the session's, once
        with round_trips(admin.conn) as worker:
            databases.clone_for_worker("gw0")
        with round_trips(admin.conn) as per_test:
            databases.clone_for_test("gw0", 1)
    assert worker[0] == 3
    assert per_test[0] == 3
