"""Where a cluster's files live and who may own them: the cache dirs, their permission checks,
the password file, the server log, and atomic writes of files the server reads.

Every other module of the embedded server builds on `ServerLayout`; this one knows nothing
about processes or initdb.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..core.private_paths import write_risk
from ..errors import EmbeddedServerError
from .passwords import _generate_password

log = logging.getLogger("finreport_testdb.embedded")

StartAction = Literal["running", "started", "copied", "initdb"]
"""What `start()` had to do: found it running, started an existing cluster, copied the initdb
cache, or ran initdb."""

_HOST = "127.0.0.1"
_PG_TIMEOUT = 60  # seconds pg_ctl and our own waits allow the server
_SUPERUSER_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
_SOCKET_NAME_LEN = len("/.s.PGSQL.65535")


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
        problem = write_risk(directory, owners, kind="directory", follow=follow)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot inspect {what} {directory} ({exc.strerror}); set TESTDB_CACHE_DIR to a "
            "directory of your own"
        ) from None
    if problem is not None:
        raise EmbeddedServerError(
            f"{what} {directory} {problem}: another user may have planted what is in it, so "
            "nothing in it is used; remove it (it is only a cache) or set TESTDB_CACHE_DIR to a "
            "directory of your own"
        )


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


# --------------------------------------------------------------------------- the run-as user


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged account used when we are root (PostgreSQL refuses to run as root)."""

    name: str
    uid: int
    gid: int
    home: str


class ServerLayout:
    """The cache dir of one cluster and the files in it. Cheap to construct; nothing happens
    before a method call."""

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

    def _check_initdb_cache(self, pristine: Path, run_as: _RunAs | None) -> None:
        """Every level of the initdb cache must be ours (or the server user's): it is copied into
        the new cluster, so a planted one would run its configuration as the server user."""
        owners = {os.geteuid()} | ({run_as.uid} if run_as is not None else set())
        levels = [self.initdb_cache_dir, pristine.parent, pristine]
        if self.initdb_cache_dir.parent == _cache_base():
            _check_private_dir(_cache_base(), {os.geteuid()}, "cache base", follow=False)
        for level in levels:
            _check_private_dir(level, owners, "initdb cache", follow=False)

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

    def _load_or_create_password(self) -> str:
        """Created with link() so processes racing on a fresh cache dir all adopt one password."""
        path = self._password_path
        try:
            return self._read_password_file()
        except FileNotFoundError:
            pass
        self._ensure_cache_dir()
        scratch = path.with_name(f".password-{os.getpid()}-{secrets.token_hex(4)}")
        try:
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
        except OSError as exc:  # a read-only or full file system, say
            raise EmbeddedServerError(
                f"cannot write the embedded server's password file in {path.parent} "
                f"({exc.strerror}); point TESTDB_CACHE_DIR at a writable directory"
            ) from None
        return self._read_password_file()

    def _read_password_file(self) -> str:
        try:
            text = self._password_path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise EmbeddedServerError(
                f"{self._password_path} is not a password this tool wrote (not UTF-8 text); "
                "delete it (a new password will be generated and applied)"
            ) from None
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

    # ---------------------------------------------------------------- removal

    def _own_entries(self) -> list[Path]:
        """What this layout puts in the cache dir, and nothing else: with TESTDB_CACHE_DIR the
        cache dir is the user's own directory, where anything else stays untouched. The initdb
        cache counts only when it lives inside (with TESTDB_CACHE_DIR); in the default location
        it is shared by every project of this user."""
        names = ["data", "data.new", "password", "server.log", "run", "lock"]
        entries = [self.cache_dir / name for name in names]
        if self.initdb_cache_dir.parent == self.cache_dir:
            entries.append(self.initdb_cache_dir)
        for pattern in (".password-*", ".initdb-pw-*"):
            entries.extend(self.cache_dir.glob(pattern))
        socket_dir = self._socket_dir()
        if socket_dir.parent != self.cache_dir:
            entries.append(socket_dir)  # the short /tmp fallback of a deep cache dir
        return entries

    def disk_usage(self) -> int:
        """Bytes the cluster's files take (0 when there are none)."""
        total = 0
        for entry in self._own_entries():
            for directory, _dirnames, filenames in os.walk(entry):
                for name in filenames:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            if entry.is_file():
                with contextlib.suppress(OSError):
                    total += entry.lstat().st_blocks * 512
        return total

    def _remove_own_entries(self) -> None:
        """Remove the cluster's files, then the cache dir itself if that leaves it empty."""
        for entry in self._own_entries():
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise EmbeddedServerError(
                    f"cannot remove {entry} ({exc.strerror}); remove it yourself, as the user "
                    "who owns it"
                ) from None
        with contextlib.suppress(OSError):  # not empty: the user's own files stay
            self.cache_dir.rmdir()

    def _append_log(self, text: str) -> None:
        try:
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(text if text.endswith("\n") else text + "\n")
        except OSError as exc:
            log.debug("cannot append to %s: %s", self.log_path, exc)

    def _read_log(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return self._scrub(handle.read().decode("utf-8", errors="replace"))
        except OSError:
            return ""
