"""The Alembic implementation of `Migrator`, in-process through Alembic's Python API, and its
failures as one-line errors naming the fix, never a password (configparser's messages repeat the
offending line, which may hold a URL). The URL is set on the config *and* a connection to it is
passed in `config.attributes["connection"]`, so an env.py written either way works.
"""

from __future__ import annotations

import configparser
import hashlib
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from ..core.urls import libpq_variant, redact, render_for_driver, sync_variant
from ..errors import ConfigError, MigrationError, TemplateBuildError
from .migrator import RevisionChain, hash_tree, interruption, sync_engine, tree_files

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Engine

# Options of the [alembic] section that do not change the schema, or hold machine-local values.
_NON_SCHEMA_OPTIONS = {"sqlalchemy.url", "script_location", "version_locations", "prepend_sys_path"}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def _watching_env_py() -> Iterator[list[tuple[str, str]]]:
    """Undo what env.py's `fileConfig()` does to the caller's logging (it disables loggers), and
    record (database, "database on host:port") of every connection it opens, so a build that
    migrated the wrong database can say which one (no credentials kept)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def loggers() -> list[logging.Logger]:
        known = logging.root.manager.loggerDict.values()
        return [logging.getLogger(), *(lg for lg in known if isinstance(lg, logging.Logger))]

    def record(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        database = str(cparams.get("dbname") or cparams.get("database") or "?")
        host = cparams.get("host") or "localhost"
        seen.append((database, f"database {database!r} on {host}:{cparams.get('port') or 5432}"))

    saved = {lg: (lg.disabled, lg.level, list(lg.handlers), lg.propagate) for lg in loggers()}
    seen: list[tuple[str, str]] = []
    event.listen(Engine, "do_connect", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "do_connect", record)
        for lg in loggers():  # a logger env.py created is only enabled again
            lg.disabled, lg.level, handlers, lg.propagate = saved.get(
                lg, (False, lg.level, list(lg.handlers), lg.propagate)
            )
            lg.handlers[:] = handlers


@dataclass(eq=False)
class AlembicMigrator:
    """Migrates with the project's alembic.ini and script directory."""

    config_path: Path
    _: KW_ONLY
    script_location: str | None = None
    project_root: Path | None = None  # where a relative script_location starts; else the ini's
    config_source: str | None = None  # where the path was set, for the error's fix
    # Loading the script directory imports every revision file (~0.6 ms each): once while the
    # files' (path, size, mtime) stay the same (issue 11: a 200-revision chain).
    _script: tuple[tuple[tuple[str, int, int], ...], ScriptDirectory] | None = field(
        default=None, init=False, repr=False
    )

    def _config(self, url: URL | None = None) -> Config:
        # Imported on first use: a worker handed the controller's template never needs Alembic.
        from alembic.config import Config

        if not self.config_path.is_file():
            fix = "set alembic_config in [tool.testdb] or TESTDB_ALEMBIC_CONFIG"
            if self.config_source and self.config_source != "default":
                fix = f"fix the path given by {self.config_source}"
            raise ConfigError(
                f"Alembic config {self.config_path} does not exist; {fix} to your alembic.ini"
            )
        cfg = Config(str(self.config_path))
        try:
            parser = cfg.file_config  # parsed lazily; a broken file must fail here, in one line
            here = parser.defaults().get("here")
            if here and "%" in here:  # a project directory like `100%`: %(here)s must still work
                parser.set(parser.default_section, "here", here.replace("%", "%%"))
            if self.script_location:
                root = self.project_root or self.config_path.parent
                location = root / self.script_location  # or the absolute one
                cfg.set_main_option("script_location", str(location).replace("%", "%%"))
            if url is not None:  # configparser interpolates '%': a password's must be doubled
                cfg.set_main_option("sqlalchemy.url", render_for_driver(url).replace("%", "%%"))
            # Alembic and env.py read the options interpolated: a bad `%` fails here, not later
            # as a traceback; the file's sqlalchemy.url is replaced before anything reads it.
            section = cfg.config_ini_section
            for option in parser.options(section) if parser.has_section(section) else []:
                if option != "sqlalchemy.url":
                    parser.get(section, option)
        except (UnicodeDecodeError, configparser.Error) as exc:
            raise ConfigError(
                f"cannot read Alembic config {self.config_path}: {_ini_problem(exc)}"
            ) from None
        return cfg

    def script_directory(self, cfg: Config | None = None) -> ScriptDirectory:
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        try:
            script = ScriptDirectory.from_config(cfg or self._config())
        except CommandError as exc:
            raise ConfigError(
                f"Alembic cannot load the script directory from {self.config_path}: {exc}; "
                "fix script_location in alembic.ini or set script_location in [tool.testdb]"
            ) from None
        except ValueError as exc:  # e.g. truncate_slug_length = abc
            raise ConfigError(
                f"Alembic cannot use an option of [alembic] in {self.config_path}: "
                f"{_one_line(str(exc))}; fix that option's value"
            ) from None
        signature = self._signature(script)
        if self._script is not None and self._script[0] == signature:
            return self._script[1]
        try:
            heads = script.get_heads()  # imports every revision file
        except Exception as exc:
            raise _unloadable_revision(exc, script, self.config_path) from None
        if len(heads) > 1:
            raise ConfigError(
                f"the migration chain has {len(heads)} heads ({', '.join(sorted(heads))}); "
                "merge them with `alembic merge heads` so the template has one target schema"
            )
        if not heads:
            raise ConfigError(
                f"the script directory {script.dir} has no revisions; create one with "
                "`alembic revision`"
            )
        self._script = (signature, script)
        return script

    def _signature(self, script: ScriptDirectory) -> tuple[tuple[str, int, int], ...]:
        """(path, size, mtime) of every file Alembic may load, through symlinked directories."""
        entries = []
        for location in self._locations(script):
            for _, path in tree_files(location):
                try:
                    st = path.stat()
                except OSError as exc:  # a dangling symlink or a loop among the migrations
                    if path.suffix not in (".py", ".pyc", ".pyo"):
                        continue  # a file Alembic never opens
                    raise ConfigError(
                        f"cannot read migration file {path}: {exc.strerror or exc}; fix or "
                        "remove it (a symlink to a file that is gone?)"
                    ) from None
                entries.append((str(path), st.st_size, st.st_mtime_ns))
        return tuple(sorted(entries))

    @staticmethod
    def _locations(script: ScriptDirectory) -> list[Path]:
        """The script directory and every existing version location, as Alembic resolves them.
        Each is hashed whole: whether one lies inside another depends on symlinks, not spelling."""
        from alembic.util import coerce_resource_to_filename

        found = [Path(coerce_resource_to_filename(p)).absolute() for p in script.version_locations]
        return [Path(script.dir)] + [p for p in found if p.is_dir()]  # Alembic skips the rest

    def _lineage(
        self, prefix: bytes
    ) -> tuple[ScriptDirectory, list[tuple[str, Path]], hashlib._Hash]:
        """The script directory, (revision id, resolved file) of every revision, and a hash of
        all else: alembic.ini's schema options, every other file, a sourceless env.py's .pyc."""
        from alembic.util import pyc_file_from_path

        cfg = self._config()
        script = self.script_directory(cfg)
        revisions = sorted(
            (rev.revision, Path(rev.path).resolve()) for rev in script.walk_revisions() if rev.path
        )
        h = hashlib.sha256(prefix)
        parser, section = cfg.file_config, cfg.config_ini_section
        options = set(parser.options(section)) - set(parser.defaults()) - _NON_SCHEMA_OPTIONS
        for key in sorted(options):
            h.update(f"{key}={parser.get(section, key, raw=True)}\0".encode())
        for location in self._locations(script):
            h.update(hash_tree(location, exclude=frozenset(p for _, p in revisions)).encode())
        env_py = Path(script.dir) / "env.py"
        compiled = None if env_py.is_file() else pyc_file_from_path(env_py)
        if compiled is not None:
            h.update(f"env\0{_file_digest(compiled)}\0".encode())
        return script, revisions, h

    def fingerprint(self) -> str:
        """The lineage, and every revision file by revision id, wherever it lies."""
        _, revisions, h = self._lineage(b"alembic\0")
        for revision, path in revisions:
            h.update(f"{revision}\0{_file_digest(path)}\0".encode())
        return h.hexdigest()

    def revision_chain(self) -> RevisionChain | None:
        """The linear path base→head with a hash per revision file; None for a non-linear history
        (merge points, depends_on), which extend does not handle."""
        script, _, h = self._lineage(b"alembic-lineage\0")
        walked = list(script.walk_revisions())  # head first
        below = [rev.revision for rev in walked[1:]] + [None]
        for rev, down in zip(walked, below, strict=True):
            if rev.down_revision != down or rev.dependencies or not rev.path:
                return None
        revisions = tuple((rev.revision, _file_digest(Path(rev.path))) for rev in reversed(walked))
        return RevisionChain(h.hexdigest(), revisions)

    def target_heads(self) -> set[str]:
        return set(self.script_directory().get_heads())

    def database_heads(self, url: URL) -> set[str]:
        """The revisions recorded in the database at `url` (its alembic_version table)."""
        from alembic.runtime.migration import MigrationContext

        with sync_engine(url) as engine, engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())

    def migrate(self, url: URL) -> None:
        """Upgrade the database at `url` to head, then check that it really is at head. The
        connection passed is not in a transaction (Alembic's cookbook), so env.py's
        `begin_transaction()` owns it; `async_engine_from_config` makes the sync URL async."""
        from alembic import command
        from alembic.util import pyc_file_from_path

        cfg = self._config(libpq_variant(sync_variant(url)))
        script = self.script_directory(cfg)
        env_py = Path(script.dir) / "env.py"
        if not env_py.is_file() and pyc_file_from_path(env_py) is None:
            # Alembic's own error is an ImportError deep in a traceback.
            raise ConfigError(
                f"Alembic's env.py is missing: expected {env_py} (the script_location of "
                f"{self.config_path}); restore it (`alembic init` writes one) or fix "
                "script_location"
            )
        with sync_engine(url) as engine:
            try:
                with _watching_env_py() as seen, engine.connect() as connection:
                    cfg.attributes["connection"] = connection
                    command.upgrade(cfg, "head")
                    if connection.in_transaction():  # env.py ran without begin_transaction()
                        connection.commit()
            except Exception as exc:
                raise (
                    _unloadable_env(exc, env_py, url) or _migration_error(exc, script, url)
                ) from None
            _verify_at_head(engine, set(script.get_heads()), url, seen)


