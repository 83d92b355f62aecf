"""With no URL configured anywhere, the CLI and the plugin use the embedded server (PRODUCT §8).

Each test gets its own cache dir (TESTDB_CACHE_DIR) under /dev/shm, so it starts its own cluster
and stops it at the end: `no_url_env` for the installed console script (initdb in the cache dir),
`embedded_project` for the CLI in-process (a copy of the user's shared initdb cache, faster).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import REPO_ROOT, TESTDB, database_names, write_tiny_project

from finreport_testdb.cli.main import main
from finreport_testdb.core.admin import Admin
from finreport_testdb.core.ownership import SERVER_HOLD_LABEL
from finreport_testdb.core.settings import ENV_VARS
from finreport_testdb.embedded import EmbeddedServer, default_initdb_cache_dir


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
    assert stop.stdout.splitlines()[0] == "embedded server stopped"
    again_stopped = run([TESTDB, "server", "stop"], no_url_env, project)
    assert again_stopped.stdout.splitlines()[0] == "embedded server was not running"
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


# ---------------------------------------------------------------- the CLI in-process


@pytest.fixture
def embedded_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A tiny project with no URL, as the cwd; its embedded server (TESTDB_CACHE_DIR) is running,
    copied from the user's shared initdb cache. Stopped and removed afterwards."""
    for variables in ENV_VARS.values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("TESTDB_CACHE_DIR", raising=False)
    initdb_cache = default_initdb_cache_dir()
    cache = Path(f"/dev/shm/frt-embedded-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("TESTDB_CACHE_DIR", str(cache))
    project = write_tiny_project(tmp_path / "p")
    monkeypatch.chdir(project)
    EmbeddedServer(cache, initdb_cache_dir=initdb_cache).start()
    yield project
    EmbeddedServer(cache).stop()
    shutil.rmtree(cache, ignore_errors=True)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def cache_dir() -> Path:
    return Path(os.environ["TESTDB_CACHE_DIR"])


def server_stderr_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_server_stop_is_refused_while_a_process_holds_it_and_a_killed_one_holds_nothing(
    embedded_project: Path,
) -> None:
    """Trust round 4, item 6: `server stop` refuses while a process works on the server (its
    admin session holds the server-in-use lock) and says who; the hold is the server's own
    state, so a holder killed with SIGKILL holds nothing and `stop` (with --purge) goes ahead."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from finreport_testdb.databases import ProjectDatabases\n"
            "from finreport_testdb.core.settings import resolve_settings\n"
            "databases = ProjectDatabases.from_settings(resolve_settings({}))\n"
            "with databases.admin():\n"
            "    print('holding', flush=True)\n"
            "    input()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        for args in (["server", "stop"], ["server", "stop", "--purge"]):
            refused = cli(*args)
            assert refused.exit_code == 1, refused.output
            (line,) = server_stderr_lines(refused)
            assert line.startswith("error: the embedded server is in use by "), line
            assert f"python pid {holder.pid} (1 session)" in line and "--force" in line, line
        assert EmbeddedServer(cache_dir()).status() is not None  # still running
        assert (cache_dir() / "data" / "PG_VERSION").is_file()  # --purge removed nothing
    finally:
        holder.kill()
        holder.wait()
    info = EmbeddedServer(cache_dir()).status()
    assert info is not None
    with Admin(info.url) as admin:  # the server notices the killed client's closed socket
        deadline = time.monotonic() + 30
        while admin.lock_holders(SERVER_HOLD_LABEL):
            assert time.monotonic() < deadline, "the killed holder's session never ended"
            time.sleep(0.02)
    stopped = cli("server", "stop", "--purge")
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout.splitlines()[0] == "embedded server stopped"
    assert re.fullmatch(
        rf"removed its data: [\d.]+ [kMG]?B in {re.escape(str(cache_dir()))}",
        stopped.stdout.splitlines()[1],
    ), stopped.stdout
    assert not cache_dir().exists()


def test_server_stop_says_how_to_remove_the_data_and_purge_removes_it(
    embedded_project: Path,
) -> None:
    """Trust round 4, item 10: `stop` leaves 40-90 MB on /dev/shm; it says so and how to remove
    them, `stop --purge` (also of a stopped server) removes them, and the library refuses to
    purge a running server."""
    server = EmbeddedServer(cache_dir())
    with pytest.raises(Exception, match=r"is running \(pid \d+\); stop it first"):
        server.purge()
    stopped = cli("server", "stop")
    assert stopped.exit_code == 0, stopped.output
    first, second = stopped.stdout.splitlines()
    assert first == "embedded server stopped"
    assert re.fullmatch(
        rf"its data \([\d.]+ MB in {re.escape(str(cache_dir()))}\) is kept for the next "
        r"start; `testdb server stop --purge` removes it",
        second,
    ), second
    purged = cli("server", "stop", "--purge")
    assert purged.exit_code == 0, purged.output
    assert purged.stdout.splitlines()[0] == "embedded server was not running"
    assert purged.stdout.splitlines()[1].startswith("removed its data: ")
    assert not cache_dir().exists()
    nothing = cli("server", "stop")
    assert nothing.stdout.strip() == "embedded server was not running", nothing.stdout


def test_every_command_that_starts_the_embedded_server_says_so(embedded_project: Path) -> None:
    """Trust round 4, item 10: a command that had to start the embedded server says so on stderr
    (where it is, that it keeps running, how to end it); one that found it running says
    nothing, and --json output stays JSON."""
    for args in (
        ["status"],
        ["url"],
        ["fingerprint"],
        ["clean", "--dry-run"],
        ["status", "--json"],
    ):
        EmbeddedServer(cache_dir()).stop()
        started = cli(*args)
        assert started.exit_code == 0, (args, started.output)
        (note,) = [line for line in server_stderr_lines(started) if "embedded" in line]
        assert re.fullmatch(
            r"started the embedded PostgreSQL server on 127\.0\.0\.1:\d+; it keeps running for "
            r"the next command or test run: `testdb server stop` ends it",
            note,
        ), (args, note)
        if "--json" in args:
            json.loads(started.stdout)
        again = cli(*args)
        assert again.exit_code == 0, (args, again.output)
        assert "embedded" not in again.stderr, (args, again.stderr)


def test_server_start_says_whether_it_started_the_server(embedded_project: Path) -> None:
    """Trust round 4, item 10: `server start` too says whether it started the server."""
    running = cli("server", "start")
    assert running.stdout.startswith("the embedded server is already running: "), running.stdout
    EmbeddedServer(cache_dir()).stop()
    started = cli("server", "start")
    assert started.stdout.startswith("started the embedded server: "), started.stdout
    assert "`testdb server stop` ends it" in started.stdout


INNER_TESTS = """
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sqlalchemy import text

    TESTDB = str(Path(sys.executable).with_name("testdb"))


    def stop(*flags):
        done = subprocess.run([TESTDB, "server", "stop", *flags], capture_output=True, text=True)
        return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


    def test_before(db_session):
        assert db_session.execute(text("SELECT 1")).scalar() == 1


    def test_stops_the_server(db_session):
        assert db_session.execute(text("SELECT 1")).scalar() == 1
        refused, forced = stop(), stop("--force")
        Path("stops.json").write_text(json.dumps([os.getpid(), refused, forced]))


    def test_after(db_session):
        pass
"""


def test_server_stop_during_a_run_is_refused_and_forced_teardown_is_one_line(
    embedded_project: Path,
) -> None:
    """Trust round 4, item 6: `testdb server stop` during a run is refused, naming the run;
    with --force it stops; the run's teardown then says in one line each what could not be done
    (no exception group traceback), and the summary that the worker database was not dropped,
    not "dropped at session end". `testdb clean` removes it afterwards."""
    (embedded_project / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-q"],
        cwd=embedded_project,
        env={**os.environ, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = inner.stdout + inner.stderr
    pid, refused, forced = json.loads((embedded_project / "stops.json").read_text())
    assert refused["code"] == 1, refused
    assert f"in use by pytest pid {pid} (" in refused["stderr"], refused
    assert "testdb server stop --force" in refused["stderr"], refused
    assert forced["code"] == 0, forced
    assert forced["stdout"].startswith(
        f"embedded server stopped (ended the sessions of pytest pid {pid} ("
    ), forced

    assert inner.returncode == 1, output  # test_after cannot connect
    assert "Traceback" not in output and "ExceptionGroup" not in output, output
    assert "dropped at session end" not in output, output
    (summary,) = [line for line in output.splitlines() if "could not be dropped" in line]
    assert summary.startswith("testdb: tiny_test_serial could not be dropped: cannot connect "), (
        summary
    )
    assert summary.endswith("run `testdb clean` to remove it later"), summary
    assert "`testdb server stop`?" in summary  # the reason names what happened

    cleaned = cli("clean", "--yes")
    assert cleaned.exit_code == 0, cleaned.output
    assert "started the embedded PostgreSQL server" in cleaned.stderr
    assert "dropping tiny_test_serial (worker, namespace '')" in cleaned.stdout, cleaned.stdout
    info = EmbeddedServer(cache_dir()).status()
    assert info is not None
    assert database_names(info.url, "tiny_test_") == {
        name for name in database_names(info.url, "tiny_test_") if "_tpl_" in name
    }
