"""Database administration over one psycopg session on the server's maintenance database, and
ending other sessions' work (also for `undo.py`). Identifiers only through `psycopg.sql`, values
only as parameters; whether a database may be touched is `ownership.py`'s decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import select
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq, sql
from sqlalchemy.engine import URL

from ..errors import (
    ConfigError,
    DatabaseInUse,
    FinreportTestdbError,
    PermissionProblem,
    ServerUnreachable,
    TemplateBuildError,
)
from .names import creating_name
from .urls import libpq_keywords, one_line, psycopg_connect_kwargs, redact, server_label

log = logging.getLogger("finreport_testdb.core.admin")

_CLONE_ATTEMPTS = 5  # after ending sessions that hold the template (SQLSTATE 55006)
_OTHER_SESSIONS = "SELECT {} FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
#: The fix for the privilege PostgreSQL says is missing (not always CREATEDB), by a part of its
#: message; the first that matches ("" matches any).
_PRIVILEGE_FIXES = {
    "permission denied to create database": "grant it CREATEDB (ALTER ROLE ... CREATEDB) or use a "
    "role that has it",
    "must be owner of": "that database belongs to another role: run as that role (or a member "
    "of it), or have a superuser drop it",
    "": "grant that privilege, or use the role that owns the test databases",
}


@dataclass(frozen=True)
class DatabaseInfo:
    """One database's facts, read in one query: with two, a concurrent drop or re-creation in
    between would mix two databases (one without a marker, say)."""

    name: str
    oid: int  # tells a database from one dropped and re-created under its name since
    comment: str | None
    owner: str
    usable: bool  # this role has the owner's privileges (a clone's tables are the owner's)
    mine: bool  # this very role owns it (a superuser has every role's privileges)
    is_template: bool
    connections: int
    size_bytes: int | None = None


#: A `DatabaseInfo` as one JSON object (typed by psycopg's loader); `{size}`: its size or NULL.
_INFO = (
    "json_build_object('name', datname, 'oid', oid::bigint,"
    " 'comment', shobj_description(oid, 'pg_database'), 'owner', pg_get_userbyid(datdba),"
    " 'usable', pg_has_role(current_user, datdba, 'USAGE'),"
    " 'mine', pg_get_userbyid(datdba) = current_user, 'is_template', datistemplate,"
    " 'connections', (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid),"
    " 'size_bytes', {size})"
)
#: The `DatabaseInfo` (or NULL) of the database named by the query parameter `%(<param>)s`.
_FIND = f"(SELECT {_INFO.format(size='NULL')} FROM pg_database d WHERE datname = %({{}})s)"


def _info(row: dict[str, Any] | None) -> DatabaseInfo | None:
    return None if row is None else DatabaseInfo(**row)


@dataclass(frozen=True)
class Inspection:
    """What `Admin.inspect` found about a name about to be (re)created."""

    claimed: bool
    target: DatabaseInfo | None
    creating: DatabaseInfo | None  # the leftover of an interrupted creation of the name
    template: DatabaseInfo | None
    role: str


def advisory_key(label: str) -> int:
    """A key for `pg_advisory_lock`, the same on every machine: the racers may be CI jobs on other
    machines, and a session-level lock ends however its process does."""
    return int.from_bytes(
        hashlib.sha256(f"finreport-testdb:{label}".encode()).digest()[:8], "big", signed=True
    )


class Admin(contextlib.AbstractContextManager["Admin"]):
    def __init__(
        self, server_url: URL, maintenance_db: str = "postgres", *, url_source: str | None = None
    ) -> None:
        self.server_url = server_url
        self.conn = _connect(server_url, maintenance_db, url_source=url_source)
        self.server_version_num: int = self.conn.info.server_version
        self._fsync: bool | None = None

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def is_alive(self) -> bool:
        """Without a round trip: a session the server ended has left its last message and an EOF
        on the socket (possibly in two reads), which libpq reads here without waiting."""
        if self.conn.closed or self.conn.broken:
            return False
        pgconn = self.conn.pgconn
        try:
            for _ in range(3):
                if not select.select([pgconn.socket], [], [], 0)[0]:
                    break
                pgconn.consume_input()
        except (psycopg.Error, OSError):
            return False
        return pgconn.status == pq.ConnStatus.OK

    @property
    def server_major(self) -> int:
        return self.server_version_num // 10000

    def _execute(
        self, query: sql.SQL | sql.Composed | str, params: Any = None
    ) -> psycopg.Cursor[Any]:
        try:
            return self.conn.execute(query, params)
        except psycopg.OperationalError as exc:
            if not self.conn.broken:
                raise
            raise ServerUnreachable(
                f"lost the connection to PostgreSQL at {server_label(self.server_url)}: "
                f"{one_line(exc, self.server_url)}; the server stopped or restarted: run again "
                "once it is up"
            ) from None
        except pgerrors.InsufficientPrivilege as exc:
            reason = redact(str(exc).splitlines()[0], self.server_url)
            raise PermissionProblem(
                f"role {self.server_url.username or '(default)'!r} lacks a privilege: "
                f"{reason}; {next(fix for k, fix in _PRIVILEGE_FIXES.items() if k in reason)}"
            ) from None

    def find(self, name: str) -> DatabaseInfo | None:
        row = self._execute(f"SELECT {_FIND.format('name')}", {"name": name}).fetchone()
        return _info(row[0] if row else None)

    def list_databases(self, *, with_size: bool = False) -> list[DatabaseInfo]:
        # Sizing a database this role may not connect to would fail the whole listing.
        size = "CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) END"
        query = f"SELECT {_INFO.format(size=size if with_size else 'NULL')} FROM pg_database d"
        rows = self._execute(query + " ORDER BY datname").fetchall()
        return [info for (row,) in rows if (info := _info(row)) is not None]

    def inspect(
        self, name: str, template: str | None = None, claim: str | None = None
    ) -> Inspection:
        """Everything a clone of `template` as `name` must know, in one round trip: the claim
        (`claim`, a lock label taken without waiting), the database there, its `.creating`
        leftover, and the template (whose sessions are ended)."""
        row = self._execute(
            "SELECT CASE WHEN %(key)s::bigint IS NULL THEN true"
            " ELSE pg_try_advisory_lock(%(key)s::bigint) END, "
            + ", ".join(_FIND.format(param) for param in ("name", "creating", "template"))
            + ", current_setting('fsync') = 'on', current_user,"
            # A template allows no connections, but one opened before it was frozen (or while a
            # user unfroze it) would make CREATE DATABASE wait 5 s, then fail: end it now.
            " (SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            "  WHERE datname = %(template)s AND pid <> pg_backend_pid())",
            {
                "key": advisory_key(claim) if claim else None,
                "name": name,
                "creating": creating_name(name),
                "template": template,
            },
        ).fetchone()
        assert row is not None
        claimed, target, creating, found, fsync, role, _ = row
        self._fsync = bool(fsync)
        return Inspection(bool(claimed), _info(target), _info(creating), _info(found), str(role))

    def create_database(self, name: str, *, comment: str, template: str | None = None) -> None:
        """Create (or clone) as `creating_name(name)`, then mark and rename in one transaction, so
        the name never exists unmarked (docs/architecture.md). A session on the template makes
        PostgreSQL fail after 5 s (55006): `inspect` ends those, a late one is ended here."""
        creating = creating_name(name)
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(creating))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}{}").format(
                query, sql.Identifier(template), self._clone_strategy()
            )
        for attempt in range(1, _CLONE_ATTEMPTS + 1):
            try:
                self._execute(query)
                break
            except pgerrors.ObjectInUse:
                if template is None or attempt == _CLONE_ATTEMPTS:
                    raise TemplateBuildError(
                        f"cannot clone {name!r}: other sessions keep using template {template!r}; "
                        "close them (see `testdb status`) and retry"
                    ) from None
                log.info("ended %d session(s) holding %s", self.end_sessions(template), template)
            except pgerrors.DuplicateDatabase:
                raise FinreportTestdbError(
                    f"database {creating!r} already exists (an interrupted creation of {name!r}); "
                    "run `testdb clean`, or run again: the next creation of that name removes it"
                ) from None
            except pgerrors.InvalidCatalogName:
                if template is None:
                    raise
                raise TemplateBuildError(
                    f"cannot clone {name!r}: template {template!r} does not exist; build it with "
                    "`testdb prepare-template` (or ProjectDatabases.ensure_template()) first"
                ) from None
        try:
            self._execute(
                sql.SQL("COMMENT ON DATABASE {0} IS {1}; ALTER DATABASE {0} RENAME TO {2}").format(
                    sql.Identifier(creating), sql.Literal(comment), sql.Identifier(name)
                )
            )
        except pgerrors.DuplicateDatabase:
            self.drop_database(creating, force=True)  # made just now, by us
            raise FinreportTestdbError(
                f"database {name!r} already exists; run `testdb clean` if it is a leftover"
            ) from None
        except pgerrors.InvalidCatalogName:
            # COMMENT on a missing database is only a warning: the rename is where it shows.
            raise FinreportTestdbError(
                f"database {creating!r} was dropped by another session while it was being "
                f"created (a concurrent `testdb clean` or DROP); run again"
            ) from None

    def _clone_strategy(self) -> sql.SQL:
        """FILE_COPY checkpoints first: 2x faster than WAL_LOG with fsync off, 3-7x slower on a
        durable server (docs/benchmarks.md)."""
        if self.server_version_num < 150000:
            return sql.SQL("")
        if self._fsync is None:
            row = self._execute("SELECT current_setting('fsync') = 'on'").fetchone()
            self._fsync = bool(row and row[0])
        return sql.SQL(" STRATEGY = WAL_LOG" if self._fsync else " STRATEGY = FILE_COPY")

    def set_comment(self, name: str, comment: str) -> None:
        query = sql.SQL("COMMENT ON DATABASE {} IS {}")
        self._execute(query.format(sql.Identifier(name), sql.Literal(comment)))

    def promote_to_template(
        self, scratch: str, template: str, comment: str, *, displaced_comment: str | None = None
    ) -> None:
        """Rename, mark ready and freeze (no connections: clones never meet 55006) in one
        transaction: a template is ready or absent. With `displaced_comment`, the old template
        of a rebuild trades names with `scratch` in the same transaction, so every session sees
        one template or the other; the caller then drops the old one under the scratch name."""
        self.end_sessions(scratch)
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}").format
        mark = sql.SQL("COMMENT ON DATABASE {} IS {}").format
        new, old = sql.Identifier(scratch), sql.Identifier(template)
        statements = [rename(new, old)]
        if displaced_comment is not None:  # swapped through the creating name, cleared before
            parked = sql.Identifier(creating_name(scratch))
            statements = [rename(old, parked), *statements, rename(parked, new)]
            statements.append(mark(new, sql.Literal(displaced_comment)))
        statements.append(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(old)
        )
        statements.append(mark(old, sql.Literal(comment)))
        self._execute(sql.SQL("; ").join(statements))  # one query string: one transaction

    def session_count(self, name: str) -> int:
        row = self._execute(_OTHER_SESSIONS.format("count(*)"), (name,)).fetchone()
        return int(row[0]) if row else 0

    def end_sessions(self, name: str) -> int:
        return end_backends(self.conn, _OTHER_SESSIONS.format("pid"), (name,))

    def drop_database(self, name: str, *, force: bool = False) -> None:
        """Drop (callers have checked ownership). Without `force` PostgreSQL itself refuses a
        database with sessions at the moment of the drop (`DatabaseInUse`); with it they are
        ended: only for a database whose users are the caller's own, or dead."""
        if force:
            self.end_sessions(name)  # FORCE below stays the backstop (and PostgreSQL < 13's way)
            if self.prepared_transactions(name):  # rolled back only from inside the database
                with _connect(self.server_url, name) as conn:
                    roll_back_prepared_here(conn)
        found = self.find(name)
        if found is None:
            return
        frozen, ident = sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE {}"), sql.Identifier(name)
        if found.is_template:  # PostgreSQL refuses to drop a template database
            self._execute(frozen.format(ident, sql.SQL("false")))
        option = sql.SQL(" WITH (FORCE)" if force and self.server_version_num >= 130000 else "")
        try:
            self._execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(ident, option))
        except pgerrors.ObjectInUse:
            if found.is_template:  # leave it as it was
                self._execute(frozen.format(ident, sql.SQL("true")))
            if self.prepared_transactions(name):
                raise DatabaseInUse(
                    f"database {name!r} has prepared transactions (PREPARE TRANSACTION), so it "
                    "was not dropped; `testdb clean --force` rolls them back"
                ) from None
            raise DatabaseInUse(
                f"database {name!r} has open sessions, so it was not dropped; close them (see "
                "`testdb status`) or use `testdb clean --force` to end them"
            ) from None

    def prepared_transactions(self, name: str) -> list[str]:
        """They outlive their session and keep the database from being dropped (55006)."""
        rows = self._execute("SELECT gid FROM pg_prepared_xacts WHERE database = %s", (name,))
        return [str(gid) for (gid,) in rows.fetchall()]

    def backend_identity(self) -> str:
        """`<pid>@<backend_start>`: unique over time (a pid alone is reused), and visible
        server-wide, unlike an advisory lock, which lives in one database."""
        row = self._execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return f"{row[0]}@{row[1].isoformat()}"

    def backend_alive(self, identity: str) -> bool:
        """Whether that session is still connected. Another role's `backend_start` may be hidden
        (NULL): a live pid then counts, erring on the side of leaving a build alone."""
        pid, _, started = identity.partition("@")
        if not pid.isdigit():
            return False
        row = self._execute(
            "SELECT backend_start IS NULL OR backend_start = %s::timestamptz "
            "FROM pg_stat_activity WHERE pid = %s",
            (started or None, int(pid)),
        ).fetchone()
        return bool(row and row[0])

    def advisory_lock(self, label: str, *, timeout: float, shared: bool = False) -> float:
        """Take `label`, waiting up to `timeout` s; returns the seconds waited."""
        started = time.monotonic()
        # Rounded up: `0ms` means "wait forever" to PostgreSQL.
        ms = max(1, math.ceil(timeout * 1000))
        self._execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{ms}ms")))
        lock = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
        try:
            self._execute(f"SELECT {lock}(%s)", (advisory_key(label),))
        except pgerrors.LockNotAvailable:
            held_by = "a `testdb clean` dropping that template?" if shared else "a stuck session?"
            raise TemplateBuildError(
                f"waited {timeout:.0f} s for another process holding lock {label!r} ({held_by}); "
                "if nothing is running, end that session (see pg_locks), or raise lock_timeout"
            ) from None
        finally:
            self._execute("RESET lock_timeout")
        return time.monotonic() - started

    def try_advisory_lock(self, label: str, *, shared: bool = False) -> bool:
        try_lock = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        row = self._execute(f"SELECT {try_lock}(%s)", (advisory_key(label),)).fetchone()
        return bool(row and row[0])

    def advisory_unlock(self, label: str) -> None:
        self._execute("SELECT pg_advisory_unlock(%s)", (advisory_key(label),))

    def lock_holders(self, label: str) -> list[str]:
        """`application_name`s of the other sessions holding `label` (any mode or database)."""
        # pg_locks shows a bigint key in two halves: classid the high one, objid the low one.
        rows = self._execute(
            "SELECT coalesce(a.application_name, '') FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s "
            "AND l.pid <> pg_backend_pid() ORDER BY a.backend_start, a.pid",
            (advisory_key(label),),
        ).fetchall()
        return [str(r[0]) for r in rows]


