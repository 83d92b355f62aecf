"""The server's processes: run-as-user, the pid file, liveness, signals, ports, the start lock,
and running server tools with a clean environment.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import EmbeddedServerError
from .layout import _HOST, _PG_TIMEOUT, ServerLayout, _RunAs

log = logging.getLogger("finreport_testdb.embedded")

_LOCK_TIMEOUT = 180.0  # longer than one complete cold start, so a waiter outlives a starter


@dataclass(frozen=True)
class _PidFile:
    pid: int
    data_dir: str | None
    started_at: float | None
    port: int | None
    socket_dir: str | None
    status: str | None


def _pid_alive(pid: int) -> bool:
    """kill(0) alone calls a zombie alive; PID 1 in containers often does not reap orphans, and
    a postmaster left as a zombie must count as dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat_line.rpartition(")")[2].split()
    return not (state and state[0] in ("Z", "X"))


def _is_postgres_process(pid: int) -> bool:
    """Pids are reused: after a reboot or container restart the pid in a stale pid file may
    belong to anything, and PostgreSQL then refuses to start."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return True  # no procfs (macOS): trust kill(0)
    return comm in ("postgres", "postmaster")


def _port_is_free(port: int) -> bool:
    """Mirrors the server's own bind (SO_REUSEADDR), so TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _failure_reason(*texts: str) -> str:
    """The most telling PostgreSQL output, without timestamp/pid prefixes: the last fatal line,
    plus the line before it, since that usually names the cause ("configuration file contains
    errors" is preceded by the offending setting)."""
    # Upper case: server messages; "error:" is how client tools (initdb, pg_ctl) report.
    levels = ("PANIC:", "FATAL:", "ERROR:", "error:", "WARNING:", "LOG:", "DETAIL:", "HINT:")
    for text in texts:
        marked = []
        for line in text.splitlines():
            found = [line.index(level) for level in levels if level in line]
            if found:
                marked.append(_one_line(line[min(found) :]))
        worst = [
            i
            for i, line in enumerate(marked)
            if line.startswith(("PANIC:", "FATAL:", "ERROR:", "error:"))
        ]
        if worst:
            last = worst[-1]
            causes = [line for line in marked[:last] if not line.startswith(("DETAIL:", "HINT:"))]
            return "; ".join([*causes[-1:], marked[last]])
    for text in texts:
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            return _one_line(lines[-1])
    return "no details"


