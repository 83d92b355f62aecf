"""The optional seed: rows every test expects, loaded after migrations, before the freeze. An entry
is `package.module:function` (called with a `Connection` in a transaction) or a glob of SQL files.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from sqlalchemy.engine import URL

from ..core.urls import redact
from ..errors import ConfigError, TemplateBuildError
from ..migrators.migrator import hash_globs, interruption, project_glob, sync_engine


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


def import_failure(exc: BaseException) -> str:
    """One line for what importing raised: the file and line of a syntax error."""
    text = " ".join(str(exc.msg if isinstance(exc, SyntaxError) else exc).split())
    if isinstance(exc, SyntaxError):
        text += f" ({exc.filename}, line {exc.lineno})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def seed_fingerprint(entries: Sequence[str], root: Path) -> str:
    h = hashlib.sha256(b"seed\0")
    for entry in entries:
        h.update(entry.encode() + b"\0")
        if not _is_callable_entry(entry):
            h.update(hash_globs(root, [entry], what="seed").encode())
            continue
        module = entry.split(":", 1)[0]
        try:
            with importable_from(root):
                spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # a parent package that does not exist
            spec = None
        except Exception as exc:  # finding `pkg.mod` imports `pkg`, which may be broken
            raise ConfigError(
                f"seed {entry!r}: importing the package of {module!r} failed: "
                f"{import_failure(exc)}; fix that package so it imports"
            ) from None
        if spec is None or spec.origin is None or not Path(spec.origin).is_file():
            raise ConfigError(
                f"seed {entry!r}: module {module!r} cannot be found; check the name or "
                "add its directory to the project"
            )
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()


def run_seed(entries: Sequence[str], url: URL, root: Path) -> None:
    if not entries:
        return
    try:
        with sync_engine(url) as engine, engine.begin() as connection:
            for entry in entries:
                if _is_callable_entry(entry):
                    module_name, func_name = entry.split(":", 1)
                    with importable_from(root):
                        func = getattr(importlib.import_module(module_name), func_name, None)
                    if not callable(func):
                        raise ConfigError(
                            f"seed {entry!r}: {func_name!r} is not a function in {module_name}"
                        )
                    func(connection)
                    continue
                for path in project_glob(root, entry, what="seed"):
                    try:
                        script = path.read_text(encoding="utf-8")
                    except UnicodeDecodeError as exc:
                        raise ConfigError(
                            f"seed file {path.relative_to(root).as_posix()} is not UTF-8 text "
                            f"(byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save "
                            "it as UTF-8"
                        ) from None
                    # On the DBAPI cursor with no parameters: `%` (LIKE 'a%') is plain text.
                    with closing(connection.connection.cursor()) as cursor:
                        cursor.execute(script)
    except ConfigError:
        raise
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {exc}".splitlines()[0], url)
        interrupted = interruption(exc, url)
        raise TemplateBuildError(
            f"seed failed: {reason}; fix the seed (no template was created)"
            if interrupted is None
            else f"the seed was interrupted from outside: {reason}; {interrupted}: "
            "run again (no template was created)"
        ) from None
