"""A private PostgreSQL cluster for test runs, managed in a cache directory.

When no server URL is configured, the CLI and the pytest plugin call `EmbeddedServer.start()` and
get back a `ServerInfo` with a superuser URL. The cluster is left running when the process exits,
so the next run only pays for a lock and one login. Everything lives under one cache dir:

    data/            the cluster (owned by the user the server runs as)
    password         the superuser password (0600, owned by the caller, never by the server user)
    server.log       the server's log; every start-up error message points here
    lock             flock'ed across check-and-start so concurrent callers end with one server
    run/             the Unix socket directory (or a short directory under /tmp, see below)

A pristine initdb result per major version and superuser is kept in a shared initdb cache (default:
next to the per-project cache dirs), so a later cold start copies it instead of running initdb.

What this package must not do: know about templates, migrations or any database but `postgres`;
print anything; put the password into a message, a log record, a command line or a file other
than `password`; touch anything outside its own directories (no chmod of parents, nothing in /etc).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL

from ..errors import EmbeddedServerError
from .binaries import _server_version, find_bindir
from .cluster import ClusterBuilder
from .layout import _HOST, _PG_TIMEOUT, StartAction, _RunAs
from .process import _failure_reason, _free_port, _one_line, _PidFile, _port_is_free

log = logging.getLogger("finreport_testdb.embedded")

_START_ATTEMPTS = 5  # ports tried when the chosen one turns out to be taken
_PORT_CONFLICT_MARKERS = (
    "Address already in use",
    "could not create any TCP/IP sockets",
    "could not bind IPv4 address",
)
_NO_SPACE = "No space left on device"


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server, as read from its pid file and confirmed by a login."""

    url: URL
    pid: int
    port: int
    data_dir: Path
    version: str
    started_at: float


class _AuthRejected(Exception):
    """The server is up but refuses our password; start() can repair that, status() cannot."""


