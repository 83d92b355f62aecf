"""The pytest plugin end to end: real PostgreSQL, real pytest-xdist, inner sessions via `pytester`.

Every outer test writes a throwaway project (the tiny two-revision chain from conftest plus a third
revision that appends a line to a build log, so we can count template builds and see which process
ran them), runs pytest in it, and asserts on the output (header and summary lines), on what the inner
tests recorded (`record(...)` writes one JSON file per test) and on the databases left on the server.

Serial inner runs go in-process (fast); xdist runs, runs whose exit code or stderr matter, and runs
with pytest-cov go through a subprocess. The URL reaches the inner session through TESTDB_URL, so a
password full of URL special characters never has to be escaped into TOML.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

# In-process inner sessions drop the modules they imported when they end. Re-importing SQLAlchemy's
# PostgreSQL dialects in the next inner session would warn (its function registry is global), and
# re-importing asyncpg's compiled extension modules can crash the interpreter. Importing them here,
# in the outer process, keeps them loaded across inner sessions.
import asyncpg  # noqa: F401
import greenlet  # noqa: F401
import psycopg
import pytest
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.postgresql.psycopg
import sqlalchemy.ext.asyncio  # noqa: F401
from conftest import (
    SPECIAL_PASSWORD,
    database_names,
    drop_databases_with_prefix,
    write_tiny_project,
)
from sqlalchemy.engine import URL

from finreport_testdb.core.settings import ENV_VARS
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver

# --------------------------------------------------------------------------- inner project pieces

#: A third revision whose only effect is a line in $TESTDB_TEST_BUILD_LOG: one line per build.
BUILD_LOG_REVISION = '''
    """build log: records which process migrated (i.e. built a template)"""
    import os

    revision = "0003"
    down_revision = "0002"

    def upgrade():
        path = os.environ.get("TESTDB_TEST_BUILD_LOG")
        if path:
            with open(path, "a") as log:
                log.write(f"{os.getpid()}\\n")

    def downgrade():
        pass
'''

INNER_CONFTEST = '''
    import json
    import os
    import re
    from pathlib import Path

    import pytest


    @pytest.fixture(autouse=True)
    def record(request):
        """After each test write $TESTDB_TEST_RECORDS/<test>.json for the outer test: the worker, the
        pid, the worker database's name if the test used it, and whatever the test passed here."""
        workerinput = getattr(request.config, "workerinput", None)
        data = {
            "worker": workerinput["workerid"] if workerinput else "master",
            "pid": os.getpid(),
            "test": request.node.name,
        }
        yield data.update
        if "test_database" in request.fixturenames:
            data["name"] = request.getfixturevalue("test_database").name
        name = re.sub(r"[^A-Za-z0-9]+", "_", request.node.nodeid)
        (Path(os.environ["TESTDB_TEST_RECORDS"]) / f"{name}.json").write_text(json.dumps(data))
