"""Template build and reuse against real PostgreSQL (trust and scram-sha-256 servers).

Every test runs on both servers through the `server` fixture and uses its own base name.
"""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import database_names, write_tiny_project
from sqlalchemy.engine import URL

from finreport_testdb.core.admin import Admin
from finreport_testdb.core.marker import ROLE_SCRATCH, ROLE_TEMPLATE, Marker, owned_marker, utc_now
from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.errors import MigrationError, NotManagedDatabase, TemplateBuildError
from finreport_testdb.migrators.alembic_migrator import AlembicMigrator

#: Server-independent behaviour runs against the scram server only (tmpfs, fsync off); the trust
#: server (the machine's cluster: disk, fsync on) costs 0.5-2 s per CREATE/DROP DATABASE, so only
#: the core behaviours, the tests without this mark, run on both servers.
scram_only = pytest.mark.parametrize("server", ["scram"], indirect=True)


MakeDatabases = Callable[..., ProjectDatabases]


class CountingMigrator:
    """The real Alembic migrator, counting how often it migrates (and optionally doing more)."""

    def __init__(self, project: Path, after: Callable[[URL], None] | None = None) -> None:
        self.inner = AlembicMigrator(project / "alembic.ini", project_root=project)
        self.after = after
        self.calls = 0
        self.lock = threading.Lock()

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def migrate(self, url: URL) -> None:
        with self.lock:
            self.calls += 1
        self.inner.migrate(url)
        if self.after is not None:
            self.after(url)


def counted(
    base_url: URL, project: Path, **kwargs: Any
) -> tuple[ProjectDatabases, CountingMigrator]:
    settings = resolve_settings({"url": render_for_driver(base_url)}, cwd=project, environ={})
    migrator = CountingMigrator(project, **kwargs)
    return ProjectDatabases.from_settings(settings, migrator=migrator), migrator