class EmbeddedServer(ClusterBuilder):
    """One cluster in one cache dir. Cheap to construct; nothing happens before a method call."""

    # ---------------------------------------------------------------- public API

    @property
    def password(self) -> str:
        """Generated once per cache dir and kept in `password`, so every process of a run (xdist
        workers, the CLI) logs in with the same secret without passing it around."""
        if self._password is None:
            self._password = self._load_or_create_password()
        return self._password

    def start(self) -> ServerInfo:
        """Return the running server, starting (and if needed creating) it first.

        Idempotent and safe to call from many processes at once: the flock on `lock` makes
        check-and-start atomic, so concurrent callers end with one server.
        """
        started = time.monotonic()
        run_as = self._resolve_run_as()
        self._ensure_cache_dir()
        if run_as is not None:
            self._check_reachable(run_as)
        password = self.password
        with self._locked():
            info = self._start_locked(run_as, password)
        log.debug(
            "embedded server %s on port %d (pid %d) in %.3f s",
            self.last_start_action,
            info.port,
            info.pid,
            time.monotonic() - started,
        )
        return info

    def stop(self) -> bool:
        """Fast shutdown (the same SIGINT `pg_ctl stop -m fast` sends, so no run-as user is
        needed); returns whether a server was running."""
        if not self.cache_dir.is_dir():
            return False
        with self._locked():
            pidfile = self._read_pidfile()
            if pidfile is None:
                return False
            if not self._is_live(pidfile):
                self._remove_stale(pidfile)
                return False
            self._signal_stop(pidfile.pid)
            return True

    def purge(self) -> int:
        """Remove the stopped cluster's files (data, password, log, socket dir; the initdb cache
        too when it lives in this cache dir) and return the bytes freed; the next `start()`
        creates a new cluster. Refused while the server runs: stop it first.

        Under the start lock, so no process starts the server from half-removed files."""
        if not self.cache_dir.is_dir():
            return 0
        self._check_cache_dir()
        with self._locked():
            pidfile = self._read_pidfile()
            if pidfile is not None and self._is_live(pidfile):
                raise EmbeddedServerError(
                    f"the embedded server in {self.cache_dir} is running (pid {pidfile.pid}); "
                    "stop it first (`testdb server stop --purge` stops it, then removes its data)"
                )
            freed = self.disk_usage()
            self._remove_own_entries()
        return freed

    def status(self) -> ServerInfo | None:
        """The running server if it answers a login, else None; no lock, no side effects beyond
        creating the password file on first use."""
        self._check_cache_dir()
        pidfile = self._read_pidfile()
        if pidfile is None or not self._is_live(pidfile) or pidfile.status not in (None, "ready"):
            return None
        try:
            return self._probe(pidfile, self.password)
        except _AuthRejected:
            raise EmbeddedServerError(
                f"the embedded server in {self.cache_dir} rejects the stored password for role "
                f"{self.superuser!r}; start it again through finreport-testdb to reset the password"
            ) from None

    def expected_url(self) -> URL:
        """The URL `start()` would hand out, read from the cache dir without starting, creating
        or logging in to anything: the password from `password`, the port the last start
        recorded. What is not known yet (no cluster, or a cache dir not safely ours) is left out.

        For sessions that run no test (`pytest --collect-only`, an IDE's discovery): an app that
        builds its engine from the exported URL at import time needs a URL, not a server."""
        password: str | None = None
        port: int | None = None
        try:
            self._check_cache_dir()
            password = self._read_password_file()
            port = self._recorded_port()
        except (OSError, EmbeddedServerError):
            pass  # nothing trustworthy (yet): user, host and database are enough to import
        return URL.create(
            "postgresql+psycopg",
            username=self.superuser,
            password=password,
            host=_HOST,
            port=port,
            database="postgres",
        )

    # ---------------------------------------------------------------- start machinery

    def _start_locked(self, run_as: _RunAs | None, password: str) -> ServerInfo:
        pidfile = self._read_pidfile()
        if pidfile is not None:
            if self._is_live(pidfile):
                if pidfile.status == "stopping":
                    self._wait_gone(pidfile.pid)
                elif self._password_applied(password):
                    try:
                        info = self._wait_answering(password)
                    except _AuthRejected:
                        log.debug("running server rejects the password; restarting to reset it")
                        self._signal_stop(pidfile.pid)
                        self._forget_password_check()
                    else:
                        self._save_password_file(password)
                        self.last_start_action = "running"
                        return info
                else:
                    log.debug("password changed; restarting the server to apply it")
                    self._signal_stop(pidfile.pid)
            else:
                self._remove_stale(pidfile)

        self._prepare_log(run_as)
        bindir = self.bindir or find_bindir()
        if run_as is not None:
            self._check_reachable(run_as, bindir)
        version = _server_version(bindir)
        action: StartAction
        if (self.data_dir / "PG_VERSION").is_file():
            self._check_data_version(version, bindir)
            if run_as is not None and self.data_dir.stat().st_uid != run_as.uid:
                self._give_tree(self.data_dir, run_as)
            if not self._password_applied(password):
                self._apply_password(self.data_dir, bindir, run_as, password)
            action = "started"
        else:
            if self.data_dir.exists():
                log.debug("removing %s: not a complete cluster", self.data_dir)
                shutil.rmtree(self.data_dir)
            action = self._materialize(bindir, version, run_as, password)
        self._save_password_file(password)
        info = self._launch(bindir, run_as, password)
        self.last_start_action = action
        return info

    def _launch(self, bindir: Path, run_as: _RunAs | None, password: str) -> ServerInfo:
        socket_dir = self._socket_dir()
        self._prepare_owned_dir(socket_dir, run_as)
        self._prepare_log(run_as)
        self._ensure_include(self.data_dir, run_as)
        recorded = self._recorded_port()
        port = recorded if recorded is not None and _port_is_free(recorded) else _free_port()
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._write_settings(port, socket_dir, run_as)
            offset = self.log_path.stat().st_size
            argv = [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(_PG_TIMEOUT),
                "start",
            ]
            code, out = self._run(argv, run_as, timeout=_PG_TIMEOUT + 30, new_session=True)
            if code == 0:
                return self._wait_answering(password)
            tail = self._read_log(offset)
            if any(marker in tail for marker in _PORT_CONFLICT_MARKERS):
                log.debug("port %d taken (attempt %d); trying another", port, attempt)
                port = _free_port()
                continue
            reason = self._scrub(_failure_reason(tail, out))
            fix = self._crash_fix(reason) if _NO_SPACE in tail + out else f"see {self.log_path}"
            raise EmbeddedServerError(f"PostgreSQL did not start ({reason}); {fix}")
        raise EmbeddedServerError(
            f"PostgreSQL did not start: {_START_ATTEMPTS} free ports in a row were taken before "
            f"it could bind them; retry, and see {self.log_path}"
        )

    def _wait_answering(self, password: str) -> ServerInfo:
        started = time.monotonic()
        deadline = started + _PG_TIMEOUT
        while True:
            pidfile = self._read_pidfile()
            if pidfile is None or not self._is_live(pidfile):
                crash = self._crash_in_log()
                detail = (
                    f" ({crash}); {self._crash_fix(crash)}" if crash else f"; see {self.log_path}"
                )
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL server exited while starting{detail}"
                )
            if pidfile.port is not None and pidfile.status in (None, "ready"):
                info = self._probe(pidfile, password)
                if info is not None:
                    return info
            # A server recovering from a crash answers again within a second or two; one that
            # still does not after a PANIC or a full disk will not, and 60 s of waiting helps nobody.
            crash = self._crash_in_log() if time.monotonic() - started > 3 else None
            if crash is not None:
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL server (pid {pidfile.pid}) does not answer and its "
                    f"log says: {crash}; {self._crash_fix(crash)}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL server (pid {pidfile.pid}) does not accept "
                    f"connections after {_PG_TIMEOUT} s; see {self.log_path}"
                )
            time.sleep(0.05)

    def _crash_in_log(self) -> str | None:
        """The last PANIC or out-of-space line the server logged since it last became ready."""
        try:
            size = self.log_path.stat().st_size
        except OSError:
            return None
        tail = self._read_log(max(0, size - 64 * 1024))
        ready = tail.rfind("ready to accept connections")
        recent = tail[ready:] if ready >= 0 else tail
        lines = [line for line in recent.splitlines() if "PANIC:" in line or _NO_SPACE in line]
        if not lines:
            return None
        line = lines[-1]
        levels = [line.index(level) for level in ("PANIC:", "FATAL:", "ERROR:") if level in line]
        return _one_line(line[min(levels) :] if levels else line)

    def _crash_fix(self, reason: str | None) -> str:
        if reason is not None and _NO_SPACE in reason:
            return (
                f"the file system of {self.cache_dir} is full: free space there (df -h "
                f"{self.cache_dir}; remove stale finreport-testdb cache dirs) or set "
                f"TESTDB_CACHE_DIR to a directory with room, then retry; see {self.log_path}"
            )
        return f"run `testdb server stop` and retry; see {self.log_path}"

    def _probe(self, pidfile: _PidFile, password: str) -> ServerInfo | None:
        """A real login, not just a TCP connect: proves the password works and reads the
        running server's own version (the binaries on disk may have been upgraded since)."""
        if pidfile.port is None:
            return None
        try:
            with psycopg.connect(
                host=_HOST,
                port=pidfile.port,
                user=self.superuser,
                password=password,
                dbname="postgres",
                connect_timeout=2,
                sslmode="disable",
                application_name="finreport-testdb-probe",
            ) as conn:
                row = conn.execute("SHOW server_version").fetchone()
        except psycopg.OperationalError as exc:
            message = self._scrub(str(exc))
            if "password authentication failed" in message:
                raise _AuthRejected from None
            log.debug("server on port %d does not answer: %s", pidfile.port, _one_line(message))
            return None
        version = str(row[0]).split()[0] if row else ""
        return ServerInfo(
            url=URL.create(
                "postgresql+psycopg",
                username=self.superuser,
                password=password,
                host=_HOST,
                port=pidfile.port,
                database="postgres",
            ),
            pid=pidfile.pid,
            port=pidfile.port,
            data_dir=self.data_dir,
            version=version,
            started_at=pidfile.started_at if pidfile.started_at is not None else 0.0,
        )
