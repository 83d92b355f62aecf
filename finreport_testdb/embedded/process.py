"""The server's processes: the pid file, liveness, stopping, ports, the start lock, and running
server tools as the server user with a clean environment."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EmbeddedServerError
from .layout import Layout, RunAs
from .passwords import scrub

log = logging.getLogger("finreport_testdb.embedded")

HOST = "127.0.0.1"
SUPERUSER = "testdb"  # the role the URL names; the initdb cache is keyed by it too
PG_TIMEOUT = 60  # seconds pg_ctl and our own waits allow the server
_LOCK_TIMEOUT = 180.0  # longer than one complete cold start, so a waiter outlives a starter
_TOOL_TIMEOUT = 120  # seconds for initdb, pg_ctl (which itself waits PG_TIMEOUT), postgres --single
# Upper case: server messages; "error:" is how client tools (initdb, pg_ctl) report.
_LEVELS = ("PANIC:", "FATAL:", "ERROR:", "error:", "WARNING:", "LOG:", "DETAIL:", "HINT:")


@dataclass(frozen=True)
class PidFile:
    """The lines of postmaster.pid we use."""

    pid: int
    started_at: int | None
    port: int | None
    status: str | None


def _int(text: str | None) -> int | None:
    with contextlib.suppress(ValueError):
        return int(text or "")
    return None


def pid_alive(pid: int) -> bool:
    """A postgres process, not a zombie (PID 1 in containers often does not reap): after a reboot
    a stale pid file's pid may be anything's."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        comm, _, rest = Path(f"/proc/{pid}/stat").read_text().partition("(")[2].rpartition(")")
    except OSError:
        return True  # no procfs (macOS): trust kill(0)
    return rest.split()[:1] not in (["Z"], ["X"]) and comm in ("postgres", "postmaster")


def live_pidfile(layout: Layout, *, remove_stale: bool = False) -> PidFile | None:
    """The pid file of a postmaster running on exactly this data dir, else None; `remove_stale`
    removes a stale one and its socket lock files, which would make PostgreSQL refuse to start."""
    path = layout.data_dir / "postmaster.pid"
    try:
        line = [text.strip() or None for text in path.read_text().splitlines()] + [None] * 8
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot read {path} ({exc.strerror}); run as the user who created the cache dir or "
            "set TESTDB_CACHE_DIR"
        ) from None
    if (pid := _int(line[0])) is None:
        return None  # empty or half-written: nothing to signal or wait for
    if pid < 0 and pid_alive(-pid):
        raise EmbeddedServerError(
            f"a single-user PostgreSQL backend (pid {-pid}) is using {layout.data_dir}; wait "
            "for it to finish or end it"
        )
    ours = line[1] is None or Path(line[1]).resolve() == layout.data_dir.resolve()
    if ours and pid_alive(pid):
        return PidFile(pid, _int(line[2]), _int(line[3]), line[7])
    if remove_stale:
        log.debug("removing stale postmaster.pid (pid %d is not our server)", pid)
        for leftover in [path, *layout.socket_dir.glob(".s.PGSQL.*")]:
            with contextlib.suppress(OSError):
                leftover.unlink()
    return None


def wait_until(done: Callable[[], bool], timeout: float) -> bool:
    """Poll `done`; False if it is still false after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop_server(pid: int, layout: Layout) -> None:
    """Fast shutdown: SIGINT, as `pg_ctl stop -m fast` sends, so no run-as user is needed; it
    also hurries a server found already stopping."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    pidfile = layout.data_dir / "postmaster.pid"
    if not wait_until(lambda: not pid_alive(pid) or not pidfile.exists(), PG_TIMEOUT):
        raise EmbeddedServerError(
            f"the embedded PostgreSQL server (pid {pid}) did not stop within {PG_TIMEOUT} s; "
            f"see {layout.log_path}"
        )


def port_is_free(port: int) -> bool:
    """Mirrors the server's own bind (SO_REUSEADDR), so TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _try_lock(fd: int) -> bool:
    with contextlib.suppress(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    return False


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """flock across check-and-start, so concurrent callers end with one server."""
    # O_CLOEXEC: a postmaster that inherited the descriptor would hold the lock forever.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not wait_until(lambda: _try_lock(fd), _LOCK_TIMEOUT):
            raise EmbeddedServerError(
                f"another process has held {lock_path} for {_LOCK_TIMEOUT:.0f} s; end the "
                "stuck finreport-testdb process and retry"
            )
        yield
    finally:
        os.close(fd)


def one_line(text: str) -> str:
    return " ".join(text.split())


def from_level(line: str) -> str:
    """A log line from its level on, without the timestamp/pid prefix, on one line."""
    found = [line.index(level) for level in _LEVELS if level in line]
    return one_line(line[min(found) :] if found else line)


def failure_reason(*texts: str) -> str:
    """The last fatal line, and the line before it, which usually names the cause ("configuration
    file contains errors" follows the offending setting)."""
    for text in texts:
        lines = [line for line in text.splitlines() if any(level in line for level in _LEVELS)]
        marked = [from_level(line) for line in lines]
        worst = [i for i, line in enumerate(marked) if line.startswith(_LEVELS[:4])]
        if worst:
            causes = [line for line in marked[: worst[-1]] if not line.startswith(_LEVELS[-2:])]
            return "; ".join([*causes[-1:], marked[worst[-1]]])
    last_lines = [text.strip().splitlines()[-1] for text in texts if text.strip()]
    return one_line(last_lines[0]) if last_lines else "no details"


@dataclass(frozen=True)
class Runner:
    """Runs server tools as the server user without PG* variables, which would silently change
    what they do, and with LC_ALL=C so failures can be recognised."""

    layout: Layout
    run_as: RunAs | None
    password: str

    def failed(self, what: str, *output: str) -> EmbeddedServerError:
        """`what` failed: the cause the tools' `output` names, and what to do about it."""
        advice = self.layout.advice("".join(output))
        return EmbeddedServerError(f"{what} ({failure_reason(*output)}); {advice}")

    def __call__(self, argv: list[str], *, stdin: str = "") -> tuple[int, str]:
        name, run_as = Path(argv[0]).name, self.run_as
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        as_user: dict[str, Any] = {}
        if run_as is not None:
            env.update(HOME=run_as.pw_dir, USER=run_as.pw_name, LOGNAME=run_as.pw_name)
            as_user = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
        log.debug("running %s", " ".join(argv))
        try:  # a pipe is safe: pg_ctl -l sends the postmaster's output to the log
            result = subprocess.run(
                argv,
                input=stdin.encode(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.layout.cache_dir,
                env=env,
                timeout=_TOOL_TIMEOUT,
                start_new_session=True,  # Ctrl-C in a terminal must not reach the postmaster
                check=False,
                **as_user,
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(
                f"{name} did not finish within {_TOOL_TIMEOUT} s; see {self.layout.log_path}"
            ) from None
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot run {argv[0]} ({exc.strerror}); check the PostgreSQL installation "
                "or TESTDB_PG_BINDIR"
            ) from None
        code = result.returncode
        text = scrub(result.stdout.decode("utf-8", errors="replace"), self.password)
        if code != 0:  # the server log, which error messages name, gets a failure's output too
            with (
                contextlib.suppress(OSError),
                self.layout.log_path.open("a", encoding="utf-8") as f,
            ):
                f.write(f"--- finreport-testdb: {name} exited with {code}\n{text.rstrip()}\n")
        return code, text
