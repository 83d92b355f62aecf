"""The `Migrator` protocol: what decides a schema, and how to apply it to an empty database.

The template machinery only needs these two methods, so it never imports Alembic; Alembic is one
adapter (`alembic_migrator.py`), and a plain-SQL or any other migrator can be plugged in the same way.
Also here: hashing of files for fingerprints (read through symlinked directories, as Alembic and
Python read them), shared by every adapter and by the seed step.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from sqlalchemy.engine import URL

from ..errors import ConfigError

#: Caches that tools write beside the sources; never part of a fingerprint.
IGNORED_PARTS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_IGNORED_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class RevisionChain:
    """A linear migration path, base first, and the lineage everything else hashes to."""

    lineage: str
    revisions: tuple[tuple[str, str], ...]  # (revision id, sha256 of its file)

    def with_lineage(self, extra: str) -> RevisionChain:
        """The same path under a lineage that also covers `extra` (server major, extras...)."""
        digest = hashlib.sha256(f"{self.lineage}\0{extra}".encode()).hexdigest()
        return RevisionChain(digest, self.revisions)

    def steps(self) -> list[str]:
        """Cumulative digests: steps()[i] identifies the path up to and including revision i."""
        out: list[str] = []
        current = self.lineage
        for revision, file_hash in self.revisions:
            current = hashlib.sha256(f"{current}\0{revision}\0{file_hash}".encode()).hexdigest()
            out.append(current)
        return out

    @property
    def head(self) -> str:
        return self.revisions[-1][0]

    @property
    def digest(self) -> str:
        return self.steps()[-1]


@runtime_checkable
class Migrator(Protocol):
    def fingerprint(self) -> str:
        """Hex digest of everything that decides the schema; same inputs → same digest anywhere."""
        ...

    def migrate(self, url: URL) -> None:
        """Bring the empty database at `url` to the target schema; raise on failure."""
        ...


@runtime_checkable
class ChainMigrator(Migrator, Protocol):
    """A migrator that can also extend a clone of an older template and verify a restored one:
    `migrate` on a database already at an older revision runs only the newer revisions."""

    def revision_chain(self) -> RevisionChain | None:
        """The linear revision path with a hash per revision, or None if it is not linear."""
        ...

    def database_heads(self, url: URL) -> set[str]:
        """The revisions the database at `url` says it is at."""
        ...

    def target_heads(self) -> set[str]:
        """The revisions a fully migrated database is at."""
        ...


def tree_files(
    root: Path,
    *,
    skip: frozenset[str] = IGNORED_PARTS,
    follow: Callable[[Path], bool] | None = None,
) -> list[tuple[str, Path]]:
    """(path relative to `root`, path) of every non-directory below `root`, sorted, as a reader
    sees the tree: through symlinked directories too. `Path.rglob` does not descend into those,
    while Alembic, Python and `open()` read through them, so a tree hashed with rglob missed a
    symlinked `versions/` (trust round 4, item 1). `follow(directory)` may refuse a symlinked
    directory (None: follow all); one that leads back to a directory above it is a loop and is
    not entered again. Entries named in `skip` (caches) are left out; so is nothing else, not even
    a dangling symlink: the callers decide what an unreadable entry means."""
    found: list[tuple[str, Path]] = []

    def walk(directory: Path, prefix: str, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            raise ConfigError(
                f"cannot read directory {directory}: {exc.strerror or exc}; fix its permissions "
                "or move it out of the way"
            ) from None
        for entry in entries:
            if entry.name in skip:
                continue
            path = directory / entry.name
            relative = f"{prefix}{entry.name}"
            if not entry.is_dir():  # follows symlinks; False for a dangling one or a loop
                found.append((relative, path))
                continue
            if entry.is_symlink() and follow is not None and not follow(path):
                continue
            st = path.stat()
            identity = (st.st_dev, st.st_ino)
            if identity not in ancestors:
                walk(path, f"{relative}/", ancestors | {identity})

    if not root.is_dir():  # a version location that does not exist: Alembic skips it too
        return []
    st = root.stat()
    walk(root, "", frozenset({(st.st_dev, st.st_ino)}))
    return sorted(found)


def hash_tree(
    root: Path, *, hasher: hashlib._Hash | None = None, exclude: frozenset[Path] = frozenset()
) -> str:
    """Digest of every file below `root` (through symlinks, see `tree_files`) by relative path
    and content, independent of file order, absolute location and modification times (so two
    machines agree). `exclude` holds resolved paths left out (the revision files, which the
    migrator hashes by revision id)."""
    h = hasher or hashlib.sha256()
    for relative, path in tree_files(root):
        if path.suffix in _IGNORED_SUFFIXES or not path.is_file() or path.resolve() in exclude:
            continue
        h.update(relative.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


_WILDCARD = re.compile(r"[*?\[]")


def _glob(root: Path, pattern: str) -> list[Path]:
    """`root.glob(pattern)`, except that `**` also descends into symlinked directories that stay
    inside `root` (pathlib's never does, while the migrations and the seed read through them).
    A symlinked directory leading outside is not entered: nothing there may be hashed or run."""
    parts = Path(pattern).parts
    if "**" not in parts:
        return list(root.glob(pattern))
    first = next(i for i, part in enumerate(parts) if part == "**" or _WILDCARD.search(part))
    rest = parts[first:]
    if ".." in rest:  # pathlib's own reading of `**/..`
        return list(root.glob(pattern))
    start = root.joinpath(*parts[:first])
    if not start.is_dir():
        return []
    inside = root.resolve()

    def stays_inside(directory: Path) -> bool:
        try:
            return directory.resolve().is_relative_to(inside)
        except (OSError, RuntimeError):
            return False

    matches: dict[Path, Path] = {}
    for relative, path in tree_files(start, skip=frozenset(), follow=stays_inside):
        if _matches(rest, tuple(relative.split("/"))):
            try:
                matches.setdefault(path.resolve(), path)  # a file reached twice counts once:
            except (OSError, RuntimeError):  # a seed must not run it twice
                matches.setdefault(path, path)
    return list(matches.values())


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether a relative path's `parts` match glob components (`**`: any number of them)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], pattern[0])
        and _matches(pattern[1:], parts[1:])
    )


def project_glob(root: Path, pattern: str, *, what: str) -> list[Path]:
    """`root.glob(pattern)` (with `**` through symlinked directories inside the project, see
    `_glob`), refusing patterns pathlib cannot take (absolute, empty) and matches outside the
    project (through `..` or a symlink) in one line: the fingerprint must only depend on files
    inside the project, the same on every machine, and a seed runs only the project's SQL."""
    if not pattern or Path(pattern).is_absolute() or Path(pattern).drive:
        raise ConfigError(
            f"{what} pattern {pattern!r} is not relative to the project root {root}; "
            "use a path relative to it, e.g. seed/*.sql"
        )
    try:
        matches = _glob(root, pattern)
    except (ValueError, NotImplementedError) as exc:
        raise ConfigError(f"{what} pattern {pattern!r} is not usable ({exc}); fix it") from None
    inside = root.resolve()
    for path in matches:
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop: no file, the callers skip it
            continue
        if not resolved.is_relative_to(inside):
            raise ConfigError(
                f"{what} pattern {pattern!r} matches {path.relative_to(root).as_posix()}, which "
                f"leads outside the project root {root} (through '..' or a symlink); keep "
                f"{what} files inside the project and name them relative to it"
            )
    return matches


def hash_globs(root: Path, patterns: Iterable[str], *, what: str = "fingerprint_extra") -> str:
    """Digest of the files matching `patterns` (relative to `root`). A pattern that matches nothing
    is an error: a silently empty glob would make the fingerprint ignore the seed it was meant for."""
    h = hashlib.sha256()
    for pattern in patterns:
        matches = sorted(p for p in project_glob(root, pattern, what=what) if p.is_file())
        if not matches:
            raise ConfigError(
                f"{what} pattern {pattern!r} matches no file under {root}; fix the pattern or remove it"
            )
        h.update(pattern.encode() + b"\0")
        for path in matches:
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


#: SQLSTATEs of a session ended by someone else: admin_shutdown (pg_terminate_backend, DROP
#: DATABASE ... WITH (FORCE)), crash_shutdown, cannot_connect_now, and "database does not exist".
_OUTSIDE_SQLSTATES = {"57P01", "57P02", "57P03", "3D000"}
_OUTSIDE_MESSAGES = ("server closed the connection unexpectedly", "terminating connection")


def interrupted_from_outside(exc: BaseException) -> bool:
    """Whether the migration failed because its connection or database went away under it."""
    import psycopg

    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, psycopg.Error) and (
            current.sqlstate in _OUTSIDE_SQLSTATES
            or any(text in str(current) for text in _OUTSIDE_MESSAGES)
        ):
            return True
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
        pending += [
            orig if isinstance(orig, BaseException) else None,
            current.__cause__,
            current.__context__,
        ]
    return False


def what_interrupted(url: URL) -> str:
    """After `interrupted_from_outside`: was the build's database dropped, or only its session
    ended? One short login to that database tells them apart."""
    import psycopg

    from ..core.urls import psycopg_connect_kwargs

    kwargs = {**psycopg_connect_kwargs(url), "connect_timeout": 3}
    try:
        with psycopg.connect(**kwargs):
            pass
    except psycopg.Error as exc:
        # A failed login carries no SQLSTATE in psycopg: the server's message says it.
        if f'database "{url.database}" does not exist' in str(exc):
            return (
                f"another process dropped its database {url.database!r} (e.g. `testdb clean` or "
                "a DROP DATABASE)"
            )
        return (
            "its connection was lost: another process terminated it or the server restarted, "
            "and the server cannot be reached now"
        )
    return (
        "another process terminated its connection (pg_terminate_backend, a server restart); "
        "its database still exists"
    )
