# ruff: noqa: F811  (make_project, imported from test_plugin, is a fixture)
"""Real applications (issue 9): per-test isolation, the URL exported to the app, the bind fixtures.

The inner project is an app in the 12-factor style: `app.py` builds a sync and an async engine from
`DATABASE_URL` *at import time* and `conftest.py` imports it, so the variable must be set before any
conftest is imported. Tests commit through those engines under `isolation="fresh"`, and the tests
after them must find the worker database pristine again, through the same pooled engines.
"""

from __future__ import annotations

import html
import os
import re
import textwrap
from collections.abc import Callable
from urllib.parse import quote

import psycopg
import pytest
from conftest import SPECIAL_PASSWORD
from sqlalchemy.engine import URL, make_url
from test_plugin import (  # noqa: F401  (make_project is a fixture)
    Project,
    assert_no_password,
    execute,
    make_project,
    password_variants,
)

from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases

APP = """
    import os

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    URL_AT_IMPORT = os.environ["DATABASE_URL"]  # a KeyError here = not exported before import
    _url = make_url(URL_AT_IMPORT)
    sync_engine = create_engine(_url.set(drivername="postgresql+psycopg"))
    async_engine = create_async_engine(_url.set(drivername="postgresql+asyncpg"))
"""

APP_CONFTEST_PREFIX = """
    import app  # builds the engines from DATABASE_URL, before any test module is imported
"""

APP_TESTS = """
    import os

    import pytest
    from sqlalchemy import Connection, Engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    import app

    pytestmark = pytest.mark.testdb(isolation="rollback")  # module level; tests below override
    INSERT = text("INSERT INTO accounts (name) VALUES (:n)")
    COUNT = text("SELECT count(*) FROM accounts")


    def test_url_exported_before_import(test_database, test_database_url, record):
        record(at_import=make_url(app.URL_AT_IMPORT).database)
        assert make_url(app.URL_AT_IMPORT).database == test_database.name
        assert os.environ["DATABASE_URL"] == app.URL_AT_IMPORT == test_database_url
        # What the controller handed its workers is gone: a pytest run this test started would
        # not take itself for an xdist worker.
        assert "_TESTDB_USER_DATABASE_URL" not in os.environ


    def test_app_engine_alone_finds_the_cloned_database():
        with app.sync_engine.connect() as connection:  # no database fixture at all
            assert connection.execute(COUNT).scalar() == 2


    @pytest.mark.testdb(isolation="fresh")
    def test_fresh_commits_through_the_app_engine(db_bind, testdb_isolation):
        assert testdb_isolation == "fresh"
        assert isinstance(db_bind, Engine)
        with app.sync_engine.begin() as connection:
            connection.execute(INSERT, {"n": "committed-by-app"})
        with db_bind.connect() as connection:
            assert connection.execute(COUNT).scalar() == 3


    def test_rollback_after_fresh_finds_it_pristine(db_bind, testdb_isolation):
        assert testdb_isolation == "rollback"
        assert isinstance(db_bind, Connection)
        assert db_bind.execute(COUNT).scalar() == 2
        with app.sync_engine.connect() as connection:  # its pooled connection was replaced
            assert connection.execute(COUNT).scalar() == 2


    @pytest.mark.testdb(isolation="fresh")
    def test_fresh_sessions_commit_for_real(db_session, db_sessionmaker):
        assert db_session.execute(COUNT).scalar() == 2
        db_session.execute(INSERT, {"n": "committed-by-session"})
        db_session.commit()
        with db_sessionmaker() as other:
            assert other.execute(COUNT).scalar() == 3
        with app.sync_engine.connect() as connection:
            assert connection.execute(COUNT).scalar() == 3


    @pytest.mark.testdb(isolation="fresh")
    async def test_async_fresh_app_engine(async_db_bind, async_db_session):
        assert isinstance(async_db_bind, AsyncEngine)
        assert (await async_db_session.execute(COUNT)).scalar() == 2
        async with app.async_engine.begin() as connection:
            await connection.execute(INSERT, {"n": "async-app"})
        assert (await async_db_session.execute(COUNT)).scalar() == 3


    async def test_async_rollback_after_fresh(async_db_bind, async_db_sessionmaker):
        assert isinstance(async_db_bind, AsyncConnection)
        async with async_db_sessionmaker() as session:
            await session.execute(INSERT, {"n": "rolled-back"})
            await session.commit()  # releases a SAVEPOINT only
            assert (await session.execute(COUNT)).scalar() == 3
        async with app.async_engine.connect() as connection:  # stale pooled asyncpg replaced
            assert (await connection.execute(COUNT)).scalar() == 2


    @pytest.fixture
    async def user_async_fixture(async_db_bind):
        # Issue 9 item 8: an async fixture of the user's takes the bind as a parameter.
        result = await async_db_bind.execute(COUNT)
        return result.scalar()


    async def test_user_async_fixture_gets_the_bind(user_async_fixture):
        assert user_async_fixture == 2


    class TestClassMarker:
        pytestmark = pytest.mark.testdb(isolation="fresh")

        def test_class_marker_wins_over_module(self, testdb_isolation, db_bind):
            assert testdb_isolation == "fresh"
            with db_bind.begin() as connection:
                connection.execute(INSERT, {"n": "class"})

        @pytest.mark.testdb(isolation="rollback")
        def test_closest_marker_wins(self, testdb_isolation, db_bind):
            assert testdb_isolation == "rollback"
            assert db_bind.execute(COUNT).scalar() == 2
"""


