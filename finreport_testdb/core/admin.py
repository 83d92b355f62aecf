"""Database administration over one psycopg connection to the server's maintenance database.

Create, clone, rename, freeze, drop, list, terminate, and PostgreSQL advisory locks. Every
identifier goes through `psycopg.sql.Identifier` and every value through a bound parameter, so a
database name can never break or inject SQL. This module knows nothing about Alembic or pytest, and
it does not decide *whether* a database may be dropped: callers check ownership first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from .urls import libpq_keywords, psycopg_connect_kwargs, redact, server_label

log = logging.getLogger("finreport_testdb.core.admin")

# How often a clone retries after terminating sessions that hold its template (SQLSTATE 55006).
_CLONE_ATTEMPTS = 5


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    comment: str | None
    is_template: bool
    allow_connections: bool
    connections: int
    size_bytes: int | None
    oid: int | None = None  # a re-created database has a new one


@dataclass(frozen=True)
class Inspection:
    """What `Admin.inspect` found about a name about to be (re)created."""

    claimed: bool
    exists: bool
    comment: str | None
    creating_exists: bool
    creating_comment: str | None
    creating_ours: bool  # this role has the leftover's owner's privileges
    template_owner: tuple[str, bool] | None  # (role, this role has its privileges)
    role: str


def advisory_key(label: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_lock`, the same on every machine."""
    return int.from_bytes(
        hashlib.sha256(f"finreport-testdb:{label}".encode()).digest()[:8], "big", signed=True
    )


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


