"""Alembic's failures as the one-line errors the user sees, with the fix and never a password
(configparser's own messages repeat the offending line, which may hold a URL). A failing
migration keeps its traceback, redacted, as `details`.
"""

from __future__ import annotations

import configparser
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

from ..core.urls import redact
from ..errors import ConfigError, MigrationError
from .migrator import interruption

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory


def one_line(text: str) -> str:
    return " ".join(text.split())


def ini_problem(exc: UnicodeDecodeError | configparser.Error) -> str:
    """What is wrong with an alembic.ini, and the fix, never quoting the file's text."""
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"it is not {exc.encoding} text, the encoding Alembic reads it with (byte "
            f"0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as {exc.encoding}"
        )
    if isinstance(exc, configparser.InterpolationError):
        return (
            f"option {exc.option!r} in section [{exc.section}] has a '%' that cannot be "
            "interpolated (an unknown %(name)s, or a lone %); write %% for a literal %, or "
            "%(here)s for the file's directory"
        )
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [section] header; fix the file's INI syntax"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors)
        return f"line(s) {lines} are not `key = value` lines; fix the file's INI syntax"
    if isinstance(exc, configparser.DuplicateOptionError):
        return (
            f"option {exc.option!r} appears twice in section [{exc.section}] (line {exc.lineno}); "
            "keep one of them"
        )
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"section [{exc.section}] appears twice (line {exc.lineno}); merge them into one"
    return f"{type(exc).__name__}; fix the file's INI syntax"


def unloadable_env(exc: Exception, env_py: Path, url: URL) -> ConfigError | None:
    """env.py (or a file it imports) that Python cannot compile, or a failing import at the top of
    env.py; None for anything else (a failing migration)."""
    if isinstance(exc, SyntaxError):
        if exc.filename and exc.filename.startswith("<"):
            return None  # compile()/exec() of a string at run time: the migration's own error
        culprit = Path(exc.filename or env_py)
        if culprit.resolve() == env_py.resolve():
            return _cannot_load(f"env.py {env_py}", exc)
        return _cannot_load(f"{culprit} (imported while env.py ran)", exc)
    if not isinstance(exc, ImportError):
        return None
    # Only an import statement of env.py itself: the last frame that is not Python's import
    # machinery is env.py's module level (an ImportError inside a migration is that migration's).
    frames = [
        (frame, lineno)
        for frame, lineno in traceback.walk_tb(exc.__traceback__)
        if not frame.f_code.co_filename.startswith("<frozen ")
    ]
    if not frames:
        return None
    code, lineno = frames[-1][0].f_code, frames[-1][1]
    if code.co_name != "<module>" or Path(code.co_filename).resolve() != env_py.resolve():
        return None
    reason = redact(one_line(f"{type(exc).__name__}: {exc}"), url)
    return ConfigError(
        f"cannot load env.py {env_py}: {reason} (line {lineno}); install that module or make it "
        "importable (prepend_sys_path in alembic.ini), or fix the import in env.py"
    )


def unloadable_revision(exc: Exception, script: ScriptDirectory, config_path: Path) -> ConfigError:
    """A revision file Alembic could not import (syntax error, missing module)."""
    roots = [Path(p).resolve() for p in (script.dir, *script.version_locations)]
    culprit: str | None = exc.filename if isinstance(exc, SyntaxError) else None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        path = Path(frame.f_code.co_filename)
        if path.is_absolute() and any(path.resolve().is_relative_to(r) for r in roots):
            culprit = str(path)
    return _cannot_load(
        f"migration file {culprit}" if culprit else f"the migrations of {config_path}", exc
    )


def _cannot_load(where: str, exc: Exception) -> ConfigError:
    line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
    reason = one_line(str(exc.msg if isinstance(exc, SyntaxError) else exc))
    return ConfigError(
        f"cannot load {where}: {type(exc).__name__}: {reason}{line}; fix that file so Alembic "
        "can import it"
    )


def migration_error(exc: BaseException, script: ScriptDirectory, url: URL) -> MigrationError:
    """Name the revision whose file is deepest in the traceback: that is the one that failed."""
    by_path = {str(Path(rev.path).resolve()): rev for rev in script.walk_revisions() if rev.path}
    failing = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        failing = by_path.get(str(Path(frame.f_code.co_filename).resolve()), failing)
    details = redact("".join(traceback.format_exception(exc)), url)
    summary = redact(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}", url)
    interrupted = interruption(exc, url)
    if interrupted is not None:
        # Not the migration's fault: `fix that migration` would send the user the wrong way.
        return MigrationError(
            f"the build was interrupted from outside: {summary}; {interrupted}: "
            "nothing is wrong with the migrations, run again (no template was created)",
            revision=None,
            details=details,
        )
    if failing is not None:
        where = f"revision {failing.revision} ({Path(failing.path).name})"
        fix = "fix that migration and run again"
    else:
        where = "env.py / Alembic before or between revisions"
        fix = "check env.py and the database URL"
        missing = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
        if isinstance(missing, str) and missing.isidentifier() and missing.isupper():
            # env.py read an environment variable the build did not set: the usual cause.
            fix = (
                f"if env.py reads {missing} from the environment, set export_url_as = "
                f'["{missing}"] in [tool.testdb] so the build exports the scratch database\'s URL '
                "as it"
            )
    return MigrationError(
        f"migration failed in {where}: {summary}; {fix} (no template was created)",
        revision=failing.revision if failing is not None else None,
        details=details,
    )
