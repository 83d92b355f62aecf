# ruff: noqa: F811  (make_project, imported from test_plugin, is a fixture)
"""The plugin's errors: settings errors stop the run before any conftest.py is
imported, the assertion hook masks the password in both operands, a plugin fixture that cannot
connect fails with one line (no driver frame arguments in the report), and a misspelled marker
keyword is an error instead of a silent `rollback`."""

from __future__ import annotations

import html
import textwrap
from collections.abc import Callable

import pytest
from sqlalchemy.engine import URL
from test_plugin import (  # noqa: F401  (make_project is a fixture)
    Project,
    make_project,
)
from test_real_app import all_password_encodings

from finreport_testdb.core.urls import render_for_driver

# --------------------------------------------------------------------------- F2

#: An app that builds its engine from DATABASE_URL at import time, and leaves a trace of that.
IMPORTING_CONFTEST = """
    import os
    from pathlib import Path

    Path(os.environ["TESTDB_TEST_RECORDS"], "conftest-imported").write_text(
        os.environ.get("DATABASE_URL", "<unset>")
    )
    DATABASE_URL = os.environ["DATABASE_URL"]  # the app's import-time read
"""


@pytest.mark.parametrize("shell_url", [False, True], ids=["no-database-url", "developer-url"])
@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["serial", "n2"])
def test_settings_error_stops_the_run_before_conftest_is_imported(
    make_project: Callable[..., Project],
    trust_server: URL,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    shell_url: bool,
) -> None:
    """F2: an opted-in project with a settings error (here `lock_timeout = "two"`) stops with the
    one `testdb:` line and exit 4 before conftest.py imports the app, which would otherwise read
    the shell's DATABASE_URL (a developer's database) or die with a KeyError."""
    project = make_project(trust_server)
    pyproject = project.pytester.path / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.testdb]\n",
            '[tool.testdb]\nexport_url_as = ["DATABASE_URL"]\nlock_timeout = "two"\n',
        )
    )
    project.write(**{"conftest.py": IMPORTING_CONFTEST})
    project.write(test_a="def test_a(db_session):\n    pass\n")
    if shell_url:
        developer = render_for_driver(trust_server.set(database=f"{project.base}_devdb"))
        monkeypatch.setenv("DATABASE_URL", developer)

    result = project.run(*args, subprocess=True)

    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    (line,) = project.testdb_lines(result)
    assert line.startswith("ERROR: testdb: ") and "lock_timeout" in line and "'two'" in line
    assert not (project.records / "conftest-imported").exists()
    for unwanted in ("KeyError", "Traceback", "INTERNALERROR", "ImportError"):
        assert unwanted not in output
    assert project.databases() == set()


def test_settings_problem_never_stops_a_project_that_has_not_opted_in(
    make_project: Callable[..., Project], trust_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No [tool.testdb], no TESTDB_* variable, no --testdb-* option: even a settings problem
    (a pyproject.toml above the project that testdb cannot read; pytest reads its config from the
    project's pytest.ini) does not stop the run."""
    project = make_project(trust_server, env_url=False)
    (project.pytester.path / "pyproject.toml").write_bytes(b'[project]\nname = "caf\xe9"\n')
    inner = project.pytester.path / "inner"
    inner.mkdir()
    (inner / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    (inner / "test_plain.py").write_text("def test_plain():\n    pass\n")
    monkeypatch.chdir(inner)

    for args in [(), ("-n", "2")]:
        result = project.pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
        assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
        result.assert_outcomes(passed=1)
        assert not project.testdb_lines(result)


# --------------------------------------------------------------------------- F5

COMPARE_TESTS = """
    import os


    def test_exported_vs_async_url(test_database):
        assert os.environ["DATABASE_URL"] == test_database.async_url


    def test_async_url_vs_exported(test_database):
        assert test_database.async_url == os.environ["DATABASE_URL"]


    def test_exported_vs_plain_string(test_database):
        assert os.environ["DATABASE_URL"] == "postgresql://nobody@nowhere/none"


    def test_in_a_dict(test_database, test_database_url):
        assert {"url": os.environ["DATABASE_URL"]} == {"url": test_database_url, "n": 1}


    def test_in_a_list(test_database):
        assert "postgresql://nobody@nowhere/none" in [os.environ["DATABASE_URL"]]


    def test_unrelated_compare_keeps_its_diff():
        assert "left side" == "right side"
"""


@pytest.mark.parametrize(
    "args",
    [(), ("-l", "-vv"), ("-l", "-vv", "-n", "2")],
    ids=["default", "l-vv", "n2"],
)
def test_assertion_hook_masks_the_password_in_both_operands(
    make_project: Callable[..., Project], scram_server: URL, args: tuple[str, ...]
) -> None:
    """F5: comparing the exported DATABASE_URL (a plain str holding the password) with the
    plugin's masked URLs, with another string or inside containers prints no password."""
    project = make_project(scram_server)
    pyproject = project.pytester.path / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.testdb]\n", '[tool.testdb]\nexport_url_as = ["DATABASE_URL"]\n'
        )
    )
    project.write(test_compare=COMPARE_TESTS)
    xml = project.pytester.path / "junit.xml"

    result = project.run(*args, f"--junitxml={xml}", subprocess=True)

    result.assert_outcomes(failed=6)
    output = result.stdout.str() + result.stderr.str()
    report = html.unescape(xml.read_text())
    assert ":***@" in output
    for variant in all_password_encodings():
        assert variant not in output
        assert variant not in report
    assert "'left side' == 'right side'" in output  # an unrelated comparison keeps pytest's diff
    assert "- right side" in output


