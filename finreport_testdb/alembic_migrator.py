"""The Alembic implementation of `Migrator`, through Alembic's Python API only.

Migrations run against the scratch database in-process: the URL is set on the Alembic config (with
`%` escaped for configparser, the classic way a password gets mangled) *and* a connection is passed in
`config.attributes["connection"]`, so an `env.py` written either way works, sync or async. This module
knows nothing about templates; it must not touch any database but the one it is given.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from .errors import ConfigError, MigrationError, TemplateBuildError
from .migrator import hash_tree
from .urls import redact, render_for_driver, sync_variant

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Engine

# Options of the [alembic] section that do not change the schema, or hold machine-local values.
_NON_SCHEMA_OPTIONS = {"sqlalchemy.url", "script_location", "version_locations", "prepend_sys_path"}


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
    ) -> None:
        self.config_path = config_path
        self.script_location = script_location
        self.project_root = project_root or config_path.parent

    def _config(self, url: URL | None = None) -> Config:
        # Alembic is imported on first use, not with this module: an xdist worker that is handed
        # the controller's template never needs it (and importing it costs ~0.1 s per process).
        from alembic.config import Config

        if not self.config_path.is_file():
            raise ConfigError(
                f"Alembic config {self.config_path} does not exist; set alembic_config in "
                "[tool.testdb] or TESTDB_ALEMBIC_CONFIG to your alembic.ini"
            )
        cfg = Config(str(self.config_path))
        if self.script_location:
            location = Path(self.script_location)
            if not location.is_absolute():
                location = self.project_root / location
            cfg.set_main_option("script_location", str(location))
        if url is not None:
            # configparser interpolation treats '%' specially: a password with '%' must be doubled.
            cfg.set_main_option("sqlalchemy.url", render_for_driver(url).replace("%", "%%"))
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
        heads = script.get_heads()
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
        return script

    def fingerprint(self) -> str:
        cfg = self._config()
        script = self.script_directory(cfg)
        h = hashlib.sha256(b"alembic\0")
        parser = cfg.file_config
        section = cfg.config_ini_section
        defaults = set(parser.defaults())
        for key in sorted(set(parser.options(section)) - defaults - _NON_SCHEMA_OPTIONS):
            h.update(f"{key}={parser.get(section, key, raw=True)}\0".encode())
        locations = [Path(script.dir)] + [
            Path(p) for p in script.version_locations if not Path(p).is_relative_to(script.dir)
        ]
        for location in locations:
            h.update(hash_tree(location).encode())
        return h.hexdigest()

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

        cfg = self._config(sync_variant(url))
        script = self.script_directory(cfg)
        engine = create_engine(render_for_driver(sync_variant(url)), poolclass=NullPool)
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
            raise self._migration_error(exc, script, url) from None
        try:
            self._verify_at_head(engine, script, url, seen)
        finally:
            engine.dispose()

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

    def _migration_error(
        self, exc: BaseException, script: ScriptDirectory, url: URL
    ) -> MigrationError:
        """Name the revision whose file is deepest in the traceback: that is the one that failed."""
        by_path = {
            str(Path(rev.path).resolve()): rev for rev in script.walk_revisions() if rev.path
        }
        failing = None
        tb: TracebackType | None = exc.__traceback__
        while tb is not None:
            failing = by_path.get(str(Path(tb.tb_frame.f_code.co_filename).resolve()), failing)
            tb = tb.tb_next
        details = redact("".join(traceback.format_exception(exc)), url)
        summary = redact(
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            url,
        )
        if failing is not None:
            where = f"revision {failing.revision} ({Path(failing.path).name})"
            fix = "fix that migration and run again"
        else:
            where = "env.py / Alembic before or between revisions"
            fix = "check env.py and the database URL"
        return MigrationError(
            f"migration failed in {where}: {summary}; {fix} (no template was created)",
            revision=failing.revision if failing is not None else None,
            details=details,
        )