def _verify_at_head(engine: Engine, heads: set[str], url: URL, seen: list[tuple[str, str]]) -> None:
    """Fail unless the database is at head: an env.py that takes its URL from elsewhere (the app's
    settings, DATABASE_URL) migrates another database and leaves the template empty, which would
    otherwise be reported as "built"."""
    from sqlalchemy import text

    with engine.connect() as connection:
        tables = connection.execute(
            text(
                "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
                "FROM information_schema.columns WHERE column_name = 'version_num' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
        ).scalars()
        found: set[str] = set()
        for table in list(tables):
            found |= set(connection.execute(text(f"SELECT version_num FROM {table}")).scalars())
    if heads <= found:
        return
    others = sorted({where for database, where in seen if database != url.database})
    state = f"at {', '.join(sorted(found))}" if found else "without an alembic_version table"
    where = "env.py did not migrate the URL it was given"
    if others:
        where = f"env.py connected to {', '.join(others)} instead"
    raise TemplateBuildError(
        f"the template build left {url.database!r} {state}, not at head "
        f"{', '.join(sorted(heads))}: {where}; make env.py use the URL Alembic passes "
        "(config.get_main_option('sqlalchemy.url') or config.attributes['connection']), or, "
        "if it reads an environment variable, set export_url_as (e.g. "
        'export_url_as = ["DATABASE_URL"] in [tool.testdb]) (no template was created)'
    )


def _ini_problem(exc: UnicodeDecodeError | configparser.Error) -> str:
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
    if isinstance(exc, configparser.DuplicateOptionError):
        where = f"option {exc.option!r} appears twice in section [{exc.section}]"
        return f"{where} (line {exc.lineno}); keep one of them"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"section [{exc.section}] appears twice (line {exc.lineno}); merge them into one"
    problem = type(exc).__name__
    if isinstance(exc, configparser.MissingSectionHeaderError):
        problem = f"line {exc.lineno} comes before any [section] header"
    elif isinstance(exc, configparser.ParsingError):
        problem = f"line(s) {', '.join(str(n) for n, _ in exc.errors)} are not `key = value` lines"
    return f"{problem}; fix the file's INI syntax"


def _unloadable_env(exc: Exception, env_py: Path, url: URL) -> ConfigError | None:
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
        (frame.f_code, lineno)
        for frame, lineno in traceback.walk_tb(exc.__traceback__)  # never empty: migrate's first
        if not frame.f_code.co_filename.startswith("<frozen ")
    ]
    code, lineno = frames[-1]
    if code.co_name != "<module>" or Path(code.co_filename).resolve() != env_py.resolve():
        return None
    reason = redact(_one_line(f"{type(exc).__name__}: {exc}"), url)
    return ConfigError(
        f"cannot load env.py {env_py}: {reason} (line {lineno}); install that module or make it "
        "importable (prepend_sys_path in alembic.ini), or fix the import in env.py"
    )


def _unloadable_revision(exc: Exception, script: ScriptDirectory, config: Path) -> ConfigError:
    """A revision file Alembic could not import (syntax error, missing module)."""
    roots = [Path(p).resolve() for p in (script.dir, *script.version_locations)]
    culprit: str | None = exc.filename if isinstance(exc, SyntaxError) else None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        path = Path(frame.f_code.co_filename)
        if path.is_absolute() and any(path.resolve().is_relative_to(r) for r in roots):
            culprit = str(path)
    return _cannot_load(
        f"migration file {culprit}" if culprit else f"the migrations of {config}", exc
    )


def _cannot_load(where: str, exc: Exception) -> ConfigError:
    line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
    reason = _one_line(str(exc.msg if isinstance(exc, SyntaxError) else exc))
    return ConfigError(
        f"cannot load {where}: {type(exc).__name__}: {reason}{line}; fix that file so Alembic "
        "can import it"
    )


def _migration_error(exc: BaseException, script: ScriptDirectory, url: URL) -> MigrationError:
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
