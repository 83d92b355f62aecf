"""No command ever shows the password, in any encoding, and the password still reaches the driver.

Everything here runs against the scram-sha-256 server whose password holds every URL special
character (`SPECIAL_PASSWORD`): a leak in any of its raw or URL-encoded forms is caught, and a
password mangled on the way to the driver fails the login.
"""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from pathlib import Path
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from click.testing import CliRunner, Result
from conftest import SPECIAL_PASSWORD, clean_environ, run_testdb
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from finreport_testdb.cli.main import main
from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.errors import MigrationError

pytestmark = pytest.mark.parametrize("server", ["scram"], indirect=True)


#: A migration that fails with the full connection URL (password included) in its message, the way
#: a careless `env.py` or migration can. The tool must redact it from the message and traceback.
LEAKY_FAILING_REVISION = '''
    """fails, quoting its URL"""
    from alembic import op

    revision = "0003"
    down_revision = "0002"

    def upgrade():
        url = op.get_bind().engine.url
        raise RuntimeError(
            "cannot migrate " + url.render_as_string(hide_password=False)
            + " password=" + str(url.password)
        )

    def downgrade():
        pass
'''


def secret_forms(password: str) -> list[str]:
    """The password as it could appear: raw, URL-encoded every usual way, and distinctive pieces."""
    forms = {
        password,
        quote(password, safe=""),
        quote(password),
        quote_plus(password),
        quote(password, safe=" +"),  # SQLAlchemy's rendering
    }
    if password == SPECIAL_PASSWORD:
        forms |= {"p@ss:w", "p%40ss", "rd%25#", "rd%2525"}  # pieces of a partly mangled leak
    return sorted(forms)


def assert_no_secret(output: str, password: str = SPECIAL_PASSWORD) -> None:
    for form in secret_forms(password):
        assert form not in output, f"password form {form!r} leaked:\n{output}"


def all_output(result: Result) -> str:
    return result.stdout + result.stderr + (repr(result.exception) if result.exception else "")


@pytest.fixture
def secret_url(base_url: URL) -> URL:
    assert base_url.password == SPECIAL_PASSWORD  # the scram server really uses the password
    return base_url


@pytest.fixture
def run(tiny_project: Path, secret_url: URL, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    clean_environ(monkeypatch)
    monkeypatch.chdir(tiny_project)
    monkeypatch.setenv("TESTDB_URL", render_for_driver(secret_url))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args))

    return invoke


@pytest.fixture
def prepared(tiny_project: Path, secret_url: URL) -> ProjectDatabases:
    """Template, worker gw0 and an unmarked look-alike, so every command has something to show."""
    databases = ProjectDatabases.from_settings(
        resolve_settings({"url": render_for_driver(secret_url)}, cwd=tiny_project, environ={})
    )
    databases.ensure_template()
    databases.clone_for_worker("gw0")
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(secret_url, database="postgres")
    ) as conn:
        conn.execute(f'CREATE DATABASE "{secret_url.database}_gw7"')
    return databases


