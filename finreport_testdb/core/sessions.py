"""Sessions: opening one with its failures as one line, and ending other sessions' work.

Used by the administration session (`admin.py`) and by the change tracking inside a worker
database (`undo.py`), which both have to end sessions and roll back prepared transactions.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from sqlalchemy.engine import URL

from ..errors import ConfigError, ServerUnreachable
from .urls import libpq_keywords, psycopg_connect_kwargs, redact, server_label

log = logging.getLogger("finreport_testdb.core.sessions")


def connect(
    url: URL, database: str | None = None, *, autocommit: bool = True, url_source: str | None = None
) -> psycopg.Connection[Any]:
    """A psycopg connection, with connection failures turned into one-line errors that point at
    where the URL was set (`url_source`, e.g. "command line --url"), when known."""
    kwargs = psycopg_connect_kwargs(url, database=database)
    try:
        return psycopg.connect(autocommit=autocommit, **kwargs)
    except psycopg.ProgrammingError as exc:  # a value psycopg itself cannot parse
        raise ConfigError(f"the URL has an invalid option: {exc}; fix or remove it") from None
    except psycopg.OperationalError as exc:
        bad_option = re.search(r'invalid (\w+) value: "?([^"]*)"?', str(exc))
        if bad_option and bad_option.group(1) in libpq_keywords():
            raise ConfigError(
                f"the URL option {bad_option.group(1)}={bad_option.group(2)!r} is not valid for "
                "libpq; fix or remove it (see the libpq connection parameters)"
            ) from None
        # libpq's message spans lines ("...: Connection refused\n\tIs the server running...?"):
        # keep every line, joined into one, so the actual reason is not cut off. Redact before
        # collapsing whitespace, or a password with a run of spaces would no longer match.
        reason = " ".join(redact(str(exc), url).split()) or type(exc).__name__
        where = url_source or "TESTDB_URL / --testdb-url"
        if "password authentication failed" in reason or "no password supplied" in reason:
            fix = f"check the user and password in the URL ({where})"
        elif url.username and f'role "{url.username}" does not exist' in reason:
            fix = f"check the user name in the URL ({where}), or create that role"
        elif f'database "{kwargs["dbname"]}" does not exist' in reason:
            fix = "create that maintenance database or set maintenance_db / TESTDB_MAINTENANCE_DB"
        else:
            fix = (
                f"start PostgreSQL there, fix the host/port in the URL ({url_source}), or leave "
                "the URL out to use the embedded server"
                if url_source
                else "with no URL configured this is the embedded server, and it has stopped "
                "since it was started (`testdb server stop`?): the next command or test run "
                "starts it again"
            )
        raise ServerUnreachable(
            f"cannot connect to PostgreSQL at {server_label(url)} as {url.username or '(default user)'}"
            f" (database {kwargs['dbname']!r}): {reason}; {fix}"
        ) from None


def end_backends(
    conn: psycopg.Connection[Any], pids_query: str, params: Any = None, *, timeout: float = 5.0
) -> int:
    """Terminate the sessions `pids_query` selects and return once they are gone (or `timeout`);
    how many there were.

    PostgreSQL's own waits for terminated sessions (`DROP DATABASE ... WITH (FORCE)`, a rename,
    `pg_terminate_backend(pid, timeout)`) re-check only every 100 ms, which made a reset with one
    pooled connection open cost ~115 ms instead of ~17 ms on tmpfs; an idle backend exits within
    a millisecond or two, so polling here is much cheaper.
    """
    row = conn.execute(
        f"SELECT array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)) FROM ({pids_query}) s(pid)",
        params,
    ).fetchone()
    pids = (row[0] if row else None) or []
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while pids and time.monotonic() < deadline:
        left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
        if not (left.fetchone() or (0,))[0]:
            break
        time.sleep(pause)  # a backend exiting, not a test waiting: no event to wait on
        pause = min(pause * 2, 0.02)
    return len(pids)


def roll_back_prepared_here(conn: psycopg.Connection[Any]) -> int:
    """Roll back every prepared transaction of the database `conn` is connected to (autocommit):
    they outlive their session and hold their locks, so one a test left behind would block every
    later restore of the database, and its drop."""
    gids = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
    done = 0
    for (gid,) in gids.fetchall():
        with contextlib.suppress(pgerrors.UndefinedObject):  # finished meanwhile
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
            done += 1
    if done:
        log.info("rolled back %d prepared transaction(s)", done)
    return done