class ProcessControl(ServerLayout):
    """Process handling for `EmbeddedServer`, on top of its file layout."""

    # ---------------------------------------------------------------- pid file and processes

    def _read_pidfile(self) -> _PidFile | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot read {self.data_dir / 'postmaster.pid'} ({exc.strerror}); run as the "
                "user who created the cache dir or set TESTDB_CACHE_DIR"
            ) from None

        def field(index: int) -> str | None:
            value = lines[index].strip() if len(lines) > index else ""
            return value or None

        def number(index: int) -> int | None:
            value = field(index)
            try:
                return int(value) if value is not None else None
            except ValueError:
                return None

        pid = number(0)
        if pid is None:
            return None  # empty or half-written: nothing we could signal or wait for
        started = number(2)
        return _PidFile(
            pid=pid,
            data_dir=field(1),
            started_at=float(started) if started is not None else None,
            port=number(3),
            socket_dir=field(4),
            status=field(7),
        )

    def _is_live(self, pidfile: _PidFile) -> bool:
        if pidfile.pid < 0 and _pid_alive(-pidfile.pid):
            raise EmbeddedServerError(
                f"a single-user PostgreSQL backend (pid {-pidfile.pid}) is using "
                f"{self.data_dir}; wait for it to finish or end it"
            )
        if not (_pid_alive(pidfile.pid) and _is_postgres_process(pidfile.pid)):
            return False
        if pidfile.data_dir is None:
            return True
        return os.path.realpath(pidfile.data_dir) == os.path.realpath(self.data_dir)

    def _remove_stale(self, pidfile: _PidFile) -> None:
        """A stale pid file whose pid was reused makes PostgreSQL refuse to start; so do the
        socket lock files next to it."""
        log.debug("removing stale postmaster.pid (pid %d is not our server)", pidfile.pid)
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "postmaster.pid").unlink()
        socket_dirs = {self._socket_dir()}
        if pidfile.socket_dir:
            socket_dirs.add(Path(pidfile.socket_dir))
        for directory in socket_dirs:
            if directory == self._socket_dir() or self.cache_dir in directory.parents:
                for leftover in directory.glob(".s.PGSQL.*"):
                    with contextlib.suppress(OSError):
                        leftover.unlink()

    def _signal_stop(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        self._wait_gone(pid)

    def _wait_gone(self, pid: int) -> None:
        deadline = time.monotonic() + _PG_TIMEOUT
        while _pid_alive(pid) and (self.data_dir / "postmaster.pid").exists():
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL server (pid {pid}) did not stop within "
                    f"{_PG_TIMEOUT} s; see {self.log_path}"
                )
            time.sleep(0.02)

    def _child_env(self, run_as: _RunAs | None) -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, PGPASSWORD, PGOPTIONS...) would silently change what the
        # server tools do; LC_ALL=C keeps messages English so failures can be recognised.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        if run_as is not None:
            env["HOME"] = run_as.home
            env["USER"] = env["LOGNAME"] = run_as.name
        return env

    def _run(
        self,
        argv: list[str],
        run_as: _RunAs | None,
        *,
        stdin: str | None = None,
        timeout: float = 120.0,
        new_session: bool = False,
        log_failure: bool = False,
    ) -> tuple[int, str]:
        """Run a server tool as the server user. Output goes to a temp file, not a pipe: a
        postmaster forked by pg_ctl could otherwise inherit the pipe and block us."""
        name = Path(argv[0]).name
        log.debug("running %s", " ".join(argv))
        with tempfile.TemporaryFile() as out:
            try:
                result = subprocess.run(
                    argv,
                    input=stdin.encode() if stdin is not None else None,
                    stdin=None if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.cache_dir,
                    env=self._child_env(run_as),
                    timeout=timeout,
                    start_new_session=new_session,
                    user=run_as.uid if run_as is not None else None,
                    group=run_as.gid if run_as is not None else None,
                    extra_groups=[] if run_as is not None else None,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise EmbeddedServerError(
                    f"{name} did not finish within {timeout:.0f} s; see {self.log_path}"
                ) from None
            except OSError as exc:
                raise EmbeddedServerError(
                    f"cannot run {argv[0]} ({exc.strerror}); check the PostgreSQL installation "
                    "or TESTDB_PG_BINDIR"
                ) from None
            out.seek(0)
            text = self._scrub(out.read().decode("utf-8", errors="replace"))
        if log_failure and result.returncode != 0:
            self._append_log(
                f"--- finreport-testdb: {name} exited with {result.returncode}\n{text}"
            )
        return result.returncode, text

    def _resolve_run_as(self) -> _RunAs | None:
        if os.geteuid() != 0:
            if self.run_as_user:
                log.debug("not root: ignoring run_as_user=%s", self.run_as_user)
            return None
        env_user = os.environ.get("TESTDB_PG_USER", "").strip()
        name = self.run_as_user or env_user or "postgres"
        source = " (from TESTDB_PG_USER)" if env_user and not self.run_as_user else ""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedServerError(
                "running as root: PostgreSQL refuses to run as root and no unprivileged user "
                f"{name!r}{source} exists; create one (useradd --system {name}) or set "
                "TESTDB_PG_USER"
            ) from None
        if entry.pw_uid == 0:
            raise EmbeddedServerError(
                f"running as root: user {name!r}{source} has uid 0 and PostgreSQL refuses to run "
                "as root; set TESTDB_PG_USER to an unprivileged user"
            )
        return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # O_CLOEXEC: a postmaster that inherited the descriptor would hold the lock forever.
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"another process has held {self._lock_path} for {_LOCK_TIMEOUT:.0f} s; "
                        "end the stuck finreport-testdb process and retry"
                    )
                time.sleep(0.02)
            yield
        finally:
            os.close(fd)