def app_project(
    make_project: Callable[..., Project],
    server: URL,
    *,
    driver: str = "asyncpg",
    extra_ini: str = "",
    testdb_table: str = 'export_url_as = ["DATABASE_URL"]\n',
) -> Project:
    project = make_project(server, driver=driver)
    (project.pytester.path / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0"\n\n'
        f"[tool.testdb]\n{testdb_table}\n"
        "[tool.pytest.ini_options]\n"
        'asyncio_mode = "auto"\n'
        'asyncio_default_fixture_loop_scope = "session"\n'
        'asyncio_default_test_loop_scope = "session"\n'
        f"{extra_ini}"
    )
    conftest = project.pytester.path / "conftest.py"
    conftest.write_text(textwrap.dedent(APP_CONFTEST_PREFIX) + conftest.read_text())
    project.write(app=APP)
    return project


@pytest.mark.parametrize("args", [("-n", "2", "--dist", "loadfile"), ()], ids=["n2", "serial"])
def test_app_engine_from_database_url_with_fresh_and_rollback_tests(
    make_project: Callable[..., Project],
    scram_server: URL,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
) -> None:
    """The issue's "done when": no database fixture needed for the app's own engine, `fresh`
    tests commit through it, `+asyncpg` on the scram server, `--strict-markers`, no password."""
    project = app_project(make_project, scram_server)
    # A serial run started from inside another run's xdist worker inherits its worker variable;
    # the export must still name the serial database.
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    project.write(test_app=APP_TESTS)
    project.write(test_app_copy=APP_TESTS)  # a second file, so both xdist workers run tests

    result = project.run("--strict-markers", "-v", *args, subprocess=True)

    result.assert_outcomes(passed=20)
    records = [r for r in project.recorded() if "at_import" in r]
    assert len(records) == 2
    expected = (
        {f"{project.base}_gw0", f"{project.base}_gw1"} if args else {project.base + "_serial"}
    )
    assert {r["at_import"] for r in records} <= expected
    assert "testdb: default isolation commit" in result.stdout.str()
    assert "testdb: exporting the test database URL as DATABASE_URL" in result.stdout.str()
    assert_no_password(result)
    assert all(not name.endswith(("_gw0", "_gw1", "_serial")) for name in project.databases())


