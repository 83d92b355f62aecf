"""`EmbeddedServer`: one cluster in one cache dir, assembled from the other parts."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL

from ..core.urls import psycopg_connect_kwargs
from ..errors import EmbeddedServerError
from .binaries import find_bindir, server_version
from .cluster import StartAction, prepare_cluster, recorded_port, write_settings
from .layout import NO_SPACE, Layout, check_reachable, default_initdb_cache_dir, resolve_run_as
from .passwords import create_password_file, read_password_file, save_password_file, scrub
from .process import (
    HOST,
    PG_TIMEOUT,
    SUPERUSER,
    PidFile,
    Runner,
    free_port,
    from_level,
    live_pidfile,
    locked,
    one_line,
    port_is_free,
    stop_server,
)

log = logging.getLogger("finreport_testdb.embedded")

_START_ATTEMPTS = 5  # ports tried when the chosen one turns out to be taken
_RETRY = "run `testdb server stop` and retry; "


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


class EmbeddedServer:
    """One cluster in one cache dir. Cheap to construct; nothing happens before a method call."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        password: str | None = None,
        bindir: Path | None = None,
        initdb_cache_dir: Path | None = None,
    ) -> None:
        if password is not None and (not password or "\x00" in password):
            raise EmbeddedServerError(
                "the embedded server password is empty or contains a NUL byte; pass another "
                "one or none to have one generated"
            )
        self.layout = Layout(
            Path(os.path.abspath(os.path.expanduser(cache_dir))),
            Path(os.path.abspath(initdb_cache_dir or default_initdb_cache_dir())),
        )
        self.cache_dir, self.data_dir = self.layout.cache_dir, self.layout.data_dir
        self.log_path, self.initdb_cache_dir = self.layout.log_path, self.layout.initdb_cache_dir
        self.bindir = bindir
        self._password = password
        #: Set by start(); lets callers and tests see whether initdb ran or a copy was used.
        self.last_start_action: StartAction | None = None

    @property
    def password(self) -> str:
        """Generated once per cache dir and kept in `password`, so every process of a run (xdist
        workers, the CLI) logs in with the same secret without passing it around."""
        if self._password is None:
            try:
                self._password = read_password_file(self.layout.password_path)
            except FileNotFoundError:
                self.layout.ensure()
                self._password = create_password_file(self.layout.password_path)
        return self._password

    def start(self) -> ServerInfo:
        """The running server, started (and if needed created) first, under the start lock."""
        run_as = resolve_run_as()  # before anything is created
        self.layout.ensure()
        runner = Runner(self.layout, run_as, self.password)
        with locked(self.layout.lock_path):
            info, self.last_start_action = self._start_locked(runner)
            # Later processes that pass no password (CLI, workers) read the one the cluster has.
            save_password_file(self.layout.password_path, runner.password)
        log.debug("embedded server %s, pid %d", self.last_start_action, info.pid)
        return info

    def stop(self) -> bool:
        """Fast shutdown; returns whether a server was running."""
        if not self.cache_dir.is_dir():
            return False
        with locked(self.layout.lock_path):
            if (pidfile := live_pidfile(self.layout, remove_stale=True)) is not None:
                stop_server(pidfile.pid, self.layout)
            return pidfile is not None

    def purge(self) -> int:
        """Remove the stopped cluster's files and return the bytes freed, under the start lock
        so no process starts the server from half-removed files."""
        if not self.cache_dir.is_dir():
            return 0
        self.layout.check()
        with locked(self.layout.lock_path):
            if (pidfile := live_pidfile(self.layout, remove_stale=True)) is not None:
                raise EmbeddedServerError(
                    f"the embedded server in {self.cache_dir} is running (pid {pidfile.pid}); "
                    "stop it first (`testdb server stop --purge` stops it, then removes its data)"
                )
            freed = self.layout.disk_usage()
            self.layout.remove()
        return freed

    def disk_usage(self) -> int:
        """Bytes the cluster's files take (0 when there are none)."""
        return self.layout.disk_usage()

    def status(self) -> ServerInfo | None:
        """The running server if it answers a login, else None; no lock, no side effects beyond
        creating the password file on first use."""
        self.layout.check()
        if (pidfile := live_pidfile(self.layout)) is None:
            return None
        try:
            return self._probe(pidfile, self.password)
        except _AuthRejected:
            raise EmbeddedServerError(
                f"the embedded server in {self.cache_dir} rejects the stored password for role "
                f"{SUPERUSER!r}; start it again through finreport-testdb to reset the password"
            ) from None

    def expected_url(self) -> URL:
        """The URL `start()` would hand out, without starting, creating or logging in to anything
        (for `pytest --collect-only`: an app may build its engine at import time)."""
        try:
            self.layout.check()
            password = read_password_file(self.layout.password_path)
        except (OSError, EmbeddedServerError):
            return self._url(None, None)  # nothing trustworthy yet: user, host and database do
        return self._url(password, recorded_port(self.data_dir))

    def _url(self, password: str | None, port: int | None) -> URL:
        return URL.create("postgresql+psycopg", SUPERUSER, password, HOST, port, "postgres")

    def _start_locked(self, run: Runner) -> tuple[ServerInfo, StartAction]:
        if (pidfile := live_pidfile(self.layout, remove_stale=True)) is not None:
            with contextlib.suppress(_AuthRejected):  # the password changed: a restart sets it
                if pidfile.status != "stopping":
                    return self._wait_answering(run.password), "running"
            stop_server(pidfile.pid, self.layout)

        bindir = self.bindir or find_bindir()
        if run.run_as is not None:  # a running server proves it can reach them
            fix = "set TESTDB_CACHE_DIR to a directory that user can reach, e.g. under /dev/shm"
            check_reachable(self.cache_dir, run.run_as, str(self.cache_dir), fix + " or /tmp")
            fix = "install PostgreSQL system-wide or set TESTDB_PG_BINDIR"
            check_reachable(bindir, run.run_as, f"the PostgreSQL binaries in {bindir}", fix)
        self.layout.prepare(run.run_as)
        action = prepare_cluster(run, bindir, server_version(bindir))
        return self._launch(run, bindir), action

    def _launch(self, run: Runner, bindir: Path) -> ServerInfo:
        recorded = recorded_port(self.data_dir)
        port = recorded if recorded is not None and port_is_free(recorded) else free_port()
        for attempt in range(1, _START_ATTEMPTS + 1):
            write_settings(run, port)
            offset = self.log_path.stat().st_size
            argv = [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path)]
            argv += ["-w", "-t", str(PG_TIMEOUT), "start"]
            code, out = run(argv)
            if code == 0:
                return self._wait_answering(run.password)
            tail = scrub(self.layout.read_log(offset), run.password)
            if "Address already in use" not in tail:  # else the port was taken: try another
                raise run.failed("PostgreSQL did not start", tail, out)
            log.debug("port %d taken (attempt %d); trying another", port, attempt)
            port = free_port()
        raise EmbeddedServerError(
            f"PostgreSQL did not start: {_START_ATTEMPTS} free ports in a row were taken before "
            f"it could bind them; retry, and see {self.log_path}"
        )

    def _wait_answering(self, password: str) -> ServerInfo:
        started = time.monotonic()
        while (pidfile := live_pidfile(self.layout)) is not None:
            if (info := self._probe(pidfile, password)) is not None:
                return info
            # A server recovering from a crash answers again within a second or two; one that
            # still does not after a PANIC or a full disk will not, and waiting 60 s helps nobody.
            waited = time.monotonic() - started
            if waited > 3 and (crash := self._crash_in_log(password)) is not None:
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL server (pid {pidfile.pid}) does not answer and its "
                    f"log says: {crash}; {self.layout.advice(crash, _RETRY)}"
                )
            if waited > PG_TIMEOUT:
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL server (pid {pidfile.pid}) does not accept "
                    f"connections after {PG_TIMEOUT} s; see {self.log_path}"
                )
            time.sleep(0.05)
        crash = self._crash_in_log(password) or ""
        advice = self.layout.advice(crash, _RETRY if crash else "")
        detail = f" ({crash})" if crash else ""
        raise EmbeddedServerError(
            f"the embedded PostgreSQL server exited while starting{detail}; {advice}"
        )

    def _crash_in_log(self, password: str) -> str | None:
        """The last PANIC or out-of-space line the server logged since it last became ready."""
        tail = scrub(self.layout.read_log(), password)
        recent = tail[max(0, tail.rfind("ready to accept connections")) :]
        lines = [line for line in recent.splitlines() if "PANIC:" in line or NO_SPACE in line]
        return from_level(lines[-1]) if lines else None

    def _probe(self, pidfile: PidFile, password: str) -> ServerInfo | None:
        """A real login, not just a TCP connect: proves the password works and reads the
        running server's own version (the binaries on disk may have been upgraded since)."""
        if pidfile.port is None or pidfile.status not in (None, "ready"):
            return None
        url = self._url(password, pidfile.port)
        login = {**psycopg_connect_kwargs(url), "connect_timeout": 2, "sslmode": "disable"}
        try:
            with psycopg.connect(**login, application_name="finreport-testdb-probe") as conn:
                row = conn.execute("SHOW server_version").fetchone()
        except psycopg.OperationalError as exc:
            message = scrub(str(exc), password)
            if "password authentication failed" in message:
                raise _AuthRejected from None
            log.debug("server on port %d does not answer: %s", pidfile.port, one_line(message))
            return None
        version = str(row[0]).split()[0] if row else ""
        started_at = float(pidfile.started_at or 0)
        return ServerInfo(url, pidfile.pid, pidfile.port, self.data_dir, version, started_at)