# --------------------------------------------------------------------------- F6

LOCKOUT_TESTS = """
    import os

    import psycopg
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from finreport_testdb.core.urls import psycopg_connect_kwargs


    def allow_connections(name, allow):
        server = make_url(os.environ["TESTDB_URL"])
        with psycopg.connect(autocommit=True, **psycopg_connect_kwargs(server, database="postgres")) as c:
            c.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')


    def test_1_worker_database_stops_accepting_connections(test_database):
        allow_connections(test_database.name, False)


    def test_2_sync(db_session):
        db_session.execute(text("SELECT 1"))


    async def test_3_async(async_db_session):
        await async_db_session.execute(text("SELECT 1"))


    def test_4_restore(test_database):
        allow_connections(test_database.name, True)
"""


@pytest.mark.parametrize(
    "args",
    [(), ("-l",), ("-l", "--tb=long", "-n", "2", "--dist", "loadfile")],
    ids=["default", "l", "n2"],
)
def test_fixture_that_cannot_connect_fails_with_one_line_and_no_password(
    make_project: Callable[..., Project], scram_server: URL, args: tuple[str, ...]
) -> None:
    """F6: db_connection / async_db_connection that cannot connect (the worker database refuses
    connections) fail with the plugin's `testdb:` line; the driver frames' arguments (conninfo,
    kwargs, asyncpg's ConnectionParameters) never reach the report."""
    project = make_project(scram_server, driver="asyncpg")
    project.write(test_lockout=LOCKOUT_TESTS)
    xml = project.pytester.path / "junit.xml"

    result = project.run(*args, f"--junitxml={xml}", subprocess=True)

    result.assert_outcomes(passed=2, errors=2)
    output = result.stdout.str() + result.stderr.str()
    report = html.unescape(xml.read_text())
    lines = [line for line in result.outlines if line.startswith("testdb: cannot connect")]
    assert len(lines) == 2, output
    assert all("not currently accepting connections" in line for line in lines)
    for variant in all_password_encodings():
        assert variant not in output
        assert variant not in report
    for leak in ("conninfo", "ConnectionParameters", "cparams", "Traceback"):
        assert leak not in output


# --------------------------------------------------------------------------- F9


def test_unknown_marker_keyword_is_a_one_line_error(
    make_project: Callable[..., Project], trust_server: URL
) -> None:
    project = make_project(trust_server)
    project.write(
        test_typo=textwrap.dedent(
            """
            import pytest


            @pytest.mark.testdb(isolaton="fresh")
            def test_typo(testdb_isolation):
                pass


            @pytest.mark.testdb(isolation="fresh", reset=True)
            def test_extra(testdb_isolation):
                pass


            @pytest.mark.testdb(isolation="fresh")
            def test_right(testdb_isolation):
                assert testdb_isolation == "fresh"
            """
        )
    )

    result = project.run("--strict-markers")

    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "testdb: @pytest.mark.testdb(isolaton=...) on test_typo.py::test_typo: unknown "
            "keyword 'isolaton'*isolation=*",
            "testdb: @pytest.mark.testdb(reset=...) on test_typo.py::test_extra: unknown "
            "keyword 'reset'*isolation=*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
