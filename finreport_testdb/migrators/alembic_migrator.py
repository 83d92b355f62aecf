"""The Alembic implementation of `Migrator`, through Alembic's Python API only.

Migrations run against the scratch database in-process: the URL is set on the Alembic config (with
`%` escaped for configparser, the classic way a password gets mangled) *and* a connection is passed in
`config.attributes["connection"]`, so an `env.py` written either way works, sync or async. This module
knows nothing about templates; it must not touch any database but the one it is given.
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
from .migrator import hash_tree, tree_files

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Engine

    from .migrator import RevisionChain

# Options of the [alembic] section that do not change the schema, or hold machine-local values.
_NON_SCHEMA_OPTIONS = {"sqlalchemy.url", "script_location", "version_locations", "prepend_sys_path"}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _preserve_logging() -> Iterator[None]:
    """Undo what an env.py's `fileConfig()` does to the caller's logging (it disables loggers)."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved = {
        name: (lg.disabled, lg.level, list(lg.handlers), lg.propagate)
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    try:
        yield
    finally:
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        for name, lg in logging.root.manager.loggerDict.items():
            if not isinstance(lg, logging.Logger):
                continue
            if name in saved:
                lg.disabled, lg.level, handlers, lg.propagate = saved[name]
                lg.handlers[:] = handlers
            else:
                lg.disabled = False