def pg_database_row(server: URL, name: str) -> dict[str, Any] | None:
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database="postgres")
    ) as c:
        row = c.execute(
            "SELECT oid, datistemplate, datallowconn, shobj_description(oid, 'pg_database') "
            "FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    if row is None:
        return None
    return {"oid": row[0], "is_template": row[1], "allow_connections": row[2], "comment": row[3]}


def add_revision(project: Path, name: str, revision: str, down: str, body: str) -> None:
    (project / "migrations" / "versions" / name).write_text(
        textwrap.dedent(f'''
        """{name}"""
        import sqlalchemy as sa
        from alembic import op

        revision = "{revision}"
        down_revision = "{down}"

        def upgrade():
        {textwrap.indent(textwrap.dedent(body).strip(), "    ")}

        def downgrade():
            pass
    ''')
    )


# -- build and reuse ------------------------------------------------------------------------------


def test_first_ensure_builds_the_template(
    make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    databases = make_databases()
    result = databases.ensure_template()
    assert result.built and result.action == "built"
    assert result.name == f"{base_name}_tpl_{databases.fingerprint[:12]}"
    assert result.fingerprint == databases.fingerprint
    assert result.seconds > 0
    assert database_names(server, base_name) == {result.name}  # no scratch database left


def test_template_is_frozen_and_marked_ready(
    make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    result = make_databases().ensure_template()
    row = pg_database_row(server, result.name)
    assert row is not None
    assert row["is_template"] is True
    assert row["allow_connections"] is False
    marker = owned_marker(result.name, row["comment"], base_name)
    assert marker is not None
    assert marker.role == ROLE_TEMPLATE and marker.ready
    assert marker.fingerprint == result.fingerprint


def test_second_ensure_reuses_without_migrating(
    base_url: URL, tiny_project: Path, server: URL
) -> None:
    databases, migrator = counted(base_url, tiny_project)
    first = databases.ensure_template()
    oid = pg_database_row(server, first.name)["oid"]  # type: ignore[index]
    second = databases.ensure_template()
    assert (first.built, second.built) == (True, False)
    assert second.action == "reused"
    assert second.name == first.name
    assert migrator.calls == 1
    assert pg_database_row(server, second.name)["oid"] == oid  # type: ignore[index]


@scram_only
def test_another_process_reuses_the_ready_template(base_url: URL, tiny_project: Path) -> None:
    first, _ = counted(base_url, tiny_project)
    first.ensure_template()
    other, other_migrator = counted(base_url, tiny_project)  # a fresh manager, like another job
    assert other.ensure_template().built is False
    assert other_migrator.calls == 0


@scram_only
def test_rebuild_builds_a_new_template(
    base_url: URL, tiny_project: Path, server: URL, base_name: str
) -> None:
    databases, migrator = counted(base_url, tiny_project)
    first = databases.ensure_template()
    old_oid = pg_database_row(server, first.name)["oid"]  # type: ignore[index]
    again = databases.ensure_template(rebuild=True)
    assert again.built and again.name == first.name
    assert migrator.calls == 2
    row = pg_database_row(server, again.name)
    assert row is not None and row["oid"] != old_oid
    assert row["is_template"] and not row["allow_connections"]
    # The replaced template is dropped, not left behind under the scratch name.
    assert database_names(server, base_name) == {again.name}


@scram_only
def test_edited_migration_builds_a_second_template_beside_the_old(
    make_databases: MakeDatabases, tiny_project: Path, server: URL, base_name: str
) -> None:
    old = make_databases().ensure_template()
    path = tiny_project / "migrations" / "versions" / "0002_entries.py"
    path.write_text(path.read_text().replace("Numeric(12, 2)", "Numeric(14, 2)"))
    new = make_databases().ensure_template()
    assert new.built
    assert new.fingerprint != old.fingerprint
    assert database_names(server, base_name) == {old.name, new.name}


@scram_only
def test_switching_back_reuses_the_old_template(
    make_databases: MakeDatabases, tiny_project: Path
) -> None:
    path = tiny_project / "migrations" / "versions" / "0002_entries.py"
    original = path.read_text()
    first = make_databases().ensure_template()
    path.write_text(original.replace("Numeric(12, 2)", "Numeric(14, 2)"))
    make_databases().ensure_template()
    path.write_text(original)  # back to the first branch
    back = make_databases().ensure_template()
    assert back.name == first.name and back.built is False


@scram_only
def test_template_holds_the_migrated_schema_and_rows(
    make_databases: MakeDatabases, server: URL
) -> None:
    databases = make_databases()
    databases.ensure_template()
    clone = databases.clone_for_worker("gw0")
    with psycopg.connect(**psycopg_connect_kwargs(clone.url)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
        names = [r[0] for r in conn.execute("SELECT name FROM accounts ORDER BY name")]
        assert names == ["bank", "cash"]


@scram_only
def test_failed_rebuild_keeps_the_previous_template(
    make_databases: MakeDatabases,
    tiny_project: Path,
    server: URL,
    base_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trust round 4, item 7: `--rebuild` dropped the good template before building, so a
    failing build (a broken migration) left no template at all."""
    (tiny_project / "migrations" / "versions" / "0003_flaky.py").write_text(
        textwrap.dedent("""
            import os
            import sqlalchemy as sa
            from alembic import op

            revision = "0003"
            down_revision = "0002"

            def upgrade():
                if os.environ.get("FRT_BREAK_0003"):
                    raise RuntimeError("0003 broke")
                op.add_column("accounts", sa.Column("note", sa.Text))
        """)
    )
    databases = make_databases()
    first = databases.ensure_template()
    before = pg_database_row(server, first.name)
    monkeypatch.setenv("FRT_BREAK_0003", "1")  # same files, same fingerprint: the build fails
    with pytest.raises(MigrationError, match="0003 broke"):
        databases.ensure_template(rebuild=True)
    after = pg_database_row(server, first.name)
    assert after == before  # the same database, still frozen, still marked ready
    assert after is not None and after["is_template"] and not after["allow_connections"]
    marker = owned_marker(first.name, after["comment"], base_name)
    assert marker is not None and marker.role == ROLE_TEMPLATE and marker.ready
    assert database_names(server, base_name) == {first.name}  # no scratch database left
    clone = databases.clone_for_worker("gw0")
    with psycopg.connect(**psycopg_connect_kwargs(clone.url)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]
        assert conn.execute("SELECT note FROM accounts LIMIT 1").fetchall() == [(None,)]


@scram_only
def test_template_whose_marker_head_is_not_the_script_head_is_not_reused(
    make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    """Trust round 4, item 1: a ready template is reused only if the head its marker records is
    the migrations' head; otherwise the fingerprint missed an input, and cloning it would run
    the tests on an old schema. One line names the fix; --rebuild replaces it."""
    built = make_databases().ensure_template()
    row = pg_database_row(server, built.name)
    assert row is not None
    marker = owned_marker(built.name, row["comment"], base_name)
    assert marker is not None and marker.head == "0002"
    with Admin(server) as admin:  # what a template built from an older chain records
        admin.set_comment(built.name, replace(marker, head="0001").to_comment())
    with pytest.raises(TemplateBuildError) as info:
        make_databases().ensure_template()
    message = str(info.value)
    assert "\n" not in message
    assert "built at revision 0001, but the migrations' head is 0002" in message
    assert "testdb prepare-template --rebuild" in message
    assert pg_database_row(server, built.name)["oid"] == row["oid"]  # type: ignore[index]
    rebuilt = make_databases().ensure_template(rebuild=True)
    assert rebuilt.built and rebuilt.name == built.name
    fresh = owned_marker(built.name, pg_database_row(server, built.name)["comment"], base_name)  # type: ignore[index]
    assert fresh is not None and fresh.head == "0002"
    assert make_databases().ensure_template().action == "reused"


@scram_only
def test_seeded_template_records_its_head(
    make_databases: MakeDatabases, tmp_path: Path, server: URL, base_name: str
) -> None:
    """A seeded chain has no extend chain, but its marker still records the head, so the reuse
    check covers it too (trust round 4, item 1)."""
    project = seeded_project(tmp_path / "seeded", "INSERT INTO accounts (name) VALUES ('fees');")
    result = make_databases(project).ensure_template()
    row = pg_database_row(server, result.name)
    marker = owned_marker(result.name, row["comment"] if row else None, base_name)
    assert marker is not None and marker.head == "0002" and marker.chain is None


# -- failures -------------------------------------------------------------------------------------


def test_failing_migration_names_revision_and_leaves_no_database(
    make_databases: MakeDatabases, tiny_project: Path, server: URL, base_name: str
) -> None:
    add_revision(
        tiny_project,
        "0003_broken.py",
        "0003",
        "0002",
        'raise RuntimeError("ledger column missing")',
    )
    with pytest.raises(MigrationError) as info:
        make_databases().ensure_template()
    error = info.value
    assert error.revision == "0003"
    assert "revision 0003 (0003_broken.py)" in str(error)
    assert "ledger column missing" in str(error)
    assert "no template was created" in str(error)
    assert "Traceback" in error.details and "0003_broken.py" in error.details
    assert database_names(server, base_name) == set()  # neither template nor scratch


@scram_only
def test_failing_sql_in_migration_names_revision(
    make_databases: MakeDatabases, tiny_project: Path
) -> None:
    add_revision(
        tiny_project,
        "0003_bad_sql.py",
        "0003",
        "0002",
        'op.execute("ALTER TABLE no_such_table ADD COLUMN x int")',
    )
    with pytest.raises(MigrationError, match=r"revision 0003.*no_such_table") as info:
        make_databases().ensure_template()
    assert info.value.revision == "0003"


@scram_only
def test_failure_in_first_revision_is_named(
    make_databases: MakeDatabases, tiny_project: Path
) -> None:
    path = tiny_project / "migrations" / "versions" / "0001_accounts.py"
    path.write_text(path.read_text().replace('op.execute("INSERT', 'op.execute("INSERTX'))
    with pytest.raises(MigrationError) as info:
        make_databases().ensure_template()
    assert info.value.revision == "0001"


@scram_only
def test_after_a_failed_build_a_fixed_chain_builds(
    make_databases: MakeDatabases, tiny_project: Path
) -> None:
    add_revision(tiny_project, "0003_broken.py", "0003", "0002", 'raise RuntimeError("x")')
    with pytest.raises(MigrationError):
        make_databases().ensure_template()
    add_revision(tiny_project, "0003_broken.py", "0003", "0002", "pass")
    assert make_databases().ensure_template().built


@scram_only
def test_interrupted_build_leftover_is_replaced(
    make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    databases = make_databases()
    scratch = databases.naming.scratch(databases.fingerprint)
    leftover = Marker(
        role=ROLE_SCRATCH,
        base=base_name,
        namespace="",
        fingerprint=databases.fingerprint,
        created_at=utc_now(),
    )
    with Admin(server) as admin:
        admin.create_database(scratch, comment=leftover.to_comment())
    result = databases.ensure_template()
    assert result.built
    assert database_names(server, base_name) == {result.name}


@scram_only
def test_unmarked_database_on_template_name_is_left_alone(
    make_databases: MakeDatabases, server: URL, base_name: str
) -> None:
    databases = make_databases()
    squatter = databases.template_name
    with Admin(server) as admin:
        admin.create_database(squatter, comment="someone else's database")
    with pytest.raises(NotManagedDatabase, match="not created by testdb"):
        databases.ensure_template()
    row = pg_database_row(server, squatter)
    assert row is not None and row["comment"] == "someone else's database"


def test_session_left_open_on_scratch_is_terminated_before_freezing(
    base_url: URL, tiny_project: Path, server: URL
) -> None:
    """A build step that leaks a connection to the scratch database must not block the rename."""
    leaked: list[psycopg.Connection[Any]] = []

    def leak(url: URL) -> None:
        leaked.append(psycopg.connect(autocommit=True, **psycopg_connect_kwargs(url)))

    databases, _ = counted(base_url, tiny_project, after=leak)
    try:
        result = databases.ensure_template()
        assert result.built
        row = pg_database_row(server, result.name)
        assert row is not None and row["is_template"] and not row["allow_connections"]
        with pytest.raises(psycopg.OperationalError):
            leaked[0].execute("SELECT 1")
    finally:
        for conn in leaked:
            conn.close()


@scram_only
def test_concurrent_builders_build_exactly_once(
    base_url: URL, tiny_project: Path, server: URL, base_name: str
) -> None:
    managers = [counted(base_url, tiny_project) for _ in range(3)]
    results: list[Any] = [None] * len(managers)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(managers))

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = managers[i][0].ensure_template()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(managers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(r.built for r in results) == 1
    assert sum(m.calls for _, m in managers) == 1
    assert len({r.name for r in results}) == 1
    assert database_names(server, base_name) == {results[0].name}


# -- seed -----------------------------------------------------------------------------------------


def seeded_project(root: Path, sql: str) -> Path:
    write_tiny_project(root, pyproject_extra='seed = ["seed/*.sql"]\n')
    (root / "seed").mkdir(exist_ok=True)
    (root / "seed" / "10_accounts.sql").write_text(sql)
    return root


@scram_only
def test_seed_sql_rows_are_in_clones(make_databases: MakeDatabases, tmp_path: Path) -> None:
    project = seeded_project(
        tmp_path / "seeded", "INSERT INTO accounts (name) VALUES ('fees'), ('tax');"
    )
    databases = make_databases(project)
    databases.ensure_template()
    clone = databases.clone_for_worker("gw1")
    with psycopg.connect(**psycopg_connect_kwargs(clone.url)) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM accounts")}
    assert names == {"cash", "bank", "fees", "tax"}


@scram_only
def test_failing_seed_leaves_no_template(
    make_databases: MakeDatabases, tmp_path: Path, server: URL, base_name: str
) -> None:
    project = seeded_project(tmp_path / "seeded", "INSERT INTO no_such_table VALUES (1);")
    with pytest.raises(TemplateBuildError, match=r"seed failed.*no_such_table"):
        make_databases(project).ensure_template()
    assert database_names(server, base_name) == set()


# -- drivers --------------------------------------------------------------------------------------


@scram_only
def test_async_driver_url_builds_and_clone_keeps_the_driver(
    base_url: URL, tiny_project: Path, server: URL
) -> None:
    pytest.importorskip("asyncpg")
    settings = resolve_settings(
        {"url": render_for_driver(base_url.set(drivername="postgresql+asyncpg"))},
        cwd=tiny_project,
        environ={},
    )
    databases = ProjectDatabases.from_settings(settings)
    assert databases.ensure_template().built
    clone = databases.clone_for_worker("gw0")
    assert clone.url_string.startswith("postgresql+asyncpg://")
    assert clone.sync_url.startswith("postgresql+psycopg://")
    assert clone.url.password == server.password
