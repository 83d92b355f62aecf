"""Where a cluster's files live and who may own them: the cache dirs and their permission checks,
the user the server runs as, and writes of files the server reads. Knows nothing of processes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

from ..core.private_paths import write_risk
from ..errors import EmbeddedServerError

RunAs = pwd.struct_passwd  # the unprivileged account used when we are root
NO_SPACE = "No space left on device"


def cache_base() -> Path:
    """The per-user root of all caches: tmpfs when there is one, because the cluster is
    disposable and fsync=off data on a disk still costs page-cache writeback."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return Path(f"/dev/shm/finreport-testdb-{os.geteuid()}")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "finreport-testdb"


def _cache_dir_setting() -> Path | None:
    setting = os.environ.get("TESTDB_CACHE_DIR", "").strip()
    return Path(os.path.abspath(os.path.expanduser(setting))) if setting else None


def default_cache_dir(project_root: Path) -> Path:
    """Per-project, so two checkouts never share (or stop) each other's server; TESTDB_CACHE_DIR
    wins because root and CI sometimes need a place the server user can reach."""
    digest = hashlib.sha256(os.fsencode(Path(project_root).resolve())).hexdigest()[:12]
    return _cache_dir_setting() or cache_base() / digest


def default_initdb_cache_dir() -> Path:
    """Shared by all projects of this user (a pristine cluster holds no project data or secret);
    whoever sets TESTDB_CACHE_DIR wants nothing of ours left in the default location."""
    return (_cache_dir_setting() or cache_base()) / "initdb-cache"


def check_private_dir(
    directory: Path, what: str, run_as: RunAs | None = None, *, follow: bool = False
) -> None:
    """Refuse a directory (or, unless `follow`, a symlink) another local user could have planted:
    a cluster copied from it runs code (`archive_command`) as the server user. Absent is fine."""
    owners = {os.geteuid(), *([run_as.pw_uid] if run_as else [])}
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


def make_dirs(target: Path) -> None:
    """Like mkdir -p, but every directory created is 0700, or 0711 as root so the server user can
    pass through without listing or reading, regardless of the umask."""
    if not target.parent.exists():
        make_dirs(target.parent)
    mode = 0o711 if os.geteuid() == 0 else 0o700
    try:
        target.mkdir(mode=mode)
    except FileExistsError:
        return
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot create {target} ({exc.strerror}); set TESTDB_CACHE_DIR to a writable directory"
        ) from None
    os.chmod(target, mode)


def resolve_run_as() -> RunAs | None:
    """None unless we are root; then TESTDB_PG_USER, else `postgres`."""
    if os.geteuid() != 0:
        return None
    env_user = os.environ.get("TESTDB_PG_USER", "").strip()
    name, source = (env_user, " (from TESTDB_PG_USER)") if env_user else ("postgres", "")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedServerError(
            "running as root: PostgreSQL refuses to run as root and no unprivileged user "
            f"{name!r}{source} exists; create one (useradd --system {name}) or set TESTDB_PG_USER"
        ) from None
    if entry.pw_uid == 0:
        raise EmbeddedServerError(
            f"running as root: user {name!r}{source} has uid 0 and PostgreSQL refuses to run "
            "as root; set TESTDB_PG_USER to an unprivileged user"
        )
    return entry


def check_reachable(target: Path, run_as: RunAs, what: str, fix: str) -> None:
    """The server user needs search permission on every ancestor; we never widen a parent's
    permissions, so a path under e.g. /root must be refused with a way out."""
    for directory in (target, *target.parents):
        try:
            st = directory.stat()
        except OSError:
            continue
        owner, group = st.st_uid == run_as.pw_uid, st.st_gid == run_as.pw_gid
        if not st.st_mode & (stat.S_IXUSR if owner else stat.S_IXGRP if group else stat.S_IXOTH):
            raise EmbeddedServerError(
                f"running as root: the server runs as {run_as.pw_name!r}, who cannot reach {what} "
                f"(no search permission on {directory}); {fix}"
            )


def give(path: Path, run_as: RunAs | None, *, tree: bool = False) -> None:
    """Hand `path` (with `tree`, everything under it too) to the server user, if there is one."""
    if run_as is None:
        return
    under = [os.path.join(d, name) for d, dirs, files in os.walk(path) for name in (*dirs, *files)]
    for entry in [str(path), *(under if tree else [])]:
        os.chown(entry, run_as.pw_uid, run_as.pw_gid, follow_symlinks=False)


def write_private(path: Path, text: str, run_as: RunAs | None = None) -> Path:
    """A new 0600 scratch file next to `path` (the server user's, if given) for the caller to
    link() or replace() into place, so no reader ever sees half a file."""
    fd, scratch = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    give(Path(scratch), run_as)
    return Path(scratch)


