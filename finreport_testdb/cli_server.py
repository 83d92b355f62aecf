"""`testdb server ...`: start, stop and inspect the embedded PostgreSQL server.

Its own module because it is the one command group that never needs a project's databases: it
works on the server alone (the database commands are in cli.py, what both share in
cli_support.py).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from .cli_support import (
    EXIT_NOT_RUNNING,
    State,
    embedded,
    emit_json,
    for_humans,
    pass_state,
    print_table,
    reported_errors,
)

if TYPE_CHECKING:
    from .embedded_server import ServerInfo


@click.group()
def server() -> None:
    """The embedded PostgreSQL server used when no URL is configured."""


def _server_json(info: ServerInfo) -> dict[str, Any]:
    return {
        "url": for_humans(info.url),
        "pid": info.pid,
        "port": info.port,
        "data_dir": str(info.data_dir),
        "version": info.version,
        "uptime_seconds": round(time.time() - info.started_at, 1),
    }


@server.command("start")
@click.option("--json", "as_json", is_flag=True, help="Print the server as JSON.")
@pass_state
def server_start(state: State, as_json: bool) -> None:
    """Start the embedded server (or report the running one)."""
    with reported_errors():
        started = time.monotonic()
        info = embedded(state).start()
        seconds = time.monotonic() - started
    if as_json:
        emit_json({**_server_json(info), "seconds": round(seconds, 3)})
    else:
        click.echo(
            f"embedded server running: {for_humans(info.url)} (pid {info.pid}, "
            f"PostgreSQL {info.version}, data {info.data_dir}) in {seconds:.2f} s"
        )


@server.command("stop")
@pass_state
def server_stop(state: State) -> None:
    """Stop the embedded server."""
    with reported_errors():
        stopped = embedded(state).stop()
    click.echo("embedded server stopped" if stopped else "embedded server was not running")


@server.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_state
def server_status(state: State, as_json: bool) -> None:
    """URL (masked), PID, data dir, version and uptime of the embedded server; exit 3 if it is
    not running (as `pg_ctl status`), so scripts can test it."""
    with reported_errors():
        info = embedded(state).status()
    if as_json:
        emit_json({"running": info is not None, **(_server_json(info) if info else {})})
    elif info is None:
        click.echo("embedded server is not running (testdb server start starts it)")
    else:
        rows = _server_json(info)
        print_table(["FIELD", "VALUE"], [[k, str(v)] for k, v in rows.items()])
    if info is None:
        sys.exit(EXIT_NOT_RUNNING)
