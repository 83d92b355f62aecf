"""With no URL configured anywhere, the CLI and the plugin use the embedded server (PRODUCT §8).

Each test gets its own cache dir (TESTDB_CACHE_DIR) under /dev/shm, so it starts its own cluster
(copied from the shared initdb cache) and stops it at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, write_tiny_project

TESTDB = str(Path(sys.executable).with_name("testdb"))


@pytest.fixture
def no_url_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    cache = Path(f"/dev/shm/frt-embedded-{uuid.uuid4().hex[:8]}")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TESTDB_", "PYTEST_XDIST")) and k != "DATABASE_URL"
    }
    env.update(TESTDB_CACHE_DIR=str(cache), COLUMNS="300")
    yield env
    subprocess.run(
        [TESTDB, "server", "stop"], env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    shutil.rmtree(cache, ignore_errors=True)


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_server_commands_start_report_and_stop(no_url_env: dict[str, str], tmp_path: Path) -> None:
    project = write_tiny_project(tmp_path / "p")
    start = run([TESTDB, "server", "start", "--json"], no_url_env, project)
    assert start.returncode == 0, start.stderr
    info = json.loads(start.stdout)
    assert info["url"].startswith("postgresql+psycopg://testdb:***@127.0.0.1:")
    status = run([TESTDB, "server", "status", "--json"], no_url_env, project)
    assert json.loads(status.stdout)["pid"] == info["pid"] and status.returncode == 0
    again = run([TESTDB, "server", "start"], no_url_env, project)
    assert f"pid {info['pid']}" in again.stdout
    table = run([TESTDB, "server", "status"], no_url_env, project)
    assert str(info["pid"]) in table.stdout and "uptime_seconds" in table.stdout
    stop = run([TESTDB, "server", "stop"], no_url_env, project)
    assert stop.stdout.strip() == "embedded server stopped"
    assert run([TESTDB, "server", "stop"], no_url_env, project).stdout.strip() == (
        "embedded server was not running"
    )
    down = run([TESTDB, "server", "status", "--json"], no_url_env, project)
    assert json.loads(down.stdout) == {"running": False}
    assert down.returncode == 3, down.stderr  # pg_ctl status's "not running"
    table_down = run([TESTDB, "server", "status"], no_url_env, project)
    assert "not running" in table_down.stdout and table_down.returncode == 3


def test_prepare_template_and_xdist_run_without_any_url(
    no_url_env: dict[str, str], tmp_path: Path
) -> None:
    """Also trust round 4, item 9: the embedded server's URL said +psycopg whatever the app used;
    a project that depends on asyncpg gets (and is exported) `postgresql+asyncpg://` URLs."""
    project = write_tiny_project(tmp_path / "p")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('version = "0"', 'version = "0"\ndependencies = ["asyncpg"]')
    )
    (project / "tests").mkdir()
    (project / "tests" / "test_db.py").write_text(
        "import os\n\n"
        "from sqlalchemy import text\n\n"
        "def test_clone(db_session, test_database):\n"
        "    assert test_database.name.startswith('tiny_test_gw')\n"
        "    assert db_session.execute(text('SELECT count(*) FROM accounts')).scalar() == 2\n\n"
        "def test_other(db_session, test_database_url):\n"
        "    assert db_session.execute(text('SELECT 1')).scalar() == 1\n"
        "    assert test_database_url.startswith('postgresql+asyncpg://testdb:')\n"
        "    assert os.environ['DATABASE_URL'] == test_database_url\n"
    )
    built = run([TESTDB, "prepare-template"], no_url_env, project)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("built template tiny_test_tpl_")
    result = run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "tests"],
        no_url_env,
        project,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reused in" in result.stdout  # the header: the CLI's template was reused
    assert "2 passed" in result.stdout
    assert "testdb:***@127.0.0.1" in result.stdout


def test_repo_alembic_chain_builds_on_the_embedded_server(
    no_url_env: dict[str, str], tmp_path: Path
) -> None:
    """The README's main job in miniature: the shipped chain, no URL, template then reuse."""
    first = run([TESTDB, "prepare-template", "--json"], no_url_env, REPO_ROOT)
    second = run([TESTDB, "prepare-template", "--json"], no_url_env, REPO_ROOT)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["template"].startswith("finance_report_test_tpl_")
    assert (one["action"], two["action"]) == ("built", "reused")
    assert one["template"] == two["template"]


def test_a_run_that_starts_the_embedded_server_says_so(
    no_url_env: dict[str, str], tmp_path: Path
) -> None:
    """Issue 9 item 8: no silent server. Opted in: the header says the run started it and how to
    stop it; not opted in, a fixture starts it and the summary says so; found running: silence."""
    project = write_tiny_project(tmp_path / "p")
    (project / "test_db.py").write_text(
        "from sqlalchemy import text\n\n"
        "def test_clone(db_session):\n"
        "    assert db_session.execute(text('SELECT count(*) FROM accounts')).scalar() == 2\n"
    )
    pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_db.py"]
    first = run(pytest_cmd, no_url_env, project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "testdb: started the embedded PostgreSQL server" in first.stdout
    assert "`testdb server stop`" in first.stdout

    again = run(pytest_cmd, no_url_env, project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "started the embedded" not in again.stdout

    stop = run([TESTDB, "server", "stop"], no_url_env, project)
    assert stop.returncode == 0
    (project / "pyproject.toml").write_text('[project]\nname = "tiny"\nversion = "0"\n')
    by_fixture = run(pytest_cmd, no_url_env, project)
    assert by_fixture.returncode == 0, by_fixture.stdout + by_fixture.stderr
    (line,) = [ln for ln in by_fixture.stdout.splitlines() if "started the embedded" in ln]
    assert "(no URL configured)" in line and "`testdb server stop`" in line
