"""Shared test infrastructure: two real PostgreSQL servers and throwaway projects.

- the *trust* server: the machine's PostgreSQL (TESTDB_TEST_TRUST_URL, default 127.0.0.1:5432);
- the *scram* server: a cluster started here through the embedded-server module, enforcing
  scram-sha-256 with `SPECIAL_PASSWORD`, which holds every URL special character. It is shared by all
  xdist workers (the module's file lock makes concurrent starts end with one server) and left running
  for the next run, like the embedded server users get.

Every test uses its own base name, and `server_cleanup` drops whatever databases with that prefix
the test left, so tests never see each other's databases, serially or under `-n auto`.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from finreport_testdb.embedded_server import EmbeddedServer
from finreport_testdb.manager import ProjectDatabases
from finreport_testdb.settings import resolve_settings
from finreport_testdb.urls import psycopg_connect_kwargs, render_for_driver

REPO_ROOT = Path(__file__).resolve().parent.parent
SPECIAL_PASSWORD = "p@ss:w/rd%25#?&=+ 'q\"x"
TRUST_URL = os.environ.get(
    "TESTDB_TEST_TRUST_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SCRAM_CACHE = Path(
    os.environ.get("TESTDB_TEST_SCRAM_DIR", f"/dev/shm/finreport-testdb-scram-{os.getuid()}")
)

#: A migration chain small enough that a template builds in well under a second.
TINY_REVISIONS = {
    "0001_accounts.py": '''
        """accounts"""
        import sqlalchemy as sa
        from alembic import op

        revision = "0001"
        down_revision = None

        def upgrade():
            op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("name", sa.Text, nullable=False, unique=True))
            op.execute("INSERT INTO accounts (name) VALUES ('cash'), ('bank')")

        def downgrade():
            op.drop_table("accounts")
    ''',
    "0002_entries.py": '''
        """entries"""
        import sqlalchemy as sa
        from alembic import op

        revision = "0002"
        down_revision = "0001"

        def upgrade():
            op.create_table("entries", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id")),
                            sa.Column("amount", sa.Numeric(12, 2), nullable=False))

        def downgrade():
            op.drop_table("entries")
    ''',
}

TINY_ENV = """
    from alembic import context
    from sqlalchemy import engine_from_config, pool

    config = context.config

    def run(connection):
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
    else:
        engine = engine_from_config(config.get_section(config.config_ini_section),
                                    prefix="sqlalchemy.", poolclass=pool.NullPool)
        with engine.begin() as conn:
            run(conn)
"""


def write_tiny_project(root: Path, *, pyproject_extra: str = "") -> Path:
    """A throwaway project: pyproject.toml, alembic.ini and a two-revision chain."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "env.py").write_text(textwrap.dedent(TINY_ENV))
    for name, body in TINY_REVISIONS.items():
        (versions / name).write_text(textwrap.dedent(body))
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url =\n"
    )
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "tiny"\nversion = "0"\n\n[tool.testdb]\n{pyproject_extra}'
    )
    return root


def drop_databases_with_prefix(server: URL, prefix: str) -> list[str]:
    """Test-harness cleanup: drop every database named `prefix...` (ours, made by this test)."""
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database="postgres")
    ) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
            )
        ]
        for name in names:
            conn.execute(
                sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    return names


def database_names(server: URL, prefix: str) -> set[str]:
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database="postgres")
    ) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
            )
        }


@pytest.fixture(scope="session")
def trust_server() -> URL:
    url = make_url(TRUST_URL)
    try:
        psycopg.connect(**psycopg_connect_kwargs(url)).close()
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"the trust test server {url.host}:{url.port} is not reachable ({exc}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect 15 main start` or set TESTDB_TEST_TRUST_URL"
        )
    return url


@pytest.fixture(scope="session")
def scram_server() -> URL:
    """A real server that enforces scram-sha-256 with a password full of URL special characters."""
    info = EmbeddedServer(SCRAM_CACHE, password=SPECIAL_PASSWORD).start()
    return info.url


@pytest.fixture(params=["trust", "scram"])
def server(request: pytest.FixtureRequest) -> URL:
    """Each test using this runs twice: against the trust server and the scram server."""
    return request.getfixturevalue(f"{request.param}_server")  # type: ignore[no-any-return]


@pytest.fixture
def base_name(request: pytest.FixtureRequest) -> str:
    return f"frt_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def server_cleanup(server: URL, base_name: str) -> Iterator[None]:
    yield
    drop_databases_with_prefix(server, base_name)


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return write_tiny_project(tmp_path / "project")


@pytest.fixture
def base_url(server: URL, base_name: str, server_cleanup: None) -> URL:
    """URL of the test's base database on the parametrized server (dropped-with-prefix after)."""
    return server.set(database=base_name)


@pytest.fixture
def make_databases(base_url: URL, tiny_project: Path) -> Iterator[Callable[..., ProjectDatabases]]:
    """Factory: a `ProjectDatabases` for the tiny project on the test's server and base name
    (each closed, with its admin connection, after the test)."""
    made: list[ProjectDatabases] = []

    def make(project: Path | None = None, **overrides: object) -> ProjectDatabases:
        settings = resolve_settings(
            {"url": render_for_driver(base_url), **overrides},
            cwd=project or tiny_project,
            environ={},
        )
        made.append(ProjectDatabases.from_settings(settings))
        return made[-1]

    yield make
    for databases in made:
        databases.close()