def test_database_url_as_fallback_and_export_target_under_xdist(
    make_project: Callable[..., Project], scram_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI's usual shape: DATABASE_URL names the server (the fallback URL of an opted-in project)
    and is also the exported variable. The workers must resolve the server from the user's
    DATABASE_URL, not from the URL the controller exported, and the app sees its worker database."""
    project = app_project(make_project, scram_server)
    monkeypatch.delenv("TESTDB_URL")
    monkeypatch.setenv("DATABASE_URL", render_for_driver(project.url("asyncpg")))
    project.write(test_app=APP_TESTS, test_app_copy=APP_TESTS)

    result = project.run("-n", "2", "--dist", "loadfile", subprocess=True)

    result.assert_outcomes(passed=20)
    assert {r["at_import"] for r in project.recorded() if "at_import" in r} == {
        f"{project.base}_gw0",
        f"{project.base}_gw1",
    }
    assert_no_password(result)


#: env.py of an app whose migrations take the URL from the environment (app settings).
ENV_FROM_DATABASE_URL = """
    import os

    from alembic import context
    from sqlalchemy import create_engine, pool

    engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""


def test_a_shell_database_url_is_never_written_when_export_url_as_is_forgotten(
    make_project: Callable[..., Project], trust_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trust round 4, item 5: an opted-in project, DATABASE_URL in the shell naming a developer's
    database, `export_url_as` forgotten: env.py migrated that database to head (before the build's
    check caught it) and the tests committed rows into it. The default export_url_as is
    ["DATABASE_URL"], so env.py migrates the build database, the app writes the worker database,
    the developer's database is untouched, and the header says what was exported."""
    project = make_project(trust_server)
    developer = f"{project.base}_devdb"
    execute(trust_server, "postgres", f'CREATE DATABASE "{developer}"')
    monkeypatch.setenv("DATABASE_URL", render_for_driver(trust_server.set(database=developer)))
    (project.pytester.path / "migrations" / "env.py").write_text(
        textwrap.dedent(ENV_FROM_DATABASE_URL)
    )
    project.write(
        app="import os\nfrom sqlalchemy import create_engine\n\n"
        'engine = create_engine(os.environ["DATABASE_URL"])\n',
        test_app="""
            from sqlalchemy import text

            import app


            def test_app_commits(test_database):
                with app.engine.begin() as connection:
                    connection.execute(text("INSERT INTO accounts (name) VALUES ('from-app')"))
                    assert connection.execute(text("SELECT current_database()")).scalar() == (
                        test_database.name
                    )
        """,
    )

    result = project.run()

    with psycopg.connect(**psycopg_connect_kwargs(trust_server, database=developer)) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)  # not migrated, nothing committed
    result.assert_outcomes(passed=1)
    assert (
        "testdb: exporting the test database URL as DATABASE_URL (the default; "
        "export_url_as = [] turns it off)"
    ) in result.outlines


def test_export_to_a_libpq_variable_stops_the_run_in_one_line(
    make_project: Callable[..., Project], scram_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trust round 4, item 4: PGOPTIONS set to the URL broke testdb's own connections and put the
    URL, password included, into the error line and the server's log. The name is refused before
    anything is exported or any server is asked."""
    project = make_project(scram_server)
    monkeypatch.setenv("TESTDB_EXPORT_URL_AS", "PGOPTIONS")
    project.write(test_ok="def test_ok(test_database):\n    pass\n")

    result = project.run()

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [line for line in result.errlines if "testdb:" in line]
    assert "contains 'PGOPTIONS', which libpq reads" in line and "DATABASE_URL" in line
    assert_no_password(result)
    assert project.databases() == set()


#: An app whose settings object reads DATABASE_URL once, at import, and keeps it; conftest.py
#: imports it (in the xdist controller too) and records what it got.
CACHED_SETTINGS_APP = """
    import os

    DATABASE_URL = os.environ["DATABASE_URL"]  # cached: later exports never reach it
"""
CACHED_SETTINGS_CONFTEST = """
    import json
    import os
    from pathlib import Path

    from sqlalchemy.engine import make_url

    import app

    Path(os.environ["TESTDB_TEST_RECORDS"], f"import-{os.getpid()}.json").write_text(
        json.dumps({"pid": os.getpid(), "at_import": make_url(app.DATABASE_URL).database})
    )
"""
#: env.py that migrates what the app's cached settings name.
ENV_FROM_CACHED_SETTINGS = """
    import app
    from alembic import context
    from sqlalchemy import create_engine, pool

    engine = create_engine(app.DATABASE_URL, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""


def test_xdist_controller_exports_the_database_its_build_migrates(
    make_project: Callable[..., Project], trust_server: URL
) -> None:
    """Trust round 4, item 11: the xdist controller runs no test yet exported `<base>_serial`,
    which nobody creates; an app whose settings are cached at import (conftest.py imports it in
    the controller too) then made the build's env.py connect to it ("database ... does not
    exist"). The controller exports the build database's URL; the workers still get their own."""
    project = make_project(trust_server)
    conftest = project.pytester.path / "conftest.py"
    conftest.write_text(textwrap.dedent(CACHED_SETTINGS_CONFTEST) + conftest.read_text())
    (project.pytester.path / "migrations" / "env.py").write_text(
        textwrap.dedent(ENV_FROM_CACHED_SETTINGS)
    )
    test = """
        from sqlalchemy.engine import make_url

        import app


        def test_worker_database(test_database):
            assert make_url(app.DATABASE_URL).database == test_database.name
    """
    project.write(app=CACHED_SETTINGS_APP, test_one=test, test_two=test)

    result = project.run("-n", "2", "--dist", "loadfile", subprocess=True)

    result.assert_outcomes(passed=2)
    (header,) = project.headers(result)
    assert header["action"] == "built"
    (builder,) = project.builds()
    at_import = {r["pid"]: r["at_import"] for r in project.recorded() if "at_import" in r}
    assert at_import.pop(int(builder)) == f"{project.base}_bld_{header['fp']}"
    assert sorted(at_import.values()) == [f"{project.base}_gw0", f"{project.base}_gw1"]


@pytest.mark.parametrize(
    ("args", "distributes"),
    [
        (("-n", "2"), True),
        (("-n", "auto"), True),
        (("--numprocesses=logical",), True),
        (("--tx", "popen", "--dist", "load"), True),
        (("--tx", "popen", "-d"), True),
        (("-n", "0"), False),
        (("-n", "auto", "--pdb"), False),
        (("-n", "2", "--collect-only"), False),
        (("--tx", "popen"), False),
        ((), False),
        (("-p", "no:xdist"), False),
    ],
)
def test_the_xdist_controller_is_known_from_xdists_parsed_options(
    pytester: pytest.Pytester, args: tuple[str, ...], distributes: bool
) -> None:
    """Trust round 4, item 11: whether this process is the controller (it will start workers) is
    read from xdist's own options before any conftest.py is imported, as xdist reads them."""
    from finreport_testdb.plugin.hooks import _xdist_distributes

    config = pytester.parseconfig(*args)
    assert _xdist_distributes(config.known_args_namespace) is distributes


def test_ini_default_fresh_and_pristine_for_every_test(
    make_project: Callable[..., Project], trust_server: URL
) -> None:
    project = app_project(
        make_project, trust_server, driver="psycopg", extra_ini='testdb_isolation = "fresh"\n'
    )
    project.write(
        test_default=(
            """
            import pytest
            from sqlalchemy import text

            import app


            @pytest.mark.parametrize("i", range(3))
            def test_each_starts_pristine(i, testdb_isolation):
                assert testdb_isolation == "fresh"
                with app.sync_engine.begin() as connection:
                    assert connection.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
                    connection.execute(text("INSERT INTO accounts (name) VALUES ('x')"))
            """
        )
    )
    result = project.run("-rA")
    result.assert_outcomes(passed=3)
    assert "testdb: default isolation fresh" in result.stdout.str()


def test_conftest_hook_sets_isolation_and_the_test_marker_still_wins(
    make_project: Callable[..., Project], trust_server: URL
) -> None:
    project = app_project(make_project, trust_server, driver="psycopg")
    with (project.pytester.path / "conftest.py").open("a") as conftest:
        conftest.write(
            textwrap.dedent(
                """

                def pytest_collection_modifyitems(items):
                    for item in items:
                        item.add_marker(pytest.mark.testdb(isolation="fresh"))
                """
            )
        )
    project.write(
        test_hook=(
            """
            import pytest


            def test_from_conftest(testdb_isolation):
                assert testdb_isolation == "fresh"


            @pytest.mark.testdb(isolation="rollback")
            def test_own_marker_wins(testdb_isolation):
                assert testdb_isolation == "rollback"
            """
        )
    )
    project.run("--strict-markers").assert_outcomes(passed=2)


def test_bad_isolation_values_are_one_line_errors(
    make_project: Callable[..., Project], trust_server: URL
) -> None:
    project = app_project(make_project, trust_server, driver="psycopg")
    project.write(
        test_bad=(
            """
            import pytest


            @pytest.mark.testdb(isolation="sometimes")
            def test_bad_marker():
                pass
            """
        )
    )
    result = project.run("--strict-markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["testdb: @pytest.mark.testdb(isolation='sometimes') on test_bad.py::test_bad_marker *"]
    )
    assert "Traceback" not in result.stdout.str()

    bad_ini = project.run("-o", "testdb_isolation=sometimes", subprocess=True)
    assert bad_ini.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [line for line in bad_ini.errlines if "testdb:" in line]
    assert "testdb_isolation = 'sometimes'" in line and "use commit, rollback or fresh" in line


def test_database_url_alone_activates_nothing(
    make_project: Callable[..., Project],
    trust_server: URL,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10 item 11: a project with an alembic.ini but no [tool.testdb], run with only a
    developer's DATABASE_URL: the session builds no template and creates no database."""
    project = make_project(trust_server, env_url=False)
    (project.pytester.path / "pyproject.toml").write_text(
        '[project]\nname = "plain"\n\n[tool.pytest.ini_options]\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
    )
    monkeypatch.setenv("DATABASE_URL", render_for_driver(project.url()))
    project.write(test_plain="def test_nothing():\n    assert True\n")

    result = project.run()

    result.assert_outcomes(passed=1)
    assert not project.testdb_lines(result)
    assert project.databases() == set()
    assert project.builds() == []


def all_password_encodings() -> set[str]:
    """Raw, and every percent-encoding a URL renderer uses (SQLAlchemy keeps ' ' and '+')."""
    return password_variants() | {
        quote(SPECIAL_PASSWORD),
        quote(SPECIAL_PASSWORD, safe=" +"),
        quote(SPECIAL_PASSWORD, safe="+"),
    }


# --------------------------------------------------------------------------- secrets

SECRET_TESTS = """
    from sqlalchemy import create_engine, text


    def test_url_is_the_real_url(test_database, test_database_url):
        assert test_database_url == test_database.url.render_as_string(hide_password=False)
        engine = create_engine(test_database_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()


    def test_compare_fails(test_database_url):
        assert test_database_url == "postgresql://nobody@nowhere/none"


    def test_contains_fails(test_database_url):
        assert "no-such-part" in test_database_url


    def test_locals_fail(test_database_url, test_database, db_sessionmaker, db_engine):
        url = test_database_url
        sync = test_database.sync_url
        assert not url and not sync
"""


@pytest.mark.parametrize(
    "args",
    [(), ("-l", "-vv"), ("-l", "-vv", "--tb=long", "-n", "2")],
    ids=["default", "l-vv", "n2"],
)
def test_password_never_in_failure_reports(
    make_project: Callable[..., Project], scram_server: URL, args: tuple[str, ...]
) -> None:
    """Issue 10 item 9: the URL fixture stays the real URL, yet failing tests that take it (and
    other plugin objects) as arguments or locals print no password, in any encoding, on the
    terminal or in JUnit XML."""
    project = make_project(scram_server)
    project.write(test_secret=SECRET_TESTS)
    xml = project.pytester.path / "junit.xml"

    result = project.run(*args, f"--junitxml={xml}", subprocess="-n" in args)

    result.assert_outcomes(passed=1, failed=3)
    output = result.stdout.str() + result.stderr.str()
    report = html.unescape(xml.read_text())
    assert "test_database_url" in output and ":***@" in output
    for variant in all_password_encodings():
        assert variant not in output
        assert variant not in report
    if "-l" in args:
        assert re.search(r"url += '.*:\*\*\*@", output)


def test_secret_url_is_a_str_equal_to_the_url(scram_server: URL) -> None:
    from finreport_testdb.core.urls import SecretUrl

    url = scram_server.set(database="app_test")
    secret = SecretUrl(url)
    real = render_for_driver(url)
    assert secret == real and isinstance(secret, str) and str(secret) == real
    assert f"{secret}" == real
    for variant in all_password_encodings():
        assert variant not in repr(secret)
        assert variant not in repr([secret, {"k": secret}])
    assert ":***@" in repr(secret)


def test_pool_listener_replaces_connections_from_before_a_reset(trust_server: URL) -> None:
    """Unit check of the reset generation: a pooled connection opened before `bump()` is
    discarded at checkout and replaced, transparently to the caller."""
    from sqlalchemy import create_engine, text

    from finreport_testdb.core import reconnect

    engine = create_engine(trust_server)
    try:
        with engine.connect() as connection:
            first = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with engine.connect() as connection:  # same generation: the pooled connection is reused
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() == first
        reconnect.bump()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != first
    finally:
        engine.dispose()


def test_export_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from sqlalchemy.engine import make_url

    from finreport_testdb.core.export import exported

    monkeypatch.setenv("APP_DB", "before")
    monkeypatch.delenv("APP_DB_2", raising=False)
    url = make_url("postgresql+asyncpg://u:p%40ss@h/db")
    with exported(["APP_DB", "APP_DB_2"], url):
        assert os.environ["APP_DB"] == os.environ["APP_DB_2"] == render_for_driver(url)
    assert os.environ["APP_DB"] == "before"
    assert "APP_DB_2" not in os.environ


def test_export_of_a_name_given_twice_restores_the_value_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trust round 4, item 4: a duplicate name saved the URL the first export had set, so the
    test database's URL stayed in the environment after the session."""
    import os

    from sqlalchemy.engine import make_url

    from finreport_testdb.core.export import exported

    monkeypatch.setenv("APP_DB", "before")
    monkeypatch.delenv("APP_DB_2", raising=False)
    with exported(["APP_DB", "APP_DB_2", "APP_DB", "APP_DB_2"], make_url("postgresql://u@h/db")):
        assert os.environ["APP_DB"] == "postgresql://u@h/db"
    assert os.environ["APP_DB"] == "before"
    assert "APP_DB_2" not in os.environ


def test_header_announces_a_started_embedded_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9 item 8: a run that started the embedded server says so, and how to stop it."""
    from finreport_testdb.core.template import TemplateResult
    from finreport_testdb.plugin import reporting as plugin
    from finreport_testdb.plugin import state as plugin_state

    pytester.makepyprojecttoml('[tool.testdb]\nexport_url_as = ["APP_DB"]\n')
    # A URL (never connected to): exporting the URL at configure time must not start (and leave
    # running) an embedded server for this throwaway project (trust round 4, item 10).
    monkeypatch.setenv("TESTDB_URL", "postgresql+psycopg://app@127.0.0.1:1/app_test")
    config = pytester.parseconfig("-p", "finreport_testdb.plugin.hooks", "-p", "no:testdb")
    state = plugin_state.run_state(config)
    state.template = TemplateResult("app_test_tpl_0123456789ab", "0123456789ab" * 5, True, 0.5)
    state.server = "postgresql+psycopg://testdb:***@127.0.0.1:5555/app_test"
    state.embedded_action = "started"
    lines = plugin.pytest_report_header(config)
    assert any("`testdb server stop`" in line and "embedded" in line for line in lines)
    assert "testdb: default isolation commit" in "\n".join(lines)
    assert "testdb: exporting the test database URL as APP_DB" in lines
    state.embedded_action = "running"  # found running: nothing to announce
    assert not any("server stop" in line for line in plugin.pytest_report_header(config))


def test_header_says_what_is_exported_by_default_and_when_nothing_is(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trust round 4, item 5: the header's export line is true for the default (DATABASE_URL in
    an opted-in project) and says when `export_url_as = []` exports nothing."""
    from finreport_testdb.core.template import TemplateResult
    from finreport_testdb.plugin import reporting as plugin
    from finreport_testdb.plugin import state as plugin_state

    # A URL never connected to: exporting it must not start an embedded server for this project.
    monkeypatch.setenv("TESTDB_URL", "postgresql+psycopg://app@127.0.0.1:1/app_test")

    def header(table: str) -> list[str]:
        pytester.makepyprojecttoml(f"[tool.testdb]\n{table}")
        config = pytester.parseconfig("-p", "finreport_testdb.plugin.hooks", "-p", "no:testdb")
        state = plugin_state.run_state(config)
        state.template = TemplateResult("app_test_tpl_0123456789ab", "0123456789ab" * 5, True, 0.5)
        return [line for line in plugin.pytest_report_header(config) if "export" in line]

    assert header("") == [
        "testdb: exporting the test database URL as DATABASE_URL (the default; "
        "export_url_as = [] turns it off)"
    ]
    (line,) = header("export_url_as = []\n")
    assert line.startswith("testdb: exporting the test database URL to no variable")


def test_a_config_that_is_never_configured_puts_the_environment_back(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simplicity round (issue 19): the URL exported before any conftest.py was put back only by
    pytest_unconfigure, which a config that is never configured never runs (pytester's
    `parseconfig`; a failure before pytest_configure). The URL, and the worker identity of the
    time, stayed in the process, and a pytest run started from it later took both (the serial
    isolation tests failed after the header tests on the same xdist worker)."""
    pytester.makepyprojecttoml('[tool.testdb]\nexport_url_as = ["APP_DB"]\n')
    monkeypatch.setenv("TESTDB_URL", "postgresql+psycopg://app@127.0.0.1:1/app_test")
    monkeypatch.delenv("APP_DB", raising=False)
    before = dict(os.environ)
    config = pytester.parseconfig("-p", "finreport_testdb.plugin.hooks", "-p", "no:testdb")
    assert make_url(os.environ["APP_DB"]).database == "app_test_serial"
    config._ensure_unconfigure()  # what pytester and pytest's own start-up call
    assert dict(os.environ) == before


def test_reset_worker_restores_the_template_state_under_the_same_name(
    make_databases: Callable[..., ProjectDatabases], base_url: URL
) -> None:
    """The core method behind `fresh`: same name, ownership marker, template content; an engine
    that pooled a connection before the reset keeps working (on both servers)."""
    from sqlalchemy import create_engine, text

    from finreport_testdb.core.marker import ROLE_WORKER, Marker

    databases = make_databases()
    databases.ensure_template()
    worker = databases.clone_for_worker("gw0")
    engine = create_engine(worker.url_string)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO accounts (name) VALUES ('committed')"))
        reset = databases.reset_worker("gw0")
        assert (reset.name, reset.url) == (worker.name, worker.url)
        with engine.connect() as connection:  # the pooled connection died with the old database
            assert connection.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
        with databases.admin() as admin:
            found = admin.find(worker.name)
            marker = Marker.parse(found.comment if found else None)
        assert marker is not None and marker.role == ROLE_WORKER and marker.worker == "gw0"
    finally:
        engine.dispose()
