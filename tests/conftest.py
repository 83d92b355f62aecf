"""Shared test infrastructure: two real PostgreSQL servers and throwaway projects.

- the *trust* server: the machine's PostgreSQL (TESTDB_TEST_TRUST_URL, default 127.0.0.1:5432);
- the *scram* server: a cluster started here through the embedded-server module, enforcing
  scram-sha-256 with `SPECIAL_PASSWORD`, which holds every URL special character. It is shared by all
  xdist workers (the module's file lock makes concurrent starts end with one server), and by
  concurrent runs of the suite: each worker holds it as a test run holds the embedded server (the
  server-in-use advisory lock), and the run that finishes last stops it (`pytest_unconfigure`).

A test that starts an embedded server must stop it; one left running for a project under this run's
temporary directory is stopped and its data removed at the end, and the summary names it.

Every test uses its own base name, and `server_cleanup` drops whatever databases with that prefix
the test left, so tests never see each other's databases, serially or under `-n auto`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from finreport_testdb.core.admin import Admin
from finreport_testdb.core.ownership import SERVER_HOLD_LABEL, Claims, session_label
from finreport_testdb.core.settings import ENV_VARS as SETTINGS_ENV_VARS
from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import (
    psycopg_connect_kwargs,
    render_for_driver,
    with_application_name,
)
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.embedded import EmbeddedServer, default_cache_dir
from finreport_testdb.errors import FinreportTestdbError
from finreport_testdb.plugin.state import run_label

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


#: The `testdb` console script of this interpreter's environment.
TESTDB = str(Path(sys.executable).with_name("testdb"))
#: Every variable the settings read: cleared so the developer's environment never leaks in.
ENV_VARS = tuple(var for names in SETTINGS_ENV_VARS.values() for var in names)


def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def run_testdb(
    args: list[str], cwd: Path, url: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """The console script as a user's shell runs it, with no setting but `TESTDB_URL=url`."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(TESTDB_URL=url, **extra_env)
    return subprocess.run(
        [TESTDB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


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
def scram_server(pytestconfig: pytest.Config) -> Iterator[URL]:
    """A real server that enforces scram-sha-256 with a password full of URL special characters.

    Held for this worker's session like a run holds the embedded server, so a concurrent run of
    the suite that finishes first leaves it running (`pytest_unconfigure`)."""
    server = EmbeddedServer(SCRAM_CACHE, password=SPECIAL_PASSWORD)
    deadline = time.monotonic() + 60
    while True:
        info = server.start()
        try:
            holder = Admin(with_application_name(info.url, run_label(pytestconfig)))
            Claims().hold_server(holder)
            break
        except FinreportTestdbError:  # another run stopped it between our start and our hold
            if time.monotonic() > deadline:
                raise
    yield info.url
    holder.close()


_LABEL_PID = re.compile(r" pid (\d+)\b")


def _used_by_a_live_process(label: str) -> bool:
    """Whether a session holding the scram server belongs to a process still running, other than
    this one (our own leftovers end with us); the labels name their process."""
    match = _LABEL_PID.search(label)
    if match is None:
        return True
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _stop_scram_server_unless_used() -> None:
    """The run that finishes last stops the shared scram server: stopped unless a session of a
    live process (another run of the suite) holds it. Holders of our own exited workers are
    waited for: the server notices their closed sockets within milliseconds."""
    server = EmbeddedServer(SCRAM_CACHE, password=SPECIAL_PASSWORD)
    try:
        info = server.status()
    except FinreportTestdbError:
        return
    if info is None:
        return
    label = session_label(f"suite end pid {os.getpid()}")
    with Admin(with_application_name(info.url, label)) as admin:
        deadline = time.monotonic() + 10
        while True:
            holders = admin.lock_holders(SERVER_HOLD_LABEL)
            if any(_used_by_a_live_process(label) for label in holders):
                return
            if not holders or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # exited processes' sessions ending; polled with a deadline
        if not admin.try_advisory_lock(SERVER_HOLD_LABEL):
            return
        server.stop()


def _stop_servers_tests_left(basetemp: Path) -> list[str]:
    """Stop (and remove the data of) every embedded server started for a project under this
    run's temporary directory: each belongs to one test, which should have stopped it."""
    if os.environ.get("TESTDB_CACHE_DIR", "").strip():
        return []  # every project would map to that one directory
    found = []
    for directory, _dirnames, _filenames in os.walk(basetemp):
        cache = default_cache_dir(Path(directory))
        if not cache.is_dir():
            continue
        server = EmbeddedServer(cache)
        where = f"{cache} (project {directory})"
        try:
            running = server.stop()
            server.purge()
        except FinreportTestdbError as exc:
            found.append(f"a test left one in {where}, which could not be removed: {exc}")
        else:
            found.append(
                f"a test left one running in {where}: stopped it and removed its data"
                if running
                else f"a test left the data of one in {where}: removed it"
            )
    return found


_LEFT_RUNNING = pytest.StashKey[list[str]]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not hasattr(config, "workerinput"):  # the controller, or a serial run: after all tests
        basetemp = config._tmp_path_factory.getbasetemp()
        config.stash[_LEFT_RUNNING] = _stop_servers_tests_left(basetemp)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for line in config.stash.get(_LEFT_RUNNING, []):
        terminalreporter.write_line(f"tests/conftest.py: embedded server: {line}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # xdist's workers have exited by now
        _stop_scram_server_unless_used()


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
