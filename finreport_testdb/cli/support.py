"""What the `testdb` commands share: the group's state (settings and the manager, resolved on
first use), one-line error reporting with the CLI's exit codes, and output helpers.

Like the commands, it imports SQLAlchemy, psycopg and Alembic only inside functions, so that
`testdb --help` costs little more than importing click.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ..errors import ConfigError, FinreportTestdbError, MigrationError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from ..core.settings import Settings
    from ..databases import ProjectDatabases
    from ..embedded import EmbeddedServer

#: The option behind each setting of the `testdb` group, so errors name what the user typed.
FLAGS = {
    "url": "--url",
    "namespace": "--namespace",
    "alembic_config": "--alembic-config",
    "maintenance_db": "--maintenance-db",
    "cache_dir": "--cache-dir",
    "drift_check": "--no-drift-check",
}
#: `testdb server status` when no server runs: pg_ctl status's code for "not running".
EXIT_NOT_RUNNING = 3


class State:
    """Options of the `testdb` group; settings and the manager are resolved on first use."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self._settings: Settings | None = None
        self._databases: ProjectDatabases | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from ..core.settings import resolve_settings

            self._settings = resolve_settings(self.overrides, flags=FLAGS)
        return self._settings

    def _require_a_project(self) -> None:
        """Outside any project, with no URL, no command may start (and leave running) an
        embedded server of its own: `clean` and `status` would find nothing there, and `url`,
        `fingerprint` and `prepare-template` have no project to work for."""
        settings = self.settings
        if settings.url is not None or settings.pyproject is not None:
            return
        if settings.alembic_config.is_file() or embedded(self).status() is not None:
            return
        raise ConfigError(
            f"no project here (no pyproject.toml or alembic.ini in {settings.project_root} or "
            f"above) and no URL configured, and no embedded server runs for it: nothing to work "
            f"on; run testdb in your project directory or pass --url / set TESTDB_URL"
        )

    @property
    def databases(self) -> ProjectDatabases:
        """The project's databases; starting the embedded server if it is the server and it is
        not running, which is said on stderr (it keeps running after the command)."""
        if self._databases is None:
            from ..databases import ProjectDatabases

            self._require_a_project()
            databases = ProjectDatabases.from_settings(self.settings)
            databases.application_name = command_label()
            if databases.embedded_action not in (None, "running"):
                click.echo(started_note(databases.server_url), err=True)
            self._databases = databases
        return self._databases


def command_label() -> str:
    """The `application_name` of this command's sessions ("testdb clean pid 77"), so `testdb
    server stop` can name a command that is using the server."""
    from ..core.ownership import session_label

    context = click.get_current_context(silent=True)
    command = context.command_path if context is not None else "testdb"
    return session_label(f"{command} pid {os.getpid()}")


def started_note(server_url: URL) -> str:
    """What a command that had to start the embedded server says about it (on stderr, so
    `--json` output stays JSON): a server left running must never be a surprise."""
    from ..core.urls import server_label

    return (
        f"started the embedded PostgreSQL server on {server_label(server_url)}; it keeps running "
        "for the next command or test run: `testdb server stop` ends it"
    )


def shown(name: str) -> str:
    """A database name as the CLI prints it: as is, or quoted with its control characters
    escaped. Names of other people's databases come from the server, and a newline or an escape
    sequence in one must not forge a line of our output or drive the terminal."""
    return name if name.isprintable() else repr(name)


def for_humans(url: URL) -> str:
    from ..core.urls import render_for_humans

    return render_for_humans(url)


def for_driver(url: URL) -> str:
    from ..core.urls import render_for_driver

    return render_for_driver(url)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a `FinreportTestdbError` into one stderr line and exit 1 (a migration also shows its
    traceback)."""
    try:
        yield
    except MigrationError as exc:
        if exc.details:
            click.echo(exc.details.rstrip(), err=True)
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except FinreportTestdbError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def emit_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    for line in [headers, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


pass_state = click.make_pass_decorator(State)


def embedded(state: State) -> EmbeddedServer:
    """The embedded server of the project `state` points at (not started)."""
    from ..embedded import EmbeddedServer, default_cache_dir

    return EmbeddedServer(default_cache_dir(state.settings.project_root))