@contextmanager
def _recording_connections() -> Iterator[list[tuple[str, str]]]:
    """(database, "database on host:port") of every connection any engine opens in the block, so a
    build that migrated the wrong database can say which one env.py used (no credentials kept)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: list[tuple[str, str]] = []

    def record(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        database = str(cparams.get("dbname") or cparams.get("database") or "?")
        host = cparams.get("host") or "localhost"
        seen.append((database, f"database {database!r} on {host}:{cparams.get('port') or 5432}"))

    event.listen(Engine, "do_connect", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "do_connect", record)


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
        # Loading the script directory imports every revision file (~0.6 ms each): once per
        # migrator, not once per fingerprint, chain, migrate and head check (issue 11: extending a
        # 200-revision chain by one revision spent most of its time re-reading the other 199).
        # Keyed by the files' (path, size, mtime): an edited or added revision reloads.
        self._script: tuple[tuple[tuple[str, int, int], ...], ScriptDirectory] | None = None

    def _config(self, url: URL | None = None) -> Config:
        # Alembic is imported on first use, not with this module: an xdist worker that is handed
        # the controller's template never needs it (and importing it costs ~0.1 s per process).
        from alembic.config import Config

        if not self.config_path.is_file():
            if self.config_source and self.config_source != "default":
                fix = f"fix the path given by {self.config_source}"
            else:
                fix = "set alembic_config in [tool.testdb] or TESTDB_ALEMBIC_CONFIG"
            raise ConfigError(
                f"Alembic config {self.config_path} does not exist; {fix} to your alembic.ini"
            )
        cfg = Config(str(self.config_path))
        try:
            parser = cfg.file_config  # parsed lazily; a broken file must fail here, in one line
        except (UnicodeDecodeError, configparser.Error) as exc:
            raise ConfigError(
                f"cannot read Alembic config {self.config_path}: {ini_problem(exc)}"
            ) from None
        here = parser.defaults().get("here")
        if here and "%" in here:  # a project directory named like `100%`: %(here)s must still work
            parser.set(parser.default_section, "here", here.replace("%", "%%"))
        if self.script_location:
            location = Path(self.script_location)
            if not location.is_absolute():
                location = self.project_root / location
            cfg.set_main_option("script_location", str(location).replace("%", "%%"))
        if url is not None:
            # configparser interpolation treats '%' specially: a password with '%' must be doubled.
            cfg.set_main_option("sqlalchemy.url", render_for_driver(url).replace("%", "%%"))
        self._check_interpolation(cfg)
        return cfg

    def _check_interpolation(self, cfg: Config) -> None:
        """Alembic and env.py read the main section's options interpolated (`get_main_option`,
        `get_section`): a bad `%` must fail here, in one line, not as a traceback later. The
        file's `sqlalchemy.url` is skipped: testdb always replaces it before anything reads it."""
        parser = cfg.file_config
        section = cfg.config_ini_section
        if not parser.has_section(section):
            return  # script_directory() says that the section is missing
        try:
            for option in parser.options(section):
                if option != "sqlalchemy.url":
                    parser.get(section, option)
        except configparser.Error as exc:
            raise ConfigError(
                f"cannot read Alembic config {self.config_path}: {ini_problem(exc)}"
            ) from None

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
        """(path, size, mtime) of every file in the script directory and the version locations,
        through symlinks (`tree_files`): a revision added to a symlinked `versions/` reloads."""
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

    def fingerprint(self) -> str:
        """Everything Alembic loads: every file of the script directory and of each version
        location (through symlinks, wherever they lie), the env.py it runs, every revision file
        it found (by revision id, wherever it lies; also sourceless `.pyc` revisions), and the
        schema options of alembic.ini."""
        cfg = self._config()
        script = self.script_directory(cfg)
        h = hashlib.sha256(b"alembic\0")
        revisions = self._revision_files(script)
        self._hash_lineage(cfg, script, h, exclude=frozenset(path for _, path in revisions))
        for revision, path in revisions:
            h.update(f"{revision}\0{_file_digest(path)}\0".encode())
        return h.hexdigest()

    def _hash_lineage(
        self, cfg: Config, script: ScriptDirectory, h: hashlib._Hash, *, exclude: frozenset[Path]
    ) -> None:
        """Everything but the revision files: alembic.ini's schema options, each location's
        files, and the compiled env.py Alembic runs when there is no env.py (sourceless)."""
        self._hash_options(cfg, h)
        for location in self._locations(script):
            h.update(hash_tree(location, exclude=exclude).encode())
        env_py = Path(script.dir) / "env.py"
        if not env_py.is_file():
            from alembic.util import pyc_file_from_path

            compiled = pyc_file_from_path(env_py)
            if compiled is not None:
                h.update(f"env\0{_file_digest(compiled)}\0".encode())

    @staticmethod
    def _revision_files(script: ScriptDirectory) -> list[tuple[str, Path]]:
        """(revision id, resolved file) of every revision Alembic loaded, sorted by id."""
        return sorted(
            (rev.revision, Path(rev.path).resolve()) for rev in script.walk_revisions() if rev.path
        )

    @staticmethod
    def _hash_options(cfg: Config, h: hashlib._Hash) -> None:
        parser = cfg.file_config
        section = cfg.config_ini_section
        defaults = set(parser.defaults())
        for key in sorted(set(parser.options(section)) - defaults - _NON_SCHEMA_OPTIONS):
            h.update(f"{key}={parser.get(section, key, raw=True)}\0".encode())

    @staticmethod
    def _locations(script: ScriptDirectory) -> list[Path]:
        """The script directory and every version location, as Alembic resolves them (a
        `package:path` resource, a path relative to the working directory). Each is hashed as a
        whole even when it lies inside the script directory: whether it does is a question of
        symlinks and `..`, which a test on the spelling of the path cannot answer (a symlinked
        `versions/` was inside by spelling and never hashed). One that does not exist has no
        revisions, and Alembic skips it."""
        from alembic.util import coerce_resource_to_filename

        locations = [
            Path(coerce_resource_to_filename(p)).absolute() for p in script.version_locations
        ]
        return [Path(script.dir)] + [p for p in locations if p.is_dir()]  # Alembic skips the rest

    def revision_chain(self) -> RevisionChain | None:
        """The linear path base→head with a hash per revision file, and the lineage (options and
        every other file: env.py, helpers, script.py.mako); None for a non-linear history (merge
        points, depends_on), which extend does not handle."""
        from .migrator import RevisionChain

        cfg = self._config()
        script = self.script_directory(cfg)
        walked = list(script.walk_revisions())  # head first
        revisions: list[tuple[str, str]] = []
        for index, rev in enumerate(walked):
            below = walked[index + 1].revision if index + 1 < len(walked) else None
            if rev.down_revision != below or rev.dependencies or not rev.path:
                return None
            revisions.append((rev.revision, _file_digest(Path(rev.path))))
        h = hashlib.sha256(b"alembic-lineage\0")
        exclude = frozenset(path for _, path in self._revision_files(script))
        self._hash_lineage(cfg, script, h, exclude=exclude)
        return RevisionChain(h.hexdigest(), tuple(reversed(revisions)))

    def target_heads(self) -> set[str]:
        return set(self.script_directory().get_heads())

    def database_heads(self, url: URL) -> set[str]:
        """The revisions recorded in the database at `url` (its alembic_version table)."""
        from alembic.runtime.migration import MigrationContext
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(
            render_for_driver(libpq_variant(sync_variant(url))), poolclass=NullPool
        )
        try:
            with engine.connect() as connection:
                return set(MigrationContext.configure(connection).get_current_heads())
        finally:
            engine.dispose()

    def migrate(self, url: URL) -> None:
        """Upgrade the database at `url` to head, then check that it really is at head.

        The connection in `config.attributes["connection"]` is *not* inside a transaction (the
        way Alembic's cookbook shares a connection), so env.py's `context.begin_transaction()`
        owns the transaction and migrations that use `autocommit_block()` (`CREATE INDEX
        CONCURRENTLY`, `ALTER TYPE ... ADD VALUE`) can run. An env.py that builds its own engine
        (the stock sync and async templates) finds the URL in `sqlalchemy.url`: the sync driver
        variant, which `engine_from_config` can use and `async_engine_from_config` turns into
        its async twin (psycopg → psycopg_async).
        """
        from alembic import command
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        cfg = self._config(libpq_variant(sync_variant(url)))
        script = self.script_directory(cfg)
        env_py = self._env_py(script)
        engine = create_engine(
            render_for_driver(libpq_variant(sync_variant(url))), poolclass=NullPool
        )
        try:
            with (
                _preserve_logging(),
                _recording_connections() as seen,
                engine.connect() as connection,
            ):
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
                if connection.in_transaction():  # env.py ran without begin_transaction()
                    connection.commit()
        except Exception as exc:
            unloadable = unloadable_env(exc, env_py, url)
            if unloadable is not None:
                raise unloadable from None
            raise migration_error(exc, script, url) from None
        try:
            self._verify_at_head(engine, script, url, seen)
        finally:
            engine.dispose()

    def _env_py(self, script: ScriptDirectory) -> Path:
        """The env.py Alembic will run; missing, it is one line naming where it was expected
        (Alembic's own error is an ImportError deep in a traceback)."""
        from alembic.util import pyc_file_from_path

        env_py = Path(script.dir) / "env.py"
        if not env_py.is_file() and pyc_file_from_path(env_py) is None:
            raise ConfigError(
                f"Alembic's env.py is missing: expected {env_py} (the script_location of "
                f"{self.config_path}); restore it (`alembic init` writes one) or fix "
                "script_location"
            )
        return env_py

    def _verify_at_head(
        self, engine: Engine, script: ScriptDirectory, url: URL, seen: list[tuple[str, str]]
    ) -> None:
        """Fail unless the migrated database is at the chain's head: an env.py that takes its URL
        from somewhere else (the app's settings, DATABASE_URL) migrates another database and
        leaves the template empty, which would otherwise be reported as "built"."""
        from sqlalchemy import text

        heads = set(script.get_heads())
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
