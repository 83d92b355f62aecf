"""Secrets: the password never appears in any output or log, whatever the command or failure."""

from __future__ import annotations

from pathlib import Path

from conftest import SCRAM_CACHE, SPECIAL_PASSWORD
from sqlalchemy.engine import URL, make_url

from .conftest import (
    SESSION_STOPPED,
    Result,
    child_env,
    comments,
    inner_pytest,
    leaks,
    run_cli,
    run_parallel,
    write_project,
    write_tests,
)
from .test_hostile_input import RAISING, WRONG_PASSWORD

FAILING_TESTS = """
    from sqlalchemy import text


    def test_session_fails(db_session):
        count = db_session.execute(text("SELECT count(*) FROM accounts")).scalar()
        assert count == 3, "expected three accounts"


    def test_fresh_database_fails(fresh_database, db_session):
        db_session.execute(text("SELECT * FROM no_such_table"))
"""


def test_password_never_leaks(scram_base: URL, tmp_path: Path) -> None:
    """Every CLI command, a failing migration, a wrong password and a failing `pytest -n 2`
    session (with `-l`, `--tb=long`, `-rA`, JUnit XML) against the scram-sha-256 server whose
    password holds every URL special character: neither the password nor the wrong password
    appears raw, percent-encoded, form-encoded or SQLAlchemy-encoded in any stdout, stderr or log.
    """
    base = scram_base.database
    assert base
    server_log = SCRAM_CACHE / "server.log"
    log_offset = server_log.stat().st_size if server_log.exists() else 0
    project = write_project(tmp_path / "project")
    write_tests(project, FAILING_TESTS)
    broken = write_project(tmp_path / "broken", revisions=RAISING)
    env = child_env(scram_base)
    wrong_env = child_env(scram_base.set(password=WRONG_PASSWORD))
    junit = tmp_path / "junit.xml"
    outputs: list[Result] = []

    def cli(*args: str, cwd: Path = project, environ: dict[str, str] = env) -> Result:
        result = run_cli(*args, env=environ, cwd=cwd)
        outputs.append(result)
        return result

    # Control: the one command meant to show the password does show it, intact; so the grep below
    # would catch a leak.
    shown = cli("url", "--worker", "gw1", "--show-password")
    assert make_url(shown.stdout.strip()).password == SPECIAL_PASSWORD
    assert leaks(shown.stdout)
    outputs.remove(shown)

    run_parallel(
        [
            lambda: cli("config"),
            lambda: cli("config", "--json"),
            lambda: cli("url"),
            lambda: cli("url", "--worker", "gw1"),
            lambda: cli("-v", "prepare-template", cwd=broken),
            lambda: cli("-v", "prepare-template", environ=wrong_env),
            lambda: cli("status", environ=wrong_env),
        ]
    )
    assert cli("-v", "prepare-template").returncode == 0
    assert cli("prepare-template", "--json").returncode == 0
    session = inner_pytest(
        "-n", "2", "-l", "--tb=long", "-rA", f"--junitxml={junit}", "tests", env=env, cwd=project
    )
    outputs.append(session)
    assert session.returncode == 1 and "2 failed" in session.stdout, session.describe()
    assert "fresh database kept for inspection" in session.stdout
    wrong_session = inner_pytest("tests", env=wrong_env, cwd=project)
    outputs.append(wrong_session)
    assert wrong_session.returncode in SESSION_STOPPED, wrong_session.describe()
    run_parallel([lambda: cli("status"), lambda: cli("status", "--json")])
    assert cli("-v", "clean", "--dry-run").returncode == 0
    assert cli("-v", "clean", "--yes").returncode == 0
    assert cli("clean", "--templates", "--yes", "--json").returncode == 0
    assert comments(scram_base, base) == {}

    failed = [r for r in outputs if r.returncode != 0]
    assert len(failed) == 5, [r.args for r in failed]  # the 3 CLI failures and 2 pytest sessions
    texts = {" ".join(r.args): r.output for r in outputs}
    texts["junit xml"] = junit.read_text()
    texts["scram server log"] = server_log.read_bytes()[log_offset:].decode(errors="replace")
    found = {name: leaks(text, [SPECIAL_PASSWORD, WRONG_PASSWORD]) for name, text in texts.items()}
    assert {name: forms for name, forms in found.items() if forms} == {}


URL_IN_ERROR = {
    "0004_reports_url.py": '''
        """a migration whose error quotes the URL it was given, as env.py code often does"""
        from alembic import context

        revision = "0004"
        down_revision = "0003"

        def upgrade():
            url = context.config.get_main_option("sqlalchemy.url")
            raise RuntimeError(f"refusing to migrate {url}: not a staging database")
    '''
}


def test_migration_error_quoting_the_url_is_redacted(scram_base: URL, tmp_path: Path) -> None:
    """testdb promises that a migration's traceback is shown with the password removed; the URL a
    migration sees is rendered by SQLAlchemy, whose percent-encoding differs from urllib's."""
    project = write_project(tmp_path / "project", revisions=URL_IN_ERROR)
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    assert result.returncode == 1, result.describe()
    assert "refusing to migrate postgresql+psycopg://testdb:" in result.stderr
    assert "error: migration failed in revision 0004" in result.stderr
    assert leaks(result.output) == [], result.describe()
