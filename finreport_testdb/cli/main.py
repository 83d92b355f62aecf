"""The `testdb` command line: click commands translating options into `ProjectDatabases` calls.

Exit codes: 0 ok, 1 failure (one line on stderr, never a password), 2 usage error (click's), 3
`server status`: not running. SQLAlchemy, psycopg and Alembic are imported inside the commands
that need them, so that `testdb --help` costs little more than importing click.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..core.names import auto_namespace, validate_namespace
from ..core.settings import SETTINGS
from ..errors import FinreportTestdbError
from .support import (
    Group,
    State,
    command_label,
    emit_json,
    for_humans,
    human_age,
    human_size,
    pass_state,
    print_table,
    shown,
)

if TYPE_CHECKING:
    from ..embedded import EmbeddedServer, ServerInfo

F = TypeVar("F", bound=Callable[..., Any])


def setting_options(command: str) -> Callable[[F], F]:
    """The options of the settings `SETTINGS` gives `command`, passed by setting name (None: not
    given; a flag: not the default)."""

    def decorate(function: F) -> F:
        for s in reversed([s for s in SETTINGS if s.cli == command]):
            flag = {"flag_value": not s.default, "default": None}
            attrs = flag if s.kind == "bool" else {"metavar": s.metavar}
            function = click.option(s.flag(), s.name, help=s.help, **attrs)(function)
        return function

    return decorate


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@setting_options("testdb")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done to stderr.")
@click.version_option(package_name="finreport-testdb")
@click.pass_context
def main(ctx: click.Context, /, verbose: bool, **overrides: Any) -> None:
    """Template-cloned PostgreSQL databases for pytest-xdist workers."""
    if verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ctx.obj = State(overrides)


@main.command("prepare-template")
@click.option("--rebuild", is_flag=True, help="Build a new template even if one is up to date.")
@click.option(
    "--full", is_flag=True, help="Migrate from empty: neither extend an older template nor restore."
)
@setting_options("prepare-template")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def prepare_template(
    state: State, /, rebuild: bool, full: bool, as_json: bool, **overrides: Any
) -> None:
    """Build the template from the migrations, or reuse the ready one (idempotent).

    A missing template is extended from an older one when only revisions were appended, else
    restored from the dump cache, else migrated from empty; the output says which.
    """
    state.overrides.update(overrides)
    started = time.monotonic()
    result = state.databases.ensure_template(rebuild=rebuild, full=full)
    total = time.monotonic() - started
    if as_json:
        emit_json(
            {
                "template": result.name,
                "fingerprint": result.fingerprint,
                "action": result.action,
                "source": result.source,
                "revisions": result.revisions,
                "notes": list(result.notes),
                "seconds": round(result.seconds, 3),
                "total_seconds": round(total, 3),
            }
        )
        return
    for note in result.notes:
        click.echo(note, err=True)
    if result.built:
        origin = result.describe().removeprefix(result.action)
        click.echo(
            f"{result.action} template {result.name} (fingerprint {result.fingerprint[:12]})"
            f"{origin} in {result.seconds:.2f} s"
        )
    else:
        click.echo(
            f"template {result.name} is up to date (fingerprint {result.fingerprint[:12]}): "
            f"nothing to do ({result.seconds:.2f} s)"
        )


@main.command()
@pass_state
def fingerprint(state: State) -> None:
    """Print the current template fingerprint (a cache key for the dump cache in CI).

    It covers the server's major version, so it connects to the server (or starts the embedded one).
    """
    click.echo(state.databases.fingerprint)


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> float:
    """`90s`, `30m`, `12h`, `7d`, `2w` (or plain seconds) to seconds."""
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION else ""
    try:
        seconds = float(text.removesuffix(unit)) * _DURATION.get(unit, 1)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < math.inf:  # also nan, which compares false with everything
        raise click.BadParameter(f"{value!r} is not a duration; use e.g. 90s, 30m, 12h, 7d or 2w")
    return seconds


@main.command()
@click.option("--namespace", "clean_namespace", metavar="NS", help="Clean this namespace.")
@click.option("--all-namespaces", is_flag=True, help="Clean every namespace of this base.")
@click.option("--templates", is_flag=True, help="Also drop all templates of this base.")
@click.option("--stale-templates", is_flag=True, help="Also drop templates nothing uses.")
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    metavar="N",
    help="With --stale-templates: spare the N most recently used templates (current first).",
)
@click.option(
    "--older-than",
    metavar="DURATION",
    help="With --stale-templates: drop only templates unused for DURATION (30m, 12h, 7d).",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be dropped.")
@click.option(
    "--force", is_flag=True, help="Also drop databases with open sessions (ends those sessions)."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def clean(
    state: State,
    clean_namespace: str | None,
    all_namespaces: bool,
    templates: bool,
    stale_templates: bool,
    keep: int | None,
    older_than: str | None,
    dry_run: bool,
    force: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Drop worker, per-test and scratch databases carrying testdb's ownership marker.

    Databases without the marker are never dropped, whatever their name; they are listed as
    skipped with the reason, as are databases in use (open sessions, unless --force; a run or a
    build in progress). Each is re-checked at the moment of its drop. Asks for confirmation on a
    terminal unless --yes.
    """
    if clean_namespace is not None and all_namespaces:
        raise click.UsageError("use either --namespace or --all-namespaces, not both")
    if templates and stale_templates:
        raise click.UsageError("use either --templates or --stale-templates, not both")
    if (keep is not None or older_than is not None) and not stale_templates:
        raise click.UsageError("--keep and --older-than go with --stale-templates")
    older_than_seconds = parse_duration(older_than) if older_than is not None else None
    if clean_namespace == "auto":  # as the namespace setting resolves it
        clean_namespace = auto_namespace(state.settings.project_root)
    elif clean_namespace:
        validate_namespace(clean_namespace, source="--namespace")
    databases = state.databases
    plan = databases.plan_clean(
        namespace=clean_namespace or None,  # unset or '': the configured one
        all_namespaces=all_namespaces,
        templates=templates,
        stale_templates=stale_templates,
        keep=keep,
        older_than=older_than_seconds,
    )

    targets = {
        db.name: f"{db.marker.role}, namespace {db.marker.namespace!r}" for db in plan.drop
    } | dict.fromkeys(plan.interrupted, "leftover of an interrupted creation")
    confirm = bool(targets) and not (dry_run or yes or as_json) and sys.stdin.isatty()
    if (dry_run or confirm) and not as_json:
        for name, what in targets.items():  # what the user confirms
            click.echo(f"would drop {shown(name)} ({what})")
    dropped: list[str] = []
    if targets and not dry_run:
        if confirm:
            click.confirm(f"drop {len(targets)} database(s)?", abort=True)
        dropped = databases.clean(plan, force=force)
    if as_json:
        from ..core.clean import IN_USE_REASONS

        emit_json(
            {
                "dry_run": dry_run,
                "dropped": dropped,
                "would_drop": list(targets) if dry_run else [],
                "skipped": [{"name": n, "reason": r} for n, r in plan.skipped],
                "skipped_in_use": [n for n, r in plan.skipped if r in IN_USE_REASONS],
            }
        )
        return
    for name in dropped:  # after the fact: one re-checked at its drop may be skipped after all
        click.echo(f"dropping {shown(name)} ({targets[name]})")
    for name, reason in plan.skipped:  # incl. what the drop itself found in use
        click.echo(f"skipped {shown(name)}: {reason}")
    if dry_run:
        click.echo(f"dry run: {len(targets)} database(s) would be dropped")
    else:
        click.echo(f"dropped {len(dropped)} database(s)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@pass_state
def status(state: State, as_json: bool) -> None:
    """Managed databases: role, fingerprint, up to date?, size, age, connections."""
    problem = None
    databases = state.databases
    managed, lookalikes = databases.managed_databases(with_size=True)
    try:
        current: str | None = databases.fingerprint
    except FinreportTestdbError as exc:
        current, problem = None, str(exc)
    rows: list[dict[str, Any]] = [
        {
            "name": db.name,
            "role": db.marker.role,
            "namespace": db.marker.namespace,
            "fingerprint": db.marker.fingerprint[:12],
            "worker": db.marker.worker,
            "up_to_date": None if current is None else db.marker.fingerprint == current,
            "size_bytes": db.size_bytes,
            "age_seconds": db.age_seconds(),
            "connections": db.connections,
            "ready": db.marker.ready if db.marker.role == "template" else None,
        }
        for db in managed
    ]
    if as_json:
        emit_json(
            {
                "server": for_humans(databases.server_url),
                "current_fingerprint": current,
                "current_fingerprint_problem": problem,
                "databases": rows,
                "unmanaged_lookalikes": lookalikes,
            }
        )
        return
    click.echo(f"server {for_humans(databases.server_url)}")
    click.echo(f"current fingerprint {current[:12] if current else '(unknown: see below)'}")
    if not rows:
        click.echo("no managed databases")
    else:
        print_table(
            ["NAME", "ROLE", "NAMESPACE", "FINGERPRINT", "CURRENT", "SIZE", "AGE", "CONNS"],
            [
                [
                    shown(r["name"]),
                    r["role"],
                    r["namespace"] or "-",
                    r["fingerprint"],
                    {True: "yes", False: "no", None: "?"}[r["up_to_date"]],
                    human_size(r["size_bytes"]),
                    human_age(r["age_seconds"]),
                    str(r["connections"]),
                ]
                for r in rows
            ],
        )
    for name in lookalikes:
        click.echo(f"not managed (no marker): {shown(name)}")
    if problem is not None:
        click.echo(f"warning: current fingerprint unknown: {problem}", err=True)


@main.command()
@click.option("--worker", default="gw0", show_default=True, help="xdist worker id, or master.")
@click.option("--show-password", is_flag=True, help="Print the password instead of ***.")
@pass_state
def url(state: State, worker: str, show_password: bool) -> None:
    """The URL a worker's tests get (password masked unless --show-password)."""
    from ..core.urls import render_for_driver, render_for_humans

    render = render_for_driver if show_password else render_for_humans
    click.echo(render(state.databases.worker_url(worker)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@pass_state
def config(state: State, as_json: bool) -> None:
    """Resolved settings and where each came from (password masked)."""
    rows = state.settings.describe()
    if as_json:
        emit_json({name: {"value": value, "source": source} for name, value, source in rows})
    else:
        print_table(["SETTING", "VALUE", "SOURCE"], [list(r) for r in rows])


@main.group()
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
    """Stop the embedded server; refused while a test run or a command uses it (--force).

    Its data (the cluster, on /dev/shm by default) stays for a fast next start unless --purge."""
    from ..core.ownership import describe_holders

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
    not running (as `pg_ctl status`), so scripts can test it."""
    info = state.embedded.status()
    if as_json:
        emit_json({"running": info is not None, **(_server_json(info) if info else {})})
    elif info is None:
        click.echo("embedded server is not running (testdb server start starts it)")
    else:
        print_table(["FIELD", "VALUE"], [[k, str(v)] for k, v in _server_json(info).items()])
    if info is None:
        sys.exit(3)  # pg_ctl status's code for "not running"