COMMANDS = [
    ["config"],
    ["config", "--json"],
    ["status"],
    ["status", "--json"],
    ["url"],
    ["url", "--worker", "gw3"],
    ["prepare-template"],
    ["prepare-template", "--json"],
    ["prepare-template", "--rebuild"],
    ["clean", "--dry-run"],
    ["clean", "--json", "--templates"],
    ["clean", "--all-namespaces", "--stale-templates"],
    ["--namespace", "ci_1", "url", "--worker", "master"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_command_output_never_contains_the_password(
    run,
    prepared: ProjectDatabases,
    args: list[str],
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.DEBUG)
    result = run(*args)
    assert result.exit_code == 0, all_output(result)
    assert_no_secret(all_output(result))
    assert_no_secret(caplog.text)


def test_masked_url_shows_stars_instead(run) -> None:  # type: ignore[no-untyped-def]
    out = run("url", "--worker", "gw3").stdout
    assert ":***@" in out


def test_failing_migration_does_not_show_the_password(run, tiny_project: Path) -> None:  # type: ignore[no-untyped-def]
    (tiny_project / "migrations" / "versions" / "0003_leaky.py").write_text(
        textwrap.dedent(LEAKY_FAILING_REVISION)
    )
    result = run("prepare-template")
    assert result.exit_code == 1
    assert "migration failed in revision 0003" in result.stderr
    assert "cannot migrate postgresql+psycopg://testdb:***@" in result.stderr  # redacted, not lost
    assert_no_secret(all_output(result))


def test_migration_error_object_holds_no_password(tiny_project: Path, secret_url: URL) -> None:
    (tiny_project / "migrations" / "versions" / "0003_leaky.py").write_text(
        textwrap.dedent(LEAKY_FAILING_REVISION)
    )
    databases = ProjectDatabases.from_settings(
        resolve_settings({"url": render_for_driver(secret_url)}, cwd=tiny_project, environ={})
    )
    with pytest.raises(MigrationError) as info:
        databases.ensure_template()
    assert_no_secret(str(info.value) + info.value.details + repr(info.value))
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "args", [["status"], ["prepare-template"], ["clean", "--dry-run"]], ids=" ".join
)
def test_wrong_password_error_does_not_show_either_password(  # type: ignore[no-untyped-def]
    run, secret_url: URL, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    wrong = SPECIAL_PASSWORD[::-1] + "@x"
    monkeypatch.setenv("TESTDB_URL", render_for_driver(secret_url.set(password=wrong)))
    result = run(*args)
    assert result.exit_code == 1
    assert "password authentication failed" in result.stderr
    assert result.stderr.startswith("error: cannot connect to PostgreSQL at 127.0.0.1:")
    assert_no_secret(all_output(result), wrong)
    assert_no_secret(all_output(result))


def test_server_down_error_does_not_show_the_password(run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(
        "TESTDB_URL",
        render_for_driver(
            URL.create(
                "postgresql+psycopg",
                username="app",
                password=SPECIAL_PASSWORD,
                host="127.0.0.1",
                port=1,
                database="frt_down",
            )
        ),
    )
    result = run("status")
    assert result.exit_code == 1 and "127.0.0.1:1" in result.stderr
    assert_no_secret(all_output(result))


def test_bad_url_error_does_not_show_the_password(run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(
        "TESTDB_URL",
        render_for_driver(
            URL.create(
                "mysql+pymysql",
                username="app",
                password=SPECIAL_PASSWORD,
                host="h",
                database="app_test",
            )
        ),
    )
    result = run("config")
    assert result.exit_code == 1 and "PostgreSQL only" in result.stderr
    assert_no_secret(all_output(result))


def test_settings_and_clone_reprs_hide_the_password(prepared: ProjectDatabases) -> None:
    clone = prepared.clone_for_worker("gw1")
    assert_no_secret(repr(prepared.settings) + repr(clone) + repr(prepared.server_url))


def test_console_script_verbose_run_does_not_show_the_password(
    tiny_project: Path, secret_url: URL
) -> None:
    for args in (["-v", "prepare-template"], ["-v", "clean", "--templates"]):
        done = run_testdb(args, tiny_project, render_for_driver(secret_url))
        assert done.returncode == 0, done.stderr
        assert_no_secret(done.stdout + done.stderr)


# -- the password must still reach the driver intact -----------------------------------------------


def test_show_password_worker_url_connects(run, prepared: ProjectDatabases) -> None:  # type: ignore[no-untyped-def]
    clone = prepared.clone_for_worker("gw3")
    out = run("url", "--worker", "gw3", "--show-password").stdout.strip()
    assert make_url(out).password == SPECIAL_PASSWORD
    engine = create_engine(out, poolclass=NullPool)  # SQLAlchemy parses the printed URL itself
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == clone.name
            assert conn.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
    finally:
        engine.dispose()


def test_show_password_async_worker_url_connects(run, prepared: ProjectDatabases) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import create_async_engine

    clone = prepared.clone_for_worker("gw4")
    async_url = make_url(
        render_for_driver(prepared.server_url.set(drivername="postgresql+asyncpg"))
    )
    out = run(
        "--url", render_for_driver(async_url), "url", "--worker", "gw4", "--show-password"
    ).stdout.strip()
    assert out.startswith("postgresql+asyncpg://")

    async def current_database() -> str:
        engine = create_async_engine(out, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return str((await conn.execute(text("SELECT current_database()"))).scalar())
        finally:
            await engine.dispose()

    assert asyncio.run(current_database()) == clone.name


def test_cloned_database_urls_connect_with_the_password(prepared: ProjectDatabases) -> None:
    clone = prepared.clone_for_worker("gw5")
    for url in (clone.url_string, clone.sync_url):  # the configured driver is psycopg (sync)
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT current_database()")).scalar() == clone.name
        finally:
            engine.dispose()


def test_json_outputs_parse_and_mask(run, prepared: ProjectDatabases) -> None:  # type: ignore[no-untyped-def]
    config = json.loads(run("config", "--json").stdout)
    status = json.loads(run("status", "--json").stdout)
    assert ":***@" in config["url"]["value"]
    assert ":***@" in status["server"]