def _connect(url: URL, database: str, *, url_source: str | None = None) -> psycopg.Connection[Any]:
    """A psycopg connection; a failure is one line pointing at where the URL was set
    (`url_source`, e.g. "command line --url"), when known."""
    kwargs = psycopg_connect_kwargs(url, database=database)
    try:
        return psycopg.connect(autocommit=True, **kwargs)
    except psycopg.ProgrammingError as exc:  # a value psycopg itself cannot parse
        raise ConfigError(f"the URL has an invalid option: {exc}; fix or remove it") from None
    except psycopg.OperationalError as exc:
        bad_option = re.search(r'invalid (\w+) value: "?([^"]*)"?', str(exc))
        if bad_option and bad_option.group(1) in libpq_keywords():
            raise ConfigError(
                f"the URL option {bad_option.group(1)}={bad_option.group(2)!r} is not valid for "
                "libpq; fix or remove it (see the libpq connection parameters)"
            ) from None
        reason = one_line(exc, url) or type(exc).__name__  # libpq's spans lines
        where = url_source or "TESTDB_URL / --testdb-url"
        if "password authentication failed" in reason or "no password supplied" in reason:
            fix = f"check the user and password in the URL ({where})"
        elif url.username and f'role "{url.username}" does not exist' in reason:
            fix = f"check the user name in the URL ({where}), or create that role"
        elif f'database "{database}" does not exist' in reason:
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
            f" (database {database!r}): {reason}; {fix}"
        ) from None