def write_owned(path: Path, text: str, run_as: RunAs | None) -> None:
    os.replace(write_private(path, text, run_as), path)


class Layout:
    """The files of one cluster in its cache dir; nothing happens on disk before a method call."""

    def __init__(self, cache_dir: Path, initdb_cache_dir: Path) -> None:
        self.cache_dir, self.initdb_cache_dir = cache_dir, initdb_cache_dir
        self.data_dir = cache_dir / "data"
        self.staging_dir = cache_dir / "data.new"  # built here, renamed to data/ when complete
        self.log_path = cache_dir / "server.log"
        self.password_path = cache_dir / "password"
        self.lock_path = cache_dir / "lock"
        self.socket_dir = cache_dir / "run"
        # A socket path has at most 107 bytes; a deep cache dir's goes to a short /tmp path.
        if len(os.fsencode(self.socket_dir / ".s.PGSQL.65535")) > 107:
            digest = hashlib.sha256(os.fsencode(cache_dir)).hexdigest()[:12]
            self.socket_dir = Path(f"/tmp/finreport-testdb-{os.geteuid()}-{digest}")

    def check(self) -> None:
        """Refuse a cache dir (or its base) someone else planted, also before `status` trusts
        it. (`stop` only signals a postgres on exactly our data dir, so it needs no check.)"""
        in_base = self.cache_dir.parent == cache_base()
        if in_base:
            check_private_dir(self.cache_dir.parent, "cache base")
        # A TESTDB_CACHE_DIR may be the user's own symlink; a directory in the base may not.
        check_private_dir(self.cache_dir, "cache dir", follow=not in_base)

    def ensure(self) -> None:
        """Create missing directories ourselves, so their modes are ours."""
        self.check()  # the shared per-user base before anything is created in it
        base = cache_base()
        if os.geteuid() == 0 and self.cache_dir.parent == base and base.is_dir():
            # 0.1.0 created the base 0700 (on the initdb-cache path), which the server user cannot
            # pass through. It is our own directory (checked just above): open it for search only.
            os.chmod(base, stat.S_IMODE(base.stat().st_mode) | stat.S_IXGRP | stat.S_IXOTH)
        make_dirs(self.cache_dir)
        if not self.cache_dir.is_dir():  # a dangling TESTDB_CACHE_DIR symlink: check() passes it
            raise EmbeddedServerError(
                f"{self.cache_dir} is not a directory; set TESTDB_CACHE_DIR to a directory"
            )
        self.check()

    def prepare(self, run_as: RunAs | None) -> None:
        """The log, and the socket dir: 0700 and the server user's, so only that user (and root)
        can connect over the socket; a look-alike someone else planted under /tmp is refused."""
        os.close(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        give(self.log_path, run_as)
        with contextlib.suppress(FileExistsError):
            self.socket_dir.mkdir(mode=0o700)
        check_private_dir(self.socket_dir, "socket dir", run_as)
        os.chmod(self.socket_dir, 0o700)
        give(self.socket_dir, run_as)

    def own_entries(self) -> list[Path]:
        """What we put in the cache dir (a TESTDB_CACHE_DIR is the user's own directory); the
        initdb cache only when it lives inside, since elsewhere every project shares it."""
        entries = [self.data_dir, self.staging_dir, self.password_path, self.log_path]
        entries += [self.lock_path, self.socket_dir]  # the socket dir may be the /tmp fallback
        entries += [*self.cache_dir.glob(".password-*"), *self.cache_dir.glob(".initdb-pw-*")]
        if self.initdb_cache_dir.parent == self.cache_dir:
            entries.append(self.initdb_cache_dir)
        return entries

    def disk_usage(self) -> int:
        """Bytes the cluster's files take (0 when there are none)."""
        total = 0
        for entry in self.own_entries():
            walked = (os.path.join(d, name) for d, _, names in os.walk(entry) for name in names)
            for file in [str(entry)] if entry.is_file() else walked:
                with contextlib.suppress(OSError):
                    total += os.lstat(file).st_blocks * 512
        return total

    def remove(self) -> None:
        """Remove the cluster's files, then the cache dir itself if that leaves it empty."""
        for entry in self.own_entries():
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

    def advice(self, output: str, otherwise: str = "") -> str:
        """What to do after a failure that printed `output`: make room if the disk is full."""
        if NO_SPACE in output:
            return (
                f"the file system of {self.cache_dir} is full: free space there (df -h "
                f"{self.cache_dir}; remove stale finreport-testdb cache dirs) or set "
                f"TESTDB_CACHE_DIR to a directory with room, then retry; see {self.log_path}"
            )
        return f"{otherwise}see {self.log_path}"

    def read_log(self, since: int | None = None) -> str:
        """The server log from byte `since` on, or its last 64 KiB."""
        try:
            with open(self.log_path, "rb") as handle:
                end = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, end - 65536) if since is None else since)
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
