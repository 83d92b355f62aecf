"""The optional seed step: rows every test expects, loaded after migrations, before the freeze.

A seed entry is either `package.module:function` (called with a SQLAlchemy `Connection` inside a
transaction) or a glob of SQL files relative to the project root. Both are part of the fingerprint,
so editing a seed builds a new template. This module runs only against the scratch database.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import NullPool

from ..core.urls import libpq_variant, redact, render_for_driver, sync_variant
from ..errors import ConfigError, TemplateBuildError
from ..migrators.migrator import (
    hash_globs,
    interrupted_from_outside,
    project_glob,
    what_interrupted,
)


def _is_callable_entry(entry: str) -> bool:
    return ":" in entry and not entry.endswith(".sql")


@contextmanager
def importable_from(root: Path) -> Iterator[None]:
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        yield
    finally:
        if added:
            sys.path.remove(str(root))


def _import_failure(exc: Exception) -> str:
    """One line for an exception raised while importing: the file and line of a syntax error."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def seed_fingerprint(entries: Sequence[str], root: Path) -> str:
    h = hashlib.sha256(b"seed\0")
    for entry in entries:
        h.update(entry.encode() + b"\0")
        if _is_callable_entry(entry):
            module = entry.split(":", 1)[0]
            try:
                with importable_from(root):
                    spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):  # a parent package that does not exist
                spec = None
            except Exception as exc:  # finding `pkg.mod` imports `pkg`, which may be broken
                raise ConfigError(
                    f"seed {entry!r}: importing the package of {module!r} failed: "
                    f"{_import_failure(exc)}; fix that package so it imports"
                ) from None
            if spec is None or spec.origin is None or not Path(spec.origin).is_file():
                raise ConfigError(
                    f"seed {entry!r}: module {module!r} cannot be found; check the name or "
                    "add its directory to the project"
                )
            h.update(Path(spec.origin).read_bytes())
        else:
            h.update(hash_globs(root, [entry], what="seed").encode())
    return h.hexdigest()


def _execute_script(connection: Connection, script: str) -> None:
    """Run a SQL file as written: on the DBAPI cursor with no parameters, so `%` (LIKE 'a%',
    RAISE NOTICE '%') is plain text, not a placeholder the driver tries to fill."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(script)
    finally:
        cursor.close()


def _read_seed_file(path: Path, root: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"seed file {path.relative_to(root).as_posix()} is not UTF-8 text (byte "
            f"0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def run_seed(entries: Sequence[str], url: URL, root: Path) -> None:
    if not entries:
        return
    engine = create_engine(render_for_driver(libpq_variant(sync_variant(url))), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            for entry in entries:
                if _is_callable_entry(entry):
                    module_name, func_name = entry.split(":", 1)
                    with importable_from(root):
                        module = importlib.import_module(module_name)
                    func = getattr(module, func_name, None)
                    if not callable(func):
                        raise ConfigError(
                            f"seed {entry!r}: {func_name!r} is not a function in {module_name}"
                        )
                    func(connection)
                else:
                    for path in sorted(
                        p for p in project_glob(root, entry, what="seed") if p.is_file()
                    ):
                        _execute_script(connection, _read_seed_file(path, root))
    except ConfigError:
        raise
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {exc}".splitlines()[0], url)
        if interrupted_from_outside(exc):
            raise TemplateBuildError(
                f"the seed was interrupted from outside: {reason}; {what_interrupted(url)}: "
                "run again (no template was created)"
            ) from None
        raise TemplateBuildError(
            f"seed failed: {reason}; fix the seed (no template was created)"
        ) from None
    finally:
        engine.dispose()
