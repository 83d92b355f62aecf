"""What the `testdb` commands share: the group's state (resolved on first use), one-line errors
with the CLI's exit codes, and output. Database libraries are imported inside functions only.
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from ..core.settings import SETTINGS, Settings, resolve_settings
from ..errors import ConfigError, FinreportTestdbError, MigrationError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from ..databases import ProjectDatabases
    from ..embedded import EmbeddedServer

#: The option behind each setting a command takes, so errors name what the user typed.
FLAGS = {s.name: s.flag() for s in SETTINGS if s.cli}


class State:
    """Options of the `testdb` group; what they resolve to is resolved on first use."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides

    @cached_property
    def settings(self) -> Settings:
        return resolve_settings(self.overrides, flags=FLAGS)

    @cached_property
    def embedded(self) -> EmbeddedServer:
        """The project's embedded server (not started)."""
        from ..embedded import EmbeddedServer, default_cache_dir

        return EmbeddedServer(default_cache_dir(self.settings.project_root))

    @cached_property
    def databases(self) -> ProjectDatabases:
        """The project's databases; starting the embedded server is said on stderr (`--json`
        output stays JSON). Outside any project, with no URL, no command may start (and leave
        running) a server: it would have nothing to work on."""
        from ..core.urls import server_label
        from ..databases import ProjectDatabases

        settings = self.settings
        if not (
            settings.url is not None
            or settings.pyproject is not None
            or settings.alembic_config.is_file()
            or self.embedded.status() is not None
        ):
            raise ConfigError(
                f"no project here (no pyproject.toml or alembic.ini in {settings.project_root} or "
                f"above) and no URL configured, and no embedded server runs for it: nothing to "
                f"work on; run testdb in your project directory or pass --url / set TESTDB_URL"
            )
        databases = ProjectDatabases.from_settings(settings)
        databases.application_name = command_label()
        if databases.embedded_action not in (None, "running"):
            click.echo(
                f"started the embedded PostgreSQL server on {server_label(databases.server_url)}; "
                "it keeps running for the next command or test run: `testdb server stop` ends it",
                err=True,
            )
        return databases


pass_state = click.make_pass_decorator(State)


def command_label() -> str:
    """The `application_name` of this command's sessions ("testdb clean pid 77"), for `testdb
    server stop`."""
    from ..core.ownership import session_label

    return session_label(f"{click.get_current_context().command_path} pid {os.getpid()}")


def shown(name: str) -> str:
    """A database name as printed: as is, or quoted with its control characters escaped, so that
    another's database name cannot forge a line of our output or drive the terminal."""
    return name if name.isprintable() else repr(name)


def for_humans(url: URL) -> str:
    from ..core.urls import render_for_humans

    return render_for_humans(url)


class Group(click.Group):
    """A group whose commands' `FinreportTestdbError`s are one stderr line and exit 1 (a
    migration's also shows its traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FinreportTestdbError as exc:
            if isinstance(exc, MigrationError) and exc.details:
                click.echo(exc.details.rstrip(), err=True)
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


def emit_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value, units = float(size), ["B", "kB", "MB", "GB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.0f} B" if units[0] == "B" else f"{value:.1f} {units[0]}"


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
