"""The Alembic implementation of `Migrator`, through Alembic's Python API, in-process.

The database's URL is set on the Alembic config *and* a connection to it is passed in
`config.attributes["connection"]`, so an env.py written either way works, sync or async.
"""

from __future__ import annotations

import configparser
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from ..core.urls import libpq_variant, render_for_driver, sync_variant
from ..errors import ConfigError, TemplateBuildError
from .alembic_errors import (
    ini_problem,
    migration_error,
    one_line,
    unloadable_env,
    unloadable_revision,
)
from .migrator import RevisionChain, hash_tree, sync_engine, tree_files

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Engine

# Options of the [alembic] section that do not change the schema, or hold machine-local values.
_NON_SCHEMA_OPTIONS = {"sqlalchemy.url", "script_location", "version_locations", "prepend_sys_path"}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


class AlembicMigrator:
    """Migrates with the project's alembic.ini and script directory."""

    def __init__(
        self,
        config_path: Path,
        *,
        script_location: str | None = None,
        project_root: Path | None = None,
        config_source: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.config_source = config_source  # where the path was set, for the error's fix
        self.script_location = script_location
        self.project_root = project_root or config_path.parent
        # Loading the script directory imports every revision file (~0.6 ms each): once while
        # the files' (path, size, mtime) stay the same (issue 11: a 200-revision chain).
        self._script: tuple[tuple[tuple[str, int, int], ...], ScriptDirectory] | None = None

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
                location = self.project_root / self.script_location  # or the absolute one
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
                f"cannot read Alembic config {self.config_path}: {ini_problem(exc)}"
            ) from None
        return cfg

    def script_directory(self, cfg: Config | None = None) -> ScriptDirectory:
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        cfg = cfg or self._config()
        try:
            script = ScriptDirectory.from_config(cfg)
        except CommandError as exc:
            raise ConfigError(
                f"Alembic cannot load the script directory from {self.config_path}: {exc}; "
                "fix script_location in alembic.ini or set script_location in [tool.testdb]"
            ) from None
        except ValueError as exc:  # e.g. truncate_slug_length = abc
            raise ConfigError(
                f"Alembic cannot use an option of [alembic] in {self.config_path}: "
                f"{one_line(str(exc))}; fix that option's value"
            ) from None
        signature = self._signature(script)
        if self._script is not None and self._script[0] == signature:
            return self._script[1]
        try:
            heads = script.get_heads()  # imports every revision file
        except Exception as exc:
            raise unloadable_revision(exc, script, self.config_path) from None
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
        all else: alembic.ini's schema options, every other file (env.py, helpers, script.py.mako)
        and a sourceless env.py's compiled file."""
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
        """Upgrade the database at `url` to head, then check that it really is at head.

        The connection passed is not in a transaction (as in Alembic's cookbook), so env.py's
        `begin_transaction()` owns it and `autocommit_block()` works. `sqlalchemy.url` holds the
        sync driver, which `async_engine_from_config` turns into its async twin."""
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
                    unloadable_env(exc, env_py, url) or migration_error(exc, script, url)
                ) from None
            self._verify_at_head(engine, script, url, seen)

    def _verify_at_head(
        self, engine: Engine, script: ScriptDirectory, url: URL, seen: list[tuple[str, str]]
    ) -> None:
        """Fail unless the database is at head: an env.py that takes its URL from elsewhere (the
        app's settings, DATABASE_URL) migrates another database and leaves the template empty,
        which would otherwise be reported as "built"."""
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
        heads = set(script.get_heads())
        if heads <= found:
            return
        others = sorted({where for database, where in seen if database != url.database})
        state = f"at {', '.join(sorted(found))}" if found else "without an alembic_version table"
        where = (
            f"env.py connected to {', '.join(others)} instead"
            if others
            else "env.py did not migrate the URL it was given"
        )
        raise TemplateBuildError(
            f"the template build left {url.database!r} {state}, not at head "
            f"{', '.join(sorted(heads))}: {where}; make env.py use the URL Alembic passes "
            "(config.get_main_option('sqlalchemy.url') or config.attributes['connection']), or, "
            "if it reads an environment variable, set export_url_as (e.g. "
            'export_url_as = ["DATABASE_URL"] in [tool.testdb]) (no template was created)'
        )