'''

#: Where am I? Many small tests so that every xdist worker gets some.
INNER_SPREAD = """
    import pytest
    from sqlalchemy import text


    @pytest.mark.parametrize("i", range(4))
    def test_where_am_i(i, test_database, db_session, record):
        current = db_session.execute(text("SELECT current_database()")).scalar()
        accounts = db_session.execute(text("SELECT count(*) FROM accounts")).scalar()
        record(name=test_database.name, current=current, accounts=accounts)
        assert current == test_database.name
"""

#: The isolation fixtures; file order matters (run serially or with --dist loadfile).
INNER_BEHAVIOUR = '''
    import pytest
    from sqlalchemy import create_engine, text


    def count(connection, where="true"):
        return connection.execute(text(f"SELECT count(*) FROM accounts WHERE {where}")).scalar()


    def test_worker_database_url_connects(test_database, test_database_url, db_engine, record):
        engine = create_engine(test_database_url)  # what an app's settings would receive
        with engine.connect() as connection:
            via_url = connection.execute(text("SELECT current_database()")).scalar()
        engine.dispose()
        with db_engine.connect() as connection:
            current = connection.execute(text("SELECT current_database()")).scalar()
        record(
            name=test_database.name,
            current=current,
            via_url=via_url,
            masked="***" in test_database_url,
            driver=test_database_url.split("://")[0],
        )
        assert via_url == current == test_database.name


    def test_commit_in_db_session_is_real_and_undone_1(db_session, db_engine):
        db_session.execute(text("INSERT INTO accounts (name) VALUES ('committed-in-session')"))
        db_session.commit()  # a real COMMIT: every connection sees it
        with db_engine.connect() as other:
            assert count(other) == 3


    def test_commit_in_db_session_is_real_and_undone_2(db_session):
        assert count(db_session) == 2


    @pytest.mark.testdb(isolation="rollback")
    def test_commit_in_db_session_under_rollback_is_a_savepoint(db_session, db_engine):
        db_session.execute(text("INSERT INTO accounts (name) VALUES ('committed-in-session')"))
        db_session.commit()  # only a SAVEPOINT is released
        assert count(db_session) == 3
        with db_engine.connect() as other:  # another connection never sees it
            assert count(other) == 2


    def make_app(session_factory):
        """A FastAPI-style app: it opens (and commits) its own sessions from a factory."""

        def create_account(name):
            with session_factory() as session, session.begin():
                session.execute(text("INSERT INTO accounts (name) VALUES (:n)"), {"n": name})

        return create_account


    def test_sessionmaker_commits_are_seen_by_the_test_1(db_sessionmaker, db_session):
        create_account = make_app(db_sessionmaker)
        create_account("via-app")
        create_account("via-app-2")
        assert count(db_session, "name LIKE 'via-app%'") == 2


    def test_sessionmaker_commits_are_seen_by_the_test_2(db_session):
        assert count(db_session, "name LIKE 'via-app%'") == 0


    def test_fresh_database_commits_are_visible(fresh_database, test_database, record):
        writer = create_engine(fresh_database.url_string)
        reader = create_engine(fresh_database.url_string)
        with writer.begin() as connection:
            connection.execute(text("INSERT INTO accounts (name) VALUES ('really-committed')"))
        with reader.connect() as connection:
            seen = count(connection, "name = 'really-committed'")
        writer.dispose()
        reader.dispose()
        record(fresh=fresh_database.name, seen=seen)
        assert seen == 1
        assert fresh_database.name != test_database.name
