"""`testdb server ...`: start, stop and inspect the embedded PostgreSQL server (no project's
databases needed)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from .support import (
    EXIT_NOT_RUNNING,
    State,
    command_label,
    emit_json,
    for_humans,
    human_size,
    pass_state,
    print_table,
    reported_errors,
)

if TYPE_CHECKING:
    from ..embedded import EmbeddedServer, ServerInfo


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
        info = state.embedded.start()
        seconds = time.monotonic() - started
    if as_json:
        emit_json({**_server_json(info), "seconds": round(seconds, 3)})
    else:
        what = (
            "the embedded server is already running"
            if state.embedded.last_start_action == "running"
            else "started the embedded server"
        )
        click.echo(
            f"{what}: {for_humans(info.url)} (pid {info.pid}, PostgreSQL {info.version}, data "
            f"{info.data_dir}) in {seconds:.2f} s; `testdb server stop` ends it"
        )


def stop_unless_held(embedded_server: EmbeddedServer, *, force: bool) -> tuple[bool, list[str]]:
    """Stop the server unless a run or a command holds it (`ownership.SERVER_HOLD_LABEL`, as every
    `ProjectDatabases` session does; a killed run holds nothing), or anyway with `force`: whether
    it ran, and the holders. The hold is taken exclusively while it shuts down, so no run starts
    using it in between."""
    import psycopg

    from ..core.admin import Admin
    from ..core.ownership import SERVER_HOLD_LABEL, describe_holders
    from ..core.urls import with_application_name
    from ..errors import EmbeddedServerError

    info = embedded_server.status()
    if info is None:  # not running, or not answering a login: nobody can be using it
        return embedded_server.stop(), []
    admin = Admin(with_application_name(info.url, command_label()))
    try:
        free = force or admin.try_advisory_lock(SERVER_HOLD_LABEL)
        holders = admin.lock_holders(SERVER_HOLD_LABEL)
        if not force and (holders or not free):
            raise EmbeddedServerError(
                f"the embedded server is in use by {describe_holders(holders) or 'a session'}, "
                "so it was not stopped; wait for that to finish, or run `testdb server stop "
                "--force` to stop it anyway (those sessions end and their tests fail)"
            )
        return embedded_server.stop(), holders
    finally:
        with contextlib.suppress(psycopg.Error):  # the server ended it while shutting down
            admin.close()


@server.command("stop")
@click.option(
    "--force",
    is_flag=True,
    help="Stop it even while a test run or a command uses it (their sessions end).",
)
@click.option(
    "--purge",
    is_flag=True,
    help="Then remove its data from the cache dir; the next start creates a new cluster.",
)
@pass_state
def server_stop(state: State, force: bool, purge: bool) -> None:
    """Stop the embedded server; refused while a test run or a command uses it (--force). Its
    data (on /dev/shm by default) stays for a fast next start unless --purge."""
    from ..core.ownership import describe_holders

    with reported_errors():
        embedded_server = state.embedded
        stopped, ended = stop_unless_held(embedded_server, force=force)
        freed = embedded_server.purge() if purge else None
        kept = embedded_server.disk_usage() if not purge else 0
    if stopped:
        ending = f" (ended the sessions of {describe_holders(ended)})" if ended else ""
        click.echo(f"embedded server stopped{ending}")
    else:
        click.echo("embedded server was not running")
    if freed:
        click.echo(f"removed its data: {human_size(freed)} in {embedded_server.cache_dir}")
    elif kept:
        click.echo(
            f"its data ({human_size(kept)} in {embedded_server.cache_dir}) is kept for the next "
            "start; `testdb server stop --purge` removes it"
        )


@server.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_state
def server_status(state: State, as_json: bool) -> None:
    """URL (masked), PID, data dir, version and uptime of the embedded server; exit 3 if it is
    not running (as `pg_ctl status`)."""
    with reported_errors():
        info = state.embedded.status()
    if as_json:
        emit_json({"running": info is not None, **(_server_json(info) if info else {})})
    elif info is None:
        click.echo("embedded server is not running (testdb server start starts it)")
    else:
        rows = _server_json(info)
        print_table(["FIELD", "VALUE"], [[k, str(v)] for k, v in rows.items()])
    if info is None:
        sys.exit(EXIT_NOT_RUNNING)
