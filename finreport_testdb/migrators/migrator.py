"""The `Migrator` protocol (fingerprint + migrate), all the template machinery needs, so it never
imports Alembic; and, for the adapters and the seed, hashing files as Python reads them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from ..core.urls import libpq_variant, psycopg_connect_kwargs, render_for_driver, sync_variant
from ..errors import ConfigError

#: Caches that tools write beside the sources; never part of a fingerprint.
IGNORED_PARTS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


@dataclass(frozen=True)
class RevisionChain:
    """A linear migration path, base first, and the lineage everything else hashes to."""

    lineage: str
    revisions: tuple[tuple[str, str], ...]  # (revision id, sha256 of its file)

    def steps(self) -> list[str]:
        """Cumulative digests: steps()[i] identifies the path up to and including revision i."""
        out = [self.lineage]
        for revision, file_hash in self.revisions:
            out.append(hashlib.sha256(f"{out[-1]}\0{revision}\0{file_hash}".encode()).hexdigest())
        return out[1:]

    @property
    def head(self) -> str:
        return self.revisions[-1][0]

    @property
    def digest(self) -> str:
        return self.steps()[-1]


@runtime_checkable
class Migrator(Protocol):
    """What decides a schema, as a hex digest (same inputs → same digest on any machine), and how
    to bring the empty database at a URL to that schema (raising on failure)."""

    def fingerprint(self) -> str: ...
    def migrate(self, url: URL) -> None: ...


@runtime_checkable
class ChainMigrator(Migrator, Protocol):
    """A migrator that can also extend a clone of an older template (`migrate` runs only the newer
    revisions) and verify a restored one; `revision_chain` is None for a non-linear history."""

    def revision_chain(self) -> RevisionChain | None: ...
    def database_heads(self, url: URL) -> set[str]: ...
    def target_heads(self) -> set[str]: ...


@contextmanager
def sync_engine(url: URL) -> Iterator[Engine]:
    """An engine on `url` through a sync libpq driver, without a pool, disposed after the block."""
    engine = create_engine(render_for_driver(libpq_variant(sync_variant(url))), poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def tree_files(
    root: Path, *, skip: frozenset[str] = IGNORED_PARTS, inside: Path | None = None
) -> list[tuple[str, Path]]:
    """(relative path, path) of every non-directory below `root`, sorted, through symlinked
    directories as `open()` reads them (`Path.rglob` skips those: a symlinked `versions/` went
    unhashed), but not into a loop, nor outside `inside` when given. Dangling symlinks are kept:
    the callers decide what an unreadable entry means."""
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
        for entry in (entry for entry in entries if entry.name not in skip):
            path = directory / entry.name
            if not entry.is_dir():  # follows symlinks; False for a dangling one or a loop
                found.append((f"{prefix}{entry.name}", path))
            elif not (entry.is_symlink() and inside and not _resolves_into(path, inside)):
                st = path.stat()
                if (st.st_dev, st.st_ino) not in ancestors:
                    walk(path, f"{prefix}{entry.name}/", ancestors | {(st.st_dev, st.st_ino)})

    if root.is_dir():  # a version location that does not exist: Alembic skips it too
        st = root.stat()
        walk(root, "", frozenset({(st.st_dev, st.st_ino)}))
    return sorted(found)


def _resolves_into(path: Path, directory: Path, *, unresolvable: bool = False) -> bool:
    """Whether `path` resolves into `directory`; `unresolvable`: the answer for a symlink loop."""
    try:
        return path.resolve().is_relative_to(directory)
    except (OSError, RuntimeError):
        return unresolvable


def hash_tree(root: Path, *, exclude: frozenset[Path] = frozenset()) -> str:
    """Digest of every file below `root` by relative path and content, whatever the location and
    modification times. `exclude`: resolved paths left out (the revision files)."""
    h = hashlib.sha256()
    for relative, path in tree_files(root):
        if path.suffix in (".pyc", ".pyo") or not path.is_file() or path.resolve() in exclude:
            continue
        h.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def project_glob(root: Path, pattern: str, *, what: str) -> list[Path]:
    """The files matching `pattern` below `root`, sorted, `**` following symlinked directories
    that stay inside `root` (pathlib's never does). A pattern pathlib cannot take, or a match
    outside the project (through `..` or a symlink), is refused: a fingerprint depends only on the
    project's files, and a seed runs only the project's SQL."""
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
        if not _resolves_into(path, inside, unresolvable=True):  # a loop: no file, left out
            raise ConfigError(
                f"{what} pattern {pattern!r} matches {path.relative_to(root).as_posix()}, which "
                f"leads outside the project root {root} (through '..' or a symlink); keep "
                f"{what} files inside the project and name them relative to it"
            )
    return sorted(path for path in matches if path.is_file())


def _glob(root: Path, pattern: str) -> list[Path]:
    parts = Path(pattern).parts
    first = next((i for i, p in enumerate(parts) if p == "**" or re.search(r"[*?\[]", p)), 0)
    start, rest = root.joinpath(*parts[:first]), parts[first:]
    if "**" not in parts or ".." in rest:  # pathlib's own reading of `**/..`
        return list(root.glob(pattern))
    matches: dict[Path, Path] = {}
    for relative, path in tree_files(start, skip=frozenset(), inside=root.resolve()):
        if _matches(rest, tuple(relative.split("/"))):
            try:  # a file reached twice counts once: a seed must not run it twice
                matches.setdefault(path.resolve(), path)
            except (OSError, RuntimeError):
                matches.setdefault(path, path)
    return list(matches.values())


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether a relative path's `parts` match glob components (`**`: any number of them)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    if not parts or not fnmatch.fnmatchcase(parts[0], pattern[0]):
        return False
    return _matches(pattern[1:], parts[1:])


def hash_globs(root: Path, patterns: Iterable[str], *, what: str = "fingerprint_extra") -> str:
    """Digest of the files matching `patterns`. A pattern that matches nothing is an error: a
    silently empty glob would make the fingerprint ignore the seed it was meant for."""
    h = hashlib.sha256()
    for pattern in patterns:
        matches = project_glob(root, pattern, what=what)
        if not matches:
            raise ConfigError(
                f"{what} pattern {pattern!r} matches no file under {root}; fix the pattern or "
                "remove it"
            )
        h.update(pattern.encode() + b"\0")
        for path in matches:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def interruption(exc: BaseException, url: URL) -> str | None:
    """Why a migration or seed failed if its connection or database went away under it (SQLSTATE
    57P01-03 or 3D000, a lost connection), else None. One short login tells a dropped database
    from an ended session."""
    import psycopg

    chain: list[BaseException] = [exc]
    for current in chain:  # grows as it goes: causes, contexts, a driver's error SQLAlchemy wraps
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException) and linked not in chain:
                chain.append(linked)
    errors = [error for error in chain if isinstance(error, psycopg.Error)]
    outside = ("server closed the connection unexpectedly", "terminating connection")
    states = ("57P01", "57P02", "57P03", "3D000")
    if not any(e.sqlstate in states or any(t in str(e) for t in outside) for e in errors):
        return None
    try:
        psycopg.connect(**{**psycopg_connect_kwargs(url), "connect_timeout": 3}).close()
    except psycopg.Error as error:  # a failed login has no SQLSTATE in psycopg: read the message
        if f'database "{url.database}" does not exist' in str(error):
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