'''

INNER_FRESH_FAILURES = """
    import pytest


    def test_fresh_passes(fresh_database, record):
        record(fresh=fresh_database.name)


    def test_fresh_fails(fresh_database, record):
        record(fresh=fresh_database.name)
        assert fresh_database.name == "something else", "intended failure"


    @pytest.fixture
    def broken_setup(fresh_database, record):
        record(fresh=fresh_database.name)
        raise RuntimeError("intended setup failure")


    def test_fresh_setup_fails(fresh_database, broken_setup):
        pass
"""

INNER_ASYNC = """
    import pytest
    from sqlalchemy import text


    async def count(connection, where="true"):
        result = await connection.execute(text(f"SELECT count(*) FROM accounts WHERE {where}"))
        return result.scalar()


    async def test_async_engine(async_db_engine, test_database, test_database_url, record):
        async with async_db_engine.connect() as connection:
            current = (await connection.execute(text("SELECT current_database()"))).scalar()
        record(
            current=current,
            engine_driver=async_db_engine.dialect.driver,
            configured=test_database_url.split("://")[0],
        )
        assert current == test_database.name


    async def test_async_session_commit_is_real_and_undone_1(async_db_session, async_db_engine):
        await async_db_session.execute(text("INSERT INTO accounts (name) VALUES ('async')"))
        await async_db_session.commit()
        async with async_db_engine.connect() as other:  # NullPool: a new connection, this loop
            assert await count(other) == 3


    async def test_async_session_commit_is_real_and_undone_2(async_db_session):
        assert await count(async_db_session) == 2


    @pytest.mark.testdb(isolation="rollback")
    async def test_async_session_commit_under_rollback_is_a_savepoint(
        async_db_session, async_db_engine
    ):
        await async_db_session.execute(text("INSERT INTO accounts (name) VALUES ('async')"))
        await async_db_session.commit()
        assert await count(async_db_session) == 3
        async with async_db_engine.connect() as other:
            assert await count(other) == 2


    async def test_async_sessionmaker_joins(async_db_sessionmaker, async_db_session):
        async with async_db_sessionmaker() as session, session.begin():
            await session.execute(text("INSERT INTO accounts (name) VALUES ('async-app')"))
        assert await count(async_db_session, "name = 'async-app'") == 1


    async def test_async_engine_again_in_another_test(async_db_engine):
        async with async_db_engine.connect() as connection:
            assert await count(connection) == 2


    def test_sync_twin_next_to_async(db_session):
        assert count is not None
        assert db_session.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
"""

HEADER_RE = (
    r"^testdb: template {base}_tpl_(?P<fp>[0-9a-f]{{12}}) \(fingerprint (?P=fp)\) "
    r"(?P<action>built|reused) in \d+\.\d\d s on postgresql\+\w+://"
)


# --------------------------------------------------------------------------- harness


@dataclass
class Project:
    pytester: pytest.Pytester
    server: URL
    base: str
    records: Path
    build_log: Path

    def url(self, driver: str = "psycopg") -> URL:
        return self.server.set(drivername=f"postgresql+{driver}", database=self.base)

    def write(self, **files: str) -> None:
        for name, body in files.items():
            filename = name if "." in name else f"{name}.py"
            (self.pytester.path / filename).write_text(textwrap.dedent(body))

    def run(self, *args: str, subprocess: bool = False) -> pytest.RunResult:
        for old in self.records.iterdir():
            old.unlink()
        args = ("-p", "no:cacheprovider", *args)
        if subprocess:
            return self.pytester.runpytest_subprocess(*args, timeout=180)
        return self.pytester.runpytest_inprocess(*args)

    def recorded(self) -> list[dict[str, Any]]:
        return [json.loads(path.read_text()) for path in sorted(self.records.iterdir())]

    def builds(self) -> list[str]:
        return self.build_log.read_text().split() if self.build_log.exists() else []

    def databases(self) -> set[str]:
        return database_names(self.server, self.base)

    def templates(self) -> set[str]:
        return {name for name in self.databases() if name.startswith(f"{self.base}_tpl_")}

    def headers(self, result: pytest.RunResult) -> list[re.Match[str]]:
        pattern = re.compile(HEADER_RE.format(base=re.escape(self.base)))
        return [m for line in result.outlines if (m := pattern.match(line))]

    def testdb_lines(self, result: pytest.RunResult) -> list[str]:
        return [line for line in result.outlines + result.errlines if "testdb:" in line]

    def summary(self, result: pytest.RunResult) -> str:
        lines = [line for line in result.outlines if re.match(r"^testdb: (master|gw\d+) ", line)]
        assert len(lines) == 1, result.outlines
        return lines[0]


@pytest.fixture
def make_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, base_name: str
) -> Iterator[Callable[..., Project]]:
    """Factory: a tiny project on the given server, configured through TESTDB_URL."""
    used: list[URL] = []
    for variables in ENV_VARS.values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the fallback URL; never the outer one's

    def make(server: URL, *, driver: str = "psycopg", env_url: bool = True) -> Project:
        used.append(server)
        write_tiny_project(
            pytester.path,
            pyproject_extra=(
                "\n[tool.pytest.ini_options]\n"
                'asyncio_mode = "auto"\n'
                'asyncio_default_fixture_loop_scope = "function"\n'
            ),
        )
        (pytester.path / "migrations" / "versions" / "0003_build_log.py").write_text(
            textwrap.dedent(BUILD_LOG_REVISION)
        )
        project = Project(
            pytester, server, base_name, pytester.path / "records", pytester.path / "builds.log"
        )
        project.records.mkdir()
        project.write(**{"conftest.py": INNER_CONFTEST})
        monkeypatch.setenv("TESTDB_TEST_RECORDS", str(project.records))
        monkeypatch.setenv("TESTDB_TEST_BUILD_LOG", str(project.build_log))
        if env_url:
            monkeypatch.setenv("TESTDB_URL", render_for_driver(project.url(driver)))
        return project

    yield make
    for server in used:
        drop_databases_with_prefix(server, base_name)


def password_variants() -> set[str]:
    return {SPECIAL_PASSWORD, quote(SPECIAL_PASSWORD, safe=""), quote_plus(SPECIAL_PASSWORD)}


def assert_no_password(result: pytest.RunResult) -> None:
    output = result.stdout.str() + result.stderr.str()
    for variant in password_variants():
        assert variant not in output


def execute(url: URL, database: str, query: str) -> None:
    with psycopg.connect(autocommit=True, **psycopg_connect_kwargs(url, database=database)) as c:
        c.execute(query)


# --------------------------------------------------------------------------- serial runs


@pytest.mark.parametrize("server_kind", ["trust", "scram"])
def test_serial_run_isolation_and_cleanup(
    make_project: Callable[..., Project],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    server_kind: str,
) -> None:
    server: URL = request.getfixturevalue(f"{server_kind}_server")
    project = make_project(server)
    project.write(test_behaviour=INNER_BEHAVIOUR)
    # The outer run may be an xdist worker; the inner serial run must not take its id from the env.
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")

    result = project.run()

    result.assert_outcomes(passed=7)
    (header,) = project.headers(result)
    assert header["action"] == "built"
    template = f"{project.base}_tpl_{header['fp']}"
    assert re.fullmatch(
        rf"testdb: master cloned {project.base}_serial in \d+ ms; dropped at session end",
        project.summary(result),
    )
    (seen,) = (r for r in project.recorded() if r["test"] == "test_worker_database_url_connects")
    assert seen["worker"] == "master"
    assert seen["name"] == seen["current"] == seen["via_url"] == f"{project.base}_serial"
    assert seen["masked"] is False  # the password reaches the app intact
    assert seen["driver"] == "postgresql+psycopg"
    (fresh,) = (r for r in project.recorded() if "fresh" in r)
    assert re.fullmatch(rf"{project.base}_master_t\d+", fresh["fresh"])
    # Afterwards: the serial database and the passing test's fresh database are gone.
    assert project.databases() == {template}
    assert project.builds() == [str(os.getpid())]  # in-process: the controller is this process
    assert_no_password(result)
    if server_kind == "scram":
        assert ":***@" in header.string


def test_keep_then_plain_run_drops(make_project: Callable[..., Project], scram_server: URL) -> None:
    project = make_project(scram_server)
    project.write(test_spread=INNER_SPREAD)

    kept = project.run("--testdb-keep")
    kept.assert_outcomes(passed=4)
    assert project.summary(kept).endswith("; kept after the run (--testdb-keep)")
    assert f"{project.base}_serial" in project.databases()

    plain = project.run()
    plain.assert_outcomes(passed=4)
    assert re.fullmatch(
        rf"testdb: master cloned {project.base}_serial in \d+ ms; dropped at session end",
        project.summary(plain),
    )
    assert f"{project.base}_serial" not in project.databases()
    assert len(project.templates()) == 1


def test_changed_migration_builds_new_template_and_rebuild(
    make_project: Callable[..., Project], scram_server: URL
) -> None:
    project = make_project(scram_server)
    project.write(test_spread=INNER_SPREAD)

    first = project.run()
    (h1,) = project.headers(first)
    assert h1["action"] == "built"
    again = project.run()
    (h2,) = project.headers(again)
    assert (h2["action"], h2["fp"]) == ("reused", h1["fp"])

    revision = project.pytester.path / "migrations" / "versions" / "0002_entries.py"
    revision.write_text(
        revision.read_text().replace(
            'sa.Column("amount", sa.Numeric(12, 2), nullable=False))',
            'sa.Column("amount", sa.Numeric(12, 2), nullable=False),\n'
            '                            sa.Column("memo", sa.Text))',
        )
    )
    changed = project.run()
    changed.assert_outcomes(passed=4)
    (h3,) = project.headers(changed)
    assert h3["action"] == "built"
    assert h3["fp"] != h1["fp"]
    assert project.templates() == {
        f"{project.base}_tpl_{h1['fp']}",
        f"{project.base}_tpl_{h3['fp']}",
    }

    rebuilt = project.run("--testdb-rebuild")
    (h4,) = project.headers(rebuilt)
    assert (h4["action"], h4["fp"]) == ("built", h3["fp"])
    assert len(project.builds()) == 3  # first build, the changed chain, the forced rebuild

    # --testdb-rebuild also re-clones a database that --testdb-reuse would otherwise keep.
    project.run("--testdb-reuse").assert_outcomes(passed=4)
    reused = project.run("--testdb-reuse")
    assert " master reused " in project.summary(reused)
    rebuilt_reuse = project.run("--testdb-reuse", "--testdb-rebuild")
    assert " master cloned " in project.summary(rebuilt_reuse)
    assert project.summary(rebuilt_reuse).endswith("; kept for the next run (--testdb-reuse)")


def test_worker_id_and_settings_fixtures_can_be_overridden(
    make_project: Callable[..., Project], scram_server: URL
) -> None:
    project = make_project(scram_server)
    project.write(test_spread=INNER_SPREAD)
    with (project.pytester.path / "conftest.py").open("a") as conftest:
        conftest.write(
            textwrap.dedent(
                """

                @pytest.fixture(scope="session")
                def testdb_worker_id():
                    return "gw9"
                """
            )
        )
    result = project.run()
    result.assert_outcomes(passed=4)
    assert {r["name"] for r in project.recorded()} == {f"{project.base}_gw9"}
    assert project.summary(result).startswith(f"testdb: gw9 cloned {project.base}_gw9 in ")


def test_collect_only_and_fixture_listing_prepare_nothing(
    make_project: Callable[..., Project], scram_server: URL
) -> None:
    project = make_project(scram_server)
    project.write(test_spread=INNER_SPREAD)

    collected = project.run("--collect-only", "-q")
    assert collected.ret == 0
    fixtures = project.run("--fixtures")
    listing = fixtures.stdout.str()
    for fixture in ("fresh_database", "db_sessionmaker", "async_db_session", "testdb_settings"):
        assert f"\n{fixture} " in listing

    assert not project.testdb_lines(collected)
    assert not project.testdb_lines(fixtures)
    assert project.databases() == set()


#: The documented app shape: an engine built from DATABASE_URL when conftest.py imports the app.
#: Records the URL it got (no password: only whether there was one).
LISTED_APP = """
    import json
    import os
    from pathlib import Path

    from sqlalchemy import create_engine

    engine = create_engine(os.environ["DATABASE_URL"])  # KeyError = nothing exported
    Path(os.environ["TESTDB_TEST_RECORDS"], "app.json").write_text(json.dumps({
        "drivername": engine.url.drivername, "username": engine.url.username,
        "host": engine.url.host, "port": engine.url.port, "database": engine.url.database,
        "password": engine.url.password,
    }))
"""


def test_listing_sessions_export_the_embedded_url_without_starting_it(
    make_project: Callable[..., Project],
    trust_server: URL,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trust round 4, item 8: `pytest --collect-only` (an IDE's discovery) and `--fixtures` in
    the documented app shape on the embedded server crashed with the app's KeyError: a listing
    session exported nothing so as not to start the server. Now it exports the URL read from the
    server's cache dir (user and database; password and port once a cluster exists) and still
    starts nothing, builds nothing."""
    project = make_project(trust_server, env_url=False)  # no url anywhere: the embedded server
    cache = tmp_path / "embedded-cache"
    monkeypatch.setenv("TESTDB_CACHE_DIR", str(cache))
    project.write(app=LISTED_APP, test_spread=INNER_SPREAD)
    conftest = project.pytester.path / "conftest.py"
    conftest.write_text("import app\n" + conftest.read_text())

    collected = project.run("--collect-only", "-q")
    assert collected.ret == 0, collected.stdout.str()
    seen = json.loads((project.records / "app.json").read_text())
    assert seen == {
        "drivername": "postgresql+psycopg",
        "username": "testdb",
        "host": "127.0.0.1",
        "port": None,
        "database": "tiny_test_serial",
        "password": None,
    }
    assert project.run("--fixtures").ret == 0
    assert not cache.exists()  # no password file, no cluster: nothing was started or created

    # A cluster made by an earlier run: its password file and the port it recorded.
    (cache / "data").mkdir(parents=True, mode=0o700)
    cache.chmod(0o700)
    (cache / "password").write_text("s3cr:et")
    (cache / "password").chmod(0o600)
    (cache / "data" / "finreport_testdb.conf").write_text("port = 54321\n")
    assert project.run("--collect-only", "-q").ret == 0
    seen = json.loads((project.records / "app.json").read_text())
    assert (seen["port"], seen["password"]) == (54321, "s3cr:et")
    assert sorted(path.name for path in cache.iterdir()) == ["data", "password"]
    assert not project.testdb_lines(collected)


def test_plugin_less_project_prepares_nothing_at_start_yet_fixtures_work(
    make_project: Callable[..., Project], scram_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No [tool.testdb], no TESTDB_* variable: the session starts without touching a server; the
    fixtures still work, here with a conftest `testdb_settings` that reads the app's own variable.
    Under xdist the workers then build the template themselves, exactly once, under the lock."""
    project = make_project(scram_server, env_url=False)
    (project.pytester.path / "pyproject.toml").write_text(
        '[project]\nname = "plain"\nversion = "0"\n\n[tool.pytest.ini_options]\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
    )
    monkeypatch.setenv("MY_APP_TEST_DB", render_for_driver(project.url()))
    with (project.pytester.path / "conftest.py").open("a") as conftest:
        conftest.write(
            textwrap.dedent(
                """

                from finreport_testdb import resolve_settings


                @pytest.fixture(scope="session")
                def testdb_settings(pytestconfig):
                    return resolve_settings(
                        {"url": os.environ["MY_APP_TEST_DB"]}, cwd=pytestconfig.rootpath
                    )
                """
            )
        )
    project.write(test_spread=INNER_SPREAD)

    serial = project.run()
    serial.assert_outcomes(passed=4)
    assert not any(line.startswith("testdb: template") for line in serial.outlines)
    assert project.summary(serial).startswith(f"testdb: master cloned {project.base}_serial in ")

    (project.pytester.path / "test_more.py").write_text(
        (project.pytester.path / "test_spread.py").read_text()
    )
    for template in project.templates():  # make the workers race for a fresh build
        execute(project.server, "postgres", f'ALTER DATABASE "{template}" IS_TEMPLATE false')
        execute(project.server, "postgres", f'DROP DATABASE "{template}"')
    project.build_log.unlink()

    parallel = project.run("-n", "2", subprocess=True)
    parallel.assert_outcomes(passed=8)
    assert not any(line.startswith("testdb: template") for line in parallel.outlines)
    worker_pids = {r["pid"] for r in project.recorded()}
    assert {r["worker"] for r in project.recorded()} == {"gw0", "gw1"}
    (builder,) = project.builds()
    assert int(builder) in worker_pids  # a worker built it: nobody had prepared it
    assert len(project.templates()) == 1


def test_fixture_level_error_is_one_line(
    make_project: Callable[..., Project], trust_server: URL
) -> None:
    """In a project that has not opted in, a problem surfaces in the fixtures: every test that
    needs the database errors with the one-line `testdb:` message, not a traceback."""
    project = make_project(trust_server, env_url=False)
    (project.pytester.path / "pyproject.toml").write_text(
        '[project]\nname = "plain"\nversion = "0"\n\n[tool.pytest.ini_options]\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
    )
    with (project.pytester.path / "conftest.py").open("a") as conftest:
        conftest.write(
            textwrap.dedent(
                """

                from finreport_testdb import resolve_settings


                @pytest.fixture(scope="session")
                def testdb_settings(pytestconfig):
                    url = "postgresql+psycopg://postgres@127.0.0.1:1/frt_unreachable"
                    return resolve_settings({"url": url}, cwd=pytestconfig.rootpath)
                """
            )
        )
    project.write(test_spread=INNER_SPREAD)

    result = project.run()

    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(
        ["*ERROR at setup of test_where_am_i[[]0[]]*", "testdb: cannot connect*"]
    )
    assert "Traceback" not in result.stdout.str()
    assert "_pytest" not in result.stdout.str()


# --------------------------------------------------------------------------- xdist runs

#: Plain `-n 2` runs in most plugin tests; these add the other worker counts and schedulers, and
#: pytest-cov's own xdist hooks, two to a run.
XDIST_MODES = {
    "n4-worksteal": ("-n", "4", "--dist", "worksteal"),
    "loadfile-cov": ("-n", "2", "--dist", "loadfile", "--cov", "--cov-report=term"),
}


@pytest.mark.parametrize("mode", list(XDIST_MODES))
def test_one_database_per_worker_and_one_template_per_run(
    make_project: Callable[..., Project], scram_server: URL, mode: str
) -> None:
    args = XDIST_MODES[mode]
    workers = int(args[1])
    project = make_project(scram_server)
    spread = {f"test_spread_{letter}": INNER_SPREAD for letter in "abcd"}
    project.write(test_behaviour=INNER_BEHAVIOUR, **spread)

    result = project.run(*args, subprocess=True)

    result.assert_outcomes(passed=7 + 16)
    records = project.recorded()
    by_worker: dict[str, set[str]] = {}
    for r in records:
        by_worker.setdefault(r["worker"], set()).add(r["name"])
        assert r.get("current", r["name"]) == r["name"]
    expected = {f"gw{i}" for i in range(workers)}
    assert set(by_worker) == expected  # every worker ran tests ...
    assert by_worker == {w: {f"{project.base}_{w}"} for w in expected}  # ... on its own database

    # The template was built once, by the controller, before the workers started.
    (header,) = project.headers(result)
    assert header["action"] == "built"
    (builder,) = project.builds()
    assert int(builder) not in {r["pid"] for r in records}
    template = f"{project.base}_tpl_{header['fp']}"
    parts = ", ".join(rf"gw{i} cloned {project.base}_gw{i} in \d+ ms" for i in range(workers))
    assert re.fullmatch(rf"testdb: {parts}; dropped at session end", project.summary(result))
    assert project.databases() == {template}  # worker and fresh databases dropped
    if "--cov" in args:
        result.stdout.fnmatch_lines(["*coverage: platform*", "TOTAL*"])


def test_reuse_keeps_worker_databases_across_runs(
    make_project: Callable[..., Project], scram_server: URL
) -> None:
    project = make_project(scram_server)
    project.write(test_spread_a=INNER_SPREAD, test_spread_b=INNER_SPREAD)
    workers = {f"{project.base}_gw0", f"{project.base}_gw1"}

    first = project.run("-n", "2", "--testdb-reuse", subprocess=True)
    first.assert_outcomes(passed=8)
    assert " cloned " in project.summary(first) and " reused " not in project.summary(first)
    assert workers <= project.databases()
    for name in workers:  # committed data in a worker database survives into the next run
        execute(project.server, name, "INSERT INTO accounts (name) VALUES ('sentinel')")

    second = project.run("-n", "2", "--testdb-reuse", subprocess=True)
    second.assert_outcomes(passed=8)
    (header,) = project.headers(second)
    assert header["action"] == "reused"
    parts = ", ".join(rf"gw{i} reused {project.base}_gw{i} in \d+ ms" for i in range(2))
    assert re.fullmatch(
        rf"testdb: {parts}; kept for the next run \(--testdb-reuse\)", project.summary(second)
    )
    assert {r["accounts"] for r in project.recorded()} == {3}
    assert len(project.builds()) == 1

    third = project.run("-n", "2", subprocess=True)  # without --testdb-reuse: fresh clones, dropped
    third.assert_outcomes(passed=8)
    assert " reused " not in project.summary(third)
    assert {r["accounts"] for r in project.recorded()} == {2}
    assert not workers & project.databases()


@pytest.mark.parametrize("args", [("-n", "2"), ()], ids=["n2", "serial"])
def test_fresh_database_dropped_on_pass_kept_on_failure(
    make_project: Callable[..., Project], scram_server: URL, args: tuple[str, ...]
) -> None:
    """Against the scram server, so the masked URL and the absence of the password are real."""
    project = make_project(scram_server)
    project.write(test_fresh=INNER_FRESH_FAILURES)

    result = project.run(*args, subprocess=bool(args))

    result.assert_outcomes(passed=1, failed=1, errors=1)
    fresh = {r["test"]: r["fresh"] for r in project.recorded()}
    kept = {fresh["test_fresh_fails"], fresh["test_fresh_setup_fails"]}
    assert fresh["test_fresh_passes"] not in project.databases()
    assert kept <= project.databases()
    for name in kept:  # the failure report's "testdb" section gives the masked URL
        shown = project.url().set(database=name).render_as_string(hide_password=True)
        assert ":***@" in shown
        at = result.outlines.index(f"fresh database kept for inspection: {shown}")
        assert re.fullmatch(r"-+ testdb -+", result.outlines[at - 1])
    (summary,) = (line for line in result.outlines if line.startswith("testdb: kept "))
    listed = re.fullmatch(
        r"testdb: kept 2 fresh database\(s\) of failed tests for inspection: (.*) "
        r"\(remove with `testdb clean`\)",
        summary,
    )
    assert listed and set(listed[1].split(", ")) == kept
    assert_no_password(result)


# --------------------------------------------------------------------------- async


@pytest.mark.parametrize(
    ("driver", "server_kind", "args"),
    [
        ("asyncpg", "scram", ()),
        ("psycopg", "trust", ()),
        ("asyncpg", "scram", ("-n", "2")),
        (
            "asyncpg",
            "scram",
            (
                "-o",
                "asyncio_default_fixture_loop_scope=session",
                "-o",
                "asyncio_default_test_loop_scope=session",
            ),
        ),
    ],
    ids=["asyncpg-scram", "psycopg-trust", "asyncpg-n2", "asyncpg-session-loop"],
)
def test_async_fixtures(
    make_project: Callable[..., Project],
    request: pytest.FixtureRequest,
    driver: str,
    server_kind: str,
    args: tuple[str, ...],
) -> None:
    server: URL = request.getfixturevalue(f"{server_kind}_server")
    project = make_project(server, driver=driver)
    project.write(test_async=INNER_ASYNC)

    result = project.run(*args, subprocess="-n" in args)

    result.assert_outcomes(passed=7)
    (seen,) = (r for r in project.recorded() if r["test"] == "test_async_engine")
    assert seen["configured"] == f"postgresql+{driver}"  # the configured driver is kept
    assert seen["engine_driver"] == driver  # psycopg's async twin reports itself as "psycopg"
    assert seen["current"] == (
        f"{project.base}_serial" if "-n" not in args else f"{project.base}_{seen['worker']}"
    )
    assert_no_password(result)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("url", "args", "expected"),
    [
        ("postgresql+psycopg://postgres@127.0.0.1:5432/bad;name", (), "contains ';'"),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/bad;name", ("-n", "2"), "contains ';'"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/frt_unreachable", (), "cannot connect"),
        ("mysql://root@127.0.0.1/app_test", (), "manages PostgreSQL only"),
    ],
    ids=["bad-name", "bad-name-n2", "unreachable", "not-postgresql"],
)
def test_config_error_is_one_line_not_a_traceback(
    make_project: Callable[..., Project],
    trust_server: URL,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    args: tuple[str, ...],
    expected: str,
) -> None:
    project = make_project(trust_server, env_url=False)
    project.write(test_spread=INNER_SPREAD)
    monkeypatch.setenv("TESTDB_URL", url)

    result = project.run(*args, subprocess=bool(args))

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = project.testdb_lines(result)
    assert line.startswith("ERROR: testdb: ")
    assert expected in line
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    assert "workers" not in output  # under xdist: stopped before any worker started
    assert project.recorded() == []


def test_migration_failure_stops_the_session_naming_the_revision(
    make_project: Callable[..., Project], scram_server: URL
) -> None:
    project = make_project(scram_server)
    project.write(test_spread=INNER_SPREAD)
    revision = project.pytester.path / "migrations" / "versions" / "0002_entries.py"
    revision.write_text(revision.read_text().replace('"accounts.id"', '"no_such_table.id"'))

    result = project.run("-n", "2", subprocess=True)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = (line for line in result.errlines if line.startswith("ERROR: testdb: "))
    assert "revision 0002 (0002_entries.py)" in line
    assert "no_such_table" in result.stderr.str()  # the migration's own traceback is shown
    assert project.templates() == set()
    assert project.recorded() == []
    assert_no_password(result)


def test_header_says_restored_then_extended(
    make_project: Callable[..., Project], scram_server: URL
) -> None:
    """Issue 11: the header names how the template came about (and from what)."""
    project = make_project(scram_server)
    project.write(test_ok="def test_ok():\n    pass\n")
    cache = project.pytester.path / "dumps"  # inside the project: pytest derives rootdir from args
    first = project.run("--testdb-cache-dir", str(cache))
    first.assert_outcomes(passed=1)
    assert [m["action"] for m in project.headers(first)] == ["built"]
    for name in project.templates():
        drop_databases_with_prefix(scram_server, name)
    restored = project.run("--testdb-cache-dir", str(cache))
    restored.assert_outcomes(passed=1)
    dump = next(cache.iterdir())
    assert any(f"restored from {dump} in " in line for line in project.testdb_lines(restored))
    old = project.templates()
    (project.pytester.path / "migrations" / "versions" / "0004_more.py").write_text(
        'revision = "0004"\ndown_revision = "0003"\n\n'
        "def upgrade():\n    from alembic import op\n    op.execute('CREATE TABLE more (id int)')\n"
    )
    extended = project.run("--testdb-cache-dir", str(cache))
    extended.assert_outcomes(passed=1)
    (base,) = old
    assert any(
        f"extended from {base} by 1 revision in " in line for line in project.testdb_lines(extended)
    ), project.testdb_lines(extended)


# --------------------------------------------------------------------------- without the extras


def test_async_fixture_without_the_async_extra_names_the_install(tmp_path: Path) -> None:
    """Trust round 4, item 10: without the `[async]` extra, a test asking for an async fixture
    got pytest's "fixture 'async_db_session' not found" and no hint. Now: one line naming the
    install. pytest-asyncio is hidden from a fresh interpreter (a subprocess: the plugin decides
    at import), as if it were not installed."""
    (tmp_path / "test_async.py").write_text("def test_uses_it(async_db_session):\n    pass\n")
    hide_pytest_asyncio = (
        "import sys\n"
        "sys.modules['pytest_asyncio'] = None  # find_spec() and import now fail\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-p', 'finreport_testdb.plugin.hooks', '-p', 'no:cacheprovider', "
        "'-q', 'test_async.py']))\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TESTDB_", "PYTEST_")) and key != "DATABASE_URL"
    }
    env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", COLUMNS="300")
    result = subprocess.run(
        [sys.executable, "-c", hide_pytest_asyncio],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not found" not in result.stdout, result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("testdb: ")] == [
        "testdb: the async_db_session fixture needs the async extra (pytest-asyncio not "
        "installed): pip install 'finreport-testdb[async]'"
    ], result.stdout