class Admin:
    """Administration session on `maintenance_db`. Use as a context manager."""

    def __init__(
        self, server_url: URL, maintenance_db: str = "postgres", *, url_source: str | None = None
    ) -> None:
        self.server_url = server_url
        self.maintenance_db = maintenance_db
        self.conn = connect(server_url, maintenance_db, url_source=url_source)
        self.server_version_num: int = self.conn.info.server_version
        self._fsync: bool | None = None

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def is_alive(self) -> bool:
        """Whether the session is still usable, without a round trip: a session the server ended
        (a restart, `pg_terminate_backend`) has left its last message and an EOF on the socket,
        which libpq reads here without waiting."""
        if self.conn.closed or self.conn.broken:
            return False
        pgconn = self.conn.pgconn
        try:
            # The server's last message and its EOF may arrive in separate reads.
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

    # -- queries -----------------------------------------------------------------------------

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
                f"{' '.join(redact(str(exc), self.server_url).split())}; the server stopped or "
                "restarted: run again once it is up"
            ) from None
        except pgerrors.InsufficientPrivilege as exc:
            reason = redact(str(exc).splitlines()[0], self.server_url)
            raise PermissionProblem(
                f"role {self.server_url.username or '(default)'!r} lacks a privilege: "
                f"{reason}; {_privilege_fix(reason)}"
            ) from None

    def lookup(self, name: str) -> tuple[bool, str | None]:
        """(exists, comment) in one query: with two, a concurrent drop in between would make a
        database that just vanished look like one without a marker."""
        found = self.identify(name)
        return (False, None) if found is None else (True, found[1])

    def identify(self, name: str) -> tuple[int, str | None] | None:
        """(oid, comment) of a database in one query, None if it does not exist: the oid tells
        a database from one dropped and re-created under the same name since."""
        row = self._execute(
            "SELECT oid, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        return None if row is None else (int(row[0]), row[1])

    def comment_of(self, name: str) -> str | None:
        found = self.identify(name)
        return None if found is None else found[1]

    def list_databases(self, *, with_size: bool = False) -> list[DatabaseInfo]:
        # Only databases we may connect to can be sized: on a shared server some revoke CONNECT
        # from PUBLIC, and pg_database_size() on those would fail the whole listing.
        size = (
            "CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END"
            if with_size
            else "NULL::bigint"
        )
        rows = self._execute(
            sql.SQL(
                "SELECT d.datname, shobj_description(d.oid, 'pg_database'), d.datistemplate, "
                "d.datallowconn, (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid), "
                "{size}, d.oid FROM pg_database d ORDER BY d.datname"
            ).format(size=sql.SQL(size))
        ).fetchall()
        return [DatabaseInfo(r[0], r[1], r[2], r[3], int(r[4]), r[5], int(r[6])) for r in rows]

    def inspect(self, name: str, *, template: str | None, claim: str | None) -> Inspection:
        """Everything a clone of `template` as `name` must know, in one round trip: the claim on
        `name` (`claim`, a lock label, taken here without waiting; None if already held), the
        database there and the leftover of an interrupted creation of it, and whether this role
        has the template owner's privileges."""
        row = self._execute(
            "SELECT CASE WHEN %(key)s::bigint IS NULL THEN true"
            " ELSE pg_try_advisory_lock(%(key)s::bigint) END,"
            " (SELECT array[shobj_description(oid, 'pg_database')] FROM pg_database"
            "  WHERE datname = %(name)s),"
            " (SELECT array[shobj_description(oid, 'pg_database'),"
            "   pg_has_role(current_user, datdba, 'USAGE')::text] FROM pg_database"
            "  WHERE datname = %(creating)s),"
            " (SELECT array[datdba::regrole::text, pg_has_role(current_user, datdba, 'USAGE')::text]"
            "  FROM pg_database WHERE datname = %(template)s),"
            " current_setting('fsync') = 'on', current_user",
            {
                "key": advisory_key(claim) if claim else None,
                "name": name,
                "creating": creating_name(name),
                "template": template,
            },
        ).fetchone()
        assert row is not None
        claimed, there, creating, owner, fsync, role = row
        self._fsync = bool(fsync)
        return Inspection(
            claimed=bool(claimed),
            exists=there is not None,
            comment=there[0] if there else None,
            creating_exists=creating is not None,
            creating_comment=creating[0] if creating else None,
            creating_ours=bool(creating) and creating[1] == "true",
            template_owner=(owner[0], owner[1] == "true") if owner else None,
            role=str(role),
        )

    # -- changes -----------------------------------------------------------------------------

    def create_database(self, name: str, *, comment: str, template: str | None = None) -> None:
        """Create (or clone from `template`) and mark the database.

        `CREATE DATABASE` and `COMMENT` cannot be one statement, and a process killed between them
        would leave an unmarked database under a managed name, which nothing may drop. So the
        database is created under `creating_name(name)`, marked, and only then renamed (atomic):
        the real name never exists unmarked. Callers clear a leftover creating name first
        (`ownership.clear_interrupted_creation`).

        Two round trips: the CREATE, then the COMMENT and the rename sent as one query string,
        which PostgreSQL runs as one transaction. A template allows no connections, so none is
        ended beforehand; a session that holds one anyway (SQLSTATE 55006) is ended and the
        clone retried, instead of failing after PostgreSQL's 5-second wait.
        """
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
                killed = self.terminate_sessions(template)
                log.info("terminated %d session(s) holding template %s", killed, template)
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
                sql.SQL("COMMENT ON DATABASE {} IS {}; ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(creating),
                    sql.Literal(comment),
                    sql.Identifier(creating),
                    sql.Identifier(name),
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
        """The faster clone strategy for this server (PostgreSQL >= 15 has two).

        FILE_COPY copies the template's files after a checkpoint: cheap when fsync is off (the
        embedded server, a tmpfs CI service), about 2x faster than WAL_LOG there. On a durable
        server that checkpoint flushes to disk, and WAL_LOG was 3-7x faster in our measurements
        (docs/benchmarks.md).
        """
        if self.server_version_num < 150000:
            return sql.SQL("")
        if self._fsync is None:
            row = self._execute("SELECT current_setting('fsync') = 'on'").fetchone()
            self._fsync = bool(row and row[0])
        return sql.SQL(" STRATEGY = WAL_LOG" if self._fsync else " STRATEGY = FILE_COPY")

    def set_comment(self, name: str, comment: str) -> None:
        self._execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(comment)
            )
        )

    def promote_to_template(
        self, scratch: str, template: str, comment: str, *, displaced_comment: str | None = None
    ) -> None:
        """Rename, mark ready and freeze in one transaction: a template is ready or absent.

        `ALLOW_CONNECTIONS false` keeps stray sessions out, so clones never meet SQLSTATE 55006.

        With `displaced_comment`, a database already named `template` (the old template of a
        rebuild) trades names with `scratch` in the same transaction and is marked with
        `displaced_comment`: until the commit every session sees the old template, after it the
        new one, and never no template or a half-built one. The caller drops the old one, now
        under the scratch name (a crash first leaves it to `clean` as an interrupted build).
        """
        self.terminate_sessions(scratch)
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        with self.conn.transaction():
            if displaced_comment is None:
                self._execute(rename.format(sql.Identifier(scratch), sql.Identifier(template)))
            else:
                # Three renames, as in swapping two variables: the parked name is the scratch
                # name's creating name, which the build cleared before it began.
                parked = sql.Identifier(creating_name(scratch))
                self._execute(rename.format(sql.Identifier(template), parked))
                self._execute(rename.format(sql.Identifier(scratch), sql.Identifier(template)))
                self._execute(rename.format(parked, sql.Identifier(scratch)))
                self.set_comment(scratch, displaced_comment)
            self._execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    sql.Identifier(template)
                )
            )
            self.set_comment(template, comment)

    def session_count(self, name: str) -> int:
        row = self._execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
        return int(row[0]) if row else 0

    def terminate_sessions(self, name: str) -> int:
        rows = self._execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
        return sum(1 for (ok,) in rows if ok)

    def end_sessions(self, name: str, *, timeout: float = 5.0) -> None:
        """Terminate the other sessions on `name` and return once they are gone (or `timeout`).

        PostgreSQL's own waits for terminated sessions (`DROP DATABASE ... WITH (FORCE)`, a
        rename, `pg_terminate_backend(pid, timeout)`) re-check only every 100 ms: with one pooled
        connection of the app open, a `fresh` reset cost ~115 ms instead of ~17 ms on tmpfs.
        An idle backend exits within a millisecond or two, so polling here is much cheaper.
        """
        if not self.terminate_sessions(name):
            return
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while self.session_count(name) and time.monotonic() < deadline:
            time.sleep(pause)  # a backend exiting, not a test waiting: no event to wait on
            pause = min(pause * 2, 0.02)

    def drop_database(self, name: str, *, force: bool = False) -> None:
        """Drop; callers must have checked ownership.

        Without `force`, a database with sessions is refused by PostgreSQL itself (SQLSTATE 55006,
        checked at the moment of the drop, so no session can slip in after a check): raised as
        `DatabaseInUse`. With `force` its sessions are terminated: only for a database whose
        users are the caller's own (a run dropping its worker database, with its pooled
        connections) or dead (a killed build's scratch database).
        """
        if force:
            self.end_sessions(name)  # FORCE below stays the backstop (and PostgreSQL < 13's way)
            self.roll_back_prepared(name)
        row = self._execute(
            "SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row is None:
            return
        if row[0]:  # PostgreSQL refuses to drop a template database
            self._execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
            )
        option = sql.SQL(" WITH (FORCE)" if force and self.server_version_num >= 130000 else "")
        try:
            self._execute(
                sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), option)
            )
        except pgerrors.ObjectInUse:
            if row[0]:  # leave it as it was: still a template
                self._execute(
                    sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true").format(sql.Identifier(name))
                )
            prepared = len(self.prepared_transactions(name))
            if prepared:
                raise DatabaseInUse(
                    f"database {name!r} has {prepared} prepared transaction(s) (PREPARE "
                    "TRANSACTION), so it was not dropped; `testdb clean --force` rolls them back"
                ) from None
            raise DatabaseInUse(
                f"database {name!r} has open sessions, so it was not dropped; close them (see "
                "`testdb status`) or use `testdb clean --force` to end them"
            ) from None

    def prepared_transactions(self, name: str) -> list[str]:
        """The gids of the prepared transactions of database `name`: they outlive their session,
        hold their locks and keep the database from being dropped or renamed (SQLSTATE 55006,
        with no session to see)."""
        rows = self._execute("SELECT gid FROM pg_prepared_xacts WHERE database = %s", (name,))
        return [str(gid) for (gid,) in rows.fetchall()]

    def roll_back_prepared(self, name: str) -> int:
        """Roll back the prepared transactions of database `name` (possible only from inside
        it); for databases whose work is this run's own, or a `clean --force`."""
        if not self.prepared_transactions(name):
            return 0
        with connect(self.server_url, name) as conn:
            return roll_back_prepared_here(conn)

    # -- who is who --------------------------------------------------------------------------

    def backend_identity(self) -> str:
        """`<pid>@<backend_start>` of this session: unique on the server over time (a pid alone
        is reused), and visible to every session in pg_stat_activity, whatever its database."""
        row = self._execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return f"{row[0]}@{row[1].isoformat()}"

    def backend_alive(self, identity: str) -> bool:
        """Whether the session `backend_identity()` named is still connected (to any database).

        Another role's `backend_start` may be hidden (NULL): then a live pid counts as alive,
        which errs on the side of leaving a build alone.
        """
        pid_text, _, started = identity.partition("@")
        try:
            pid = int(pid_text)
        except ValueError:
            return False
        row = self._execute(
            "SELECT backend_start IS NULL OR backend_start = %s::timestamptz "
            "FROM pg_stat_activity WHERE pid = %s",
            (started or None, pid),
        ).fetchone()
        return bool(row and row[0])

    def owner_of(self, name: str) -> tuple[str, bool] | None:
        """(owner role, whether this session's role has its privileges) of a database, None if
        it does not exist. Dropping needs ownership; using a clone's tables needs the tables'
        owner's privileges, and a clone's tables belong to whoever migrated the template."""
        row = self._execute(
            "SELECT datdba::regrole::text, pg_has_role(current_user, datdba, 'USAGE') "
            "FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        return None if row is None else (str(row[0]), bool(row[1]))

    def is_template(self, name: str) -> bool:
        row = self._execute(
            "SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        return bool(row and row[0])

    def current_role(self) -> str:
        row = self._execute("SELECT current_user").fetchone()
        return str(row[0]) if row else ""

    # -- advisory locks ----------------------------------------------------------------------

    @contextmanager
    def advisory_lock(self, label: str, *, timeout: float) -> Iterator[float]:
        """Hold a server-wide (per maintenance database) advisory lock; yields seconds waited.

        A PostgreSQL lock, not a file lock, because the racers may be CI jobs on other machines.
        """
        key = advisory_key(label)
        started = time.monotonic()
        self._set_lock_timeout(timeout)
        try:
            self._execute("SELECT pg_advisory_lock(%s)", (key,))
        except pgerrors.LockNotAvailable:
            raise TemplateBuildError(
                f"waited {timeout:.0f} s for another process holding lock {label!r}; if no build "
                "is running, that session is stuck: find it in pg_locks, or raise lock_timeout"
            ) from None
        finally:
            self._execute("RESET lock_timeout")
        try:
            yield time.monotonic() - started
        finally:
            if not self.conn.closed:
                self._execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _set_lock_timeout(self, timeout: float) -> None:
        # Rounded up: `0ms` means "wait forever" to PostgreSQL.
        ms = max(1, math.ceil(timeout * 1000))
        self._execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{ms}ms")))

    def advisory_lock_shared(self, label: str, *, timeout: float) -> None:
        """Take a session-level SHARED advisory lock, held until unlocked or the session ends.

        Many holders at once; it only keeps out a taker of the exclusive lock (`clean`)."""
        self._set_lock_timeout(timeout)
        try:
            self._execute("SELECT pg_advisory_lock_shared(%s)", (advisory_key(label),))
        except pgerrors.LockNotAvailable:
            raise TemplateBuildError(
                f"waited {timeout:.0f} s for lock {label!r} (held by a `testdb clean` dropping "
                "that template?); retry, or raise lock_timeout"
            ) from None
        finally:
            self._execute("RESET lock_timeout")

    def try_advisory_lock(self, label: str, *, shared: bool = False) -> bool:
        """Take `label` for the session (SHARED: beside other shared holders) if free; no wait."""
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


def roll_back_prepared_here(conn: psycopg.Connection[Any]) -> int:
    """Roll back every prepared transaction of the database `conn` is connected to (autocommit):
    they outlive their session and hold their locks, so one a test left behind would block every
    later restore of the database, and its drop."""
    gids = [
        gid
        for (gid,) in conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        )
    ]
    for gid in gids:
        with contextlib.suppress(pgerrors.UndefinedObject):  # finished meanwhile
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    if gids:
        log.info("rolled back %d prepared transaction(s)", len(gids))
    return len(gids)


def _privilege_fix(reason: str) -> str:
    """The fix for the privilege PostgreSQL says is missing, not always CREATEDB."""
    if "permission denied to create database" in reason:
        return "grant it CREATEDB (ALTER ROLE ... CREATEDB) or use a role that has it"
    if "must be owner of" in reason:
        return (
            "that database belongs to another role: run as that role (or a member of it), or have "
            "a superuser drop it"
        )
    return "grant that privilege, or use the role that owns the test databases"
