"""Server faults: no server, a server restarted in the middle of a run, a role without CREATEDB."""

from __future__ import annotations

import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from finreport_testdb.embedded import EmbeddedServer

from .conftest import (
    PYTHON,
    SESSION_STOPPED,
    child_env,
    comments,
    execute,
    inner_pytest,
    run_cli,
    run_parallel,
    wait_for,
    write_tests,
)


def closed_port() -> int:
    """A loopback port nothing listens on (bound once to pick it, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [["prepare-template"], ["status"], ["clean", "--yes"]],
    ids=["prepare-template", "status", "clean"],
)
def test_server_down_cli(project: Path, base_name: str, command: list[str]) -> None:
    port = closed_port()
    env = child_env(f"postgresql+psycopg://postgres@127.0.0.1:{port}/{base_name}")
    result = run_cli(*command, env=env, cwd=project)
    assert result.returncode == 1, result.describe()
    line = one_error_line(result.stderr)
    assert f"127.0.0.1:{port}" in line
    assert "Connection refused" in line and "\t" not in line  # libpq's reason, on one line
    assert "start PostgreSQL" in line and "embedded server" in line
    assert "Traceback" not in result.output


def test_server_down_pytest(project: Path, base_name: str) -> None:
    port = closed_port()
    write_tests(project, "def test_db(db_session):\n    pass\n")
    env = child_env(f"postgresql+psycopg://postgres@127.0.0.1:{port}/{base_name}")
    result = inner_pytest("-n", "2", "tests", env=env, cwd=project)
    assert result.returncode in SESSION_STOPPED, result.describe()
    assert re.search(
        rf"testdb: cannot connect to PostgreSQL at 127\.0\.0\.1:{port}\b", result.output
    )
    assert "Traceback" not in result.output


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A private embedded server this test may stop and start (never the shared ones)."""
    server = EmbeddedServer(Path(f"/dev/shm/frt-reliability-{uuid.uuid4().hex[:10]}"))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.cache_dir, ignore_errors=True)


RESTART_CONFTEST = """
    import os
    import time

    import pytest

    DIR = os.environ.get("RELIABILITY_DIR")


    def wait_file(name):
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(DIR, name)):
            assert time.monotonic() < deadline, f"{name} never appeared"
            time.sleep(0.02)


    def mark(name):
        if DIR:
            open(os.path.join(DIR, name), "w").close()


    @pytest.fixture(autouse=True)
    def checkpoint(request):
        mark(request.node.name + ".started")
        if DIR and request.node.name == "test_4_after_restart":
            wait_file("up")
"""

RESTART_TESTS = """
    from conftest import DIR, mark, wait_file
    from sqlalchemy import text


    def test_1_before(db_session):
        assert db_session.execute(text("SELECT count(*) FROM accounts")).scalar() == 2


    def test_2_during(db_session):
        assert db_session.execute(text("SELECT 1")).scalar() == 1
        mark("test_2.ready")
        if DIR:
            wait_file("down")
        assert db_session.execute(text("SELECT count(*) FROM accounts")).scalar() == 2


    def test_3_while_down(fresh_database):
        pass


    def test_4_after_restart(db_session):
        assert db_session.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
"""


def test_server_restarted_mid_run(
    own_server: EmbeddedServer, project: Path, base_name: str, spawn, tmp_path: Path
) -> None:
    """Stop the server while a test holds a connection, keep it down while the next test asks for
    a fresh clone, start it again: the two affected tests fail with a clear reason, the rest pass,
    the worker database is still dropped, and the next run is clean."""
    info = own_server.start()
    url = info.url.set(database=base_name)
    write_tests(project, RESTART_CONFTEST, "conftest.py")
    write_tests(project, RESTART_TESTS)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    env = child_env(url, RELIABILITY_DIR=str(checkpoints))
    run = spawn([PYTHON, "-m", "pytest", "-p", "no:xdist", "-rA", "tests"], env=env, cwd=project)

    wait_for(lambda: (checkpoints / "test_2.ready").exists(), timeout=60, what="test_2 running")
    assert own_server.stop()
    (checkpoints / "down").touch()
    wait_for(
        lambda: (checkpoints / "test_4_after_restart.started").exists(),
        timeout=60,
        what="test_3 to finish while the server is down",
    )
    restarted = own_server.start()
    assert restarted.port == info.port
    (checkpoints / "up").touch()
    first = run.result(timeout=120)

    assert first.returncode == 1, first.describe()
    out = first.stdout
    assert "PASSED tests/test_inner.py::test_1_before" in out, first.describe()
    assert re.search(r"FAILED tests/test_inner.py::test_2_during - .*OperationalError", out), out
    assert re.search(
        rf"ERROR tests/test_inner.py::test_3_while_down - (Failed: )?testdb: cannot connect to PostgreSQL "
        rf"at 127\.0\.0\.1:{info.port}\b",
        out,
    ), out
    assert "PASSED tests/test_inner.py::test_4_after_restart" in out, first.describe()
    left = set(comments(url, base_name))
    assert len(left) == 1 and "_tpl_" in left.pop(), "the worker database was not dropped"

    second = inner_pytest("-p", "no:xdist", "-rA", "tests", env=child_env(url), cwd=project)
    assert second.returncode == 0, second.describe()
    assert "4 passed" in second.stdout
    left = set(comments(url, base_name))
    assert len(left) == 1 and "_tpl_" in left.pop()


@pytest.fixture
def nocreatedb_role(trust_server: URL) -> Iterator[str]:
    role = f"frt_nocreatedb_{uuid.uuid4().hex[:8]}"
    execute(trust_server, f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        yield role
    finally:
        execute(trust_server, f"DROP ROLE IF EXISTS {role}")


def test_role_without_createdb(trust_base: URL, nocreatedb_role: str, project: Path) -> None:
    url = trust_base.set(username=nocreatedb_role)
    base = trust_base.database
    assert base
    write_tests(project, "def test_db(db_session):\n    pass\n")
    env = child_env(url)
    cli, session = run_parallel(
        [
            lambda: run_cli("prepare-template", env=env, cwd=project),
            lambda: inner_pytest("tests", env=env, cwd=project),
        ]
    )
    assert cli.returncode == 1, cli.describe()
    line = one_error_line(cli.stderr)
    assert nocreatedb_role in line and "CREATEDB" in line
    assert "permission denied to create database" in line
    assert session.returncode in SESSION_STOPPED, session.describe()
    assert f"testdb: role '{nocreatedb_role}' lacks a privilege" in session.output
    assert "CREATEDB" in session.output
    assert "Traceback" not in cli.output + session.output
    assert comments(trust_base, base) == {}


def test_unknown_role(trust_base: URL, project: Path) -> None:
    """A user name the server does not know: say so, and do not suggest starting a server."""
    role = f"frt_no_such_role_{uuid.uuid4().hex[:6]}"
    result = run_cli("status", env=child_env(trust_base.set(username=role)), cwd=project)
    assert result.returncode == 1, result.describe()
    line = one_error_line(result.stderr)
    assert f'role "{role}" does not exist' in line and "check the user name" in line
    assert "start PostgreSQL" not in line
