"""Any env.py builds the template (issue 9 items 3-5), and every build is verified.

Four env.py shapes users have: the stock `alembic init` (sync) and `alembic init -t async` files, the
cookbook one that uses `config.attributes["connection"]`, and one that reads `DATABASE_URL` (app
settings). The chain ends with a migration that needs `autocommit_block()` (`CREATE INDEX
CONCURRENTLY`), which cannot run inside a transaction. Each shape builds with a sync and an async
configured driver, on the trust and the scram server (password full of URL special characters).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg
import pytest
from conftest import write_tiny_project
from sqlalchemy.engine import URL

from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.errors import TemplateBuildError

STOCK_SYNC = """
    from alembic import context
    from sqlalchemy import engine_from_config, pool

    config = context.config
    target_metadata = None


    def run_migrations_online() -> None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        with connectable.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()


    run_migrations_online()
"""

STOCK_ASYNC = """
    import asyncio
    import os

    from alembic import context
    from sqlalchemy import pool
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import async_engine_from_config

    config = context.config
    target_metadata = None
    if os.environ.get("ENV_READS_DATABASE_URL"):  # the app-settings shape
        config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))


    def do_run_migrations(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


    async def run_async_migrations() -> None:
        connectable = async_engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        async with connectable.connect() as connection:
            await connection.run_sync(do_run_migrations)
        await connectable.dispose()


    def run_migrations_online() -> None:
        asyncio.run(run_async_migrations())


    run_migrations_online()
"""

COOKBOOK_CONNECTION = """
    from alembic import context

    config = context.config
    connection = config.attributes["connection"]  # this shape works only with a shared connection
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

#: Migrates whatever OTHER_DB_URL names: the env.py that would leave the template empty.
WRONG_DATABASE = """
    import os

    from alembic import context
    from sqlalchemy import create_engine, pool

    engine = create_engine(os.environ["OTHER_DB_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
"""

CONCURRENT_INDEX = '''
    """an index built concurrently: needs autocommit_block()"""
    from alembic import op

    revision = "0003"
    down_revision = "0002"


    def upgrade():
        with op.get_context().autocommit_block():
            op.execute("CREATE INDEX CONCURRENTLY ix_entries_amount ON entries (amount)")


    def downgrade():
        op.execute("DROP INDEX ix_entries_amount")
'''

SHAPES = {
    "stock-sync": (STOCK_SYNC, False),
    "stock-async": (STOCK_ASYNC, False),
    "attributes-connection": (COOKBOOK_CONNECTION, False),
    "reads-database-url": (STOCK_ASYNC, True),
}


def project_with_env(root: Path, env_py: str, *, export: bool) -> Path:
    write_tiny_project(root, pyproject_extra='export_url_as = ["DATABASE_URL"]\n' if export else "")
    (root / "migrations" / "env.py").write_text(textwrap.dedent(env_py))
    (root / "migrations" / "versions" / "0003_concurrent_index.py").write_text(
        textwrap.dedent(CONCURRENT_INDEX)
    )
    return root


def databases_for(project: Path, base_url: URL, driver: str) -> ProjectDatabases:
    url = base_url.set(drivername=f"postgresql+{driver}")
    settings = resolve_settings({"url": render_for_driver(url)}, cwd=project, environ={})
    return ProjectDatabases.from_settings(settings)


def index_exists(url: URL, database: str) -> bool:
    with psycopg.connect(**psycopg_connect_kwargs(url, database=database)) as conn:
        row = conn.execute("SELECT to_regclass('ix_entries_amount') IS NOT NULL").fetchone()
        return bool(row and row[0])


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("server", ["scram"], indirect=True)  # the password must survive env.py
def test_every_env_py_shape_builds_with_autocommit_block(
    tmp_path: Path,
    base_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    shape: str,
    driver: str,
) -> None:
    env_py, reads_env = SHAPES[shape]
    if reads_env:
        monkeypatch.setenv("ENV_READS_DATABASE_URL", "1")
        monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://wrong@127.0.0.1:1/not_this_one")
    project = project_with_env(tmp_path / "project", env_py, export=reads_env)
    with databases_for(project, base_url, driver) as databases:
        template = databases.ensure_template()
        assert template.built
        worker = databases.clone_for_worker("gw0")
    assert index_exists(base_url, worker.name)
    if reads_env:  # the build exported the scratch URL only while env.py ran
        import os

        assert os.environ["DATABASE_URL"] == "postgresql+asyncpg://wrong@127.0.0.1:1/not_this_one"


def test_build_that_migrated_another_database_fails_naming_it(
    tmp_path: Path, base_url: URL, base_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9 item 5: env.py migrated the database in its own variable; the template would have
    been empty and reported "built". Now the build fails, names that database and the fix."""
    other = f"{base_name}_other"
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(base_url, database="postgres")
    ) as conn:
        conn.execute(f'CREATE DATABASE "{other}"')
    monkeypatch.setenv(
        "OTHER_DB_URL",
        render_for_driver(base_url.set(drivername="postgresql+psycopg", database=other)),
    )
    project = project_with_env(tmp_path / "project", WRONG_DATABASE, export=False)
    with databases_for(project, base_url, "psycopg") as databases:
        with pytest.raises(TemplateBuildError) as raised:
            databases.ensure_template()
        message = str(raised.value)
        assert f"env.py connected to database '{other}'" in message
        assert "without an alembic_version table" in message
        assert "export_url_as" in message and "sqlalchemy.url" in message
        managed, _ = databases.managed_databases()
        assert managed == []  # no template, no scratch database left
    if base_url.password:
        assert str(base_url.password) not in message
    assert index_exists(base_url, other)  # the migrations really went there