def end_backends(conn: psycopg.Connection[Any], pids_query: str, params: Any = None) -> int:
    """Terminate the sessions `pids_query` selects and return once they are gone (or 5 s); how
    many there were. PostgreSQL's own waits for that (`DROP DATABASE ... WITH (FORCE)`,
    `pg_terminate_backend(pid, timeout)`) re-check only every 100 ms: ~115 ms per reset with a
    pooled connection open, against ~17 ms polling here (an idle backend exits in a millisecond)."""
    row = conn.execute(
        f"SELECT array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)) FROM ({pids_query}) s(pid)",
        params,
    ).fetchone()
    pids = (row[0] if row else None) or []
    deadline = time.monotonic() + 5.0
    pause = 0.0005
    while pids and time.monotonic() < deadline:
        left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
        if not (left.fetchone() or (0,))[0]:
            break
        time.sleep(pause)  # a backend exiting, not a test waiting: no event to wait on
        pause = min(pause * 2, 0.02)
    return len(pids)


def roll_back_prepared_here(conn: psycopg.Connection[Any]) -> None:
    """Roll back the prepared transactions of `conn`'s database: they outlive their session and
    hold their locks, so one a test left would block every later restore, and the drop."""
    gids = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
    for (gid,) in gids.fetchall():
        with contextlib.suppress(pgerrors.UndefinedObject):  # finished meanwhile
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
            log.info("rolled back prepared transaction %s", gid)
