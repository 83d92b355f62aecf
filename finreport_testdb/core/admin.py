"""Database administration over one psycopg connection to the server's maintenance database.

Create, clone, rename, freeze, drop, list, terminate, and PostgreSQL advisory locks. Every
identifier goes through `psycopg.sql.Identifier` and every value through a bound parameter, so a
database name can never break or inject SQL. This module knows nothing about Alembic or pytest, and
it does not decide *whether* a database may be dropped: callers check ownership first.
"""

from __future__ import annotations

import hashlib
import logging
import math
import select
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq, sql
from sqlalchemy.engine import URL

from ..errors import (
    DatabaseInUse,
    FinreportTestdbError,
    PermissionProblem,
    ServerUnreachable,
    TemplateBuildError,
)
from .names import creating_name
from .sessions import connect, end_backends, roll_back_prepared_here
from .urls import redact, server_label

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
class Found:
    """One database's facts, read in one query: with two, a concurrent drop or re-creation in
    between would mix two databases (one without a marker, say)."""

    oid: int  # tells a database from one dropped and re-created under its name since
    comment: str | None
    owner: str
    usable: bool  # this role has the owner's privileges (a clone's tables are the owner's)
    mine: bool  # this very role owns it (a superuser has every role's privileges)
    is_template: bool


#: A `Found` as one array, for the database named by the query parameter `{}`.
_FOUND = (
    "(SELECT array[oid::text, shobj_description(oid, 'pg_database'), pg_get_userbyid(datdba),"
    " pg_has_role(current_user, datdba, 'USAGE')::text,"
    " (pg_get_userbyid(datdba) = current_user)::text, datistemplate::text]"
    " FROM pg_database WHERE datname = %({})s)"
)


def _found(row: list[str | None] | None) -> Found | None:
    if row is None:
        return None
    oid, comment, owner, usable, mine, is_template = row
    return Found(
        int(str(oid)), comment, str(owner), usable == "true", mine == "true", is_template == "true"
    )


@dataclass(frozen=True)
class Inspection:
    """What `Admin.inspect` found about a name about to be (re)created."""

    claimed: bool
    target: Found | None
    creating: Found | None  # the leftover of an interrupted creation of the name
    template: Found | None
    role: str


def advisory_key(label: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_lock`, the same on every machine."""
    return int.from_bytes(
        hashlib.sha256(f"finreport-testdb:{label}".encode()).digest()[:8], "big", signed=True
    )


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

    def find(self, name: str) -> Found | None:
        """The database `name`, None if it does not exist."""
        row = self._execute(f"SELECT {_FOUND.format('name')}", {"name": name}).fetchone()
        return _found(row[0] if row else None)

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

    def inspect(
        self, name: str, template: str | None = None, claim: str | None = None
    ) -> Inspection:
        """Everything a clone of `template` as `name` must know, in one round trip: the claim on
        `name` (`claim`, a lock label, taken here without waiting; None if already held), the
        database there, the leftover of an interrupted creation of it, and the template (whose
        sessions are ended)."""
        row = self._execute(
            "SELECT CASE WHEN %(key)s::bigint IS NULL THEN true"
            " ELSE pg_try_advisory_lock(%(key)s::bigint) END, "
            + ", ".join(_FOUND.format(param) for param in ("name", "creating", "template"))
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
        claimed, target, creating, template_row, fsync, role, _ = row
        self._fsync = bool(fsync)
        return Inspection(
            bool(claimed), _found(target), _found(creating), _found(template_row), str(role)
        )

    # -- changes -----------------------------------------------------------------------------

    def create_database(self, name: str, *, comment: str, template: str | None = None) -> None:
        """Create (or clone from `template`) and mark the database.

        `CREATE DATABASE` cannot run in a transaction, so it cannot be marked in the same one: a
        process killed in between would leave an unmarked database under a managed name, which
        nothing may drop. So it is created as `creating_name(name)`, then marked and renamed in
        one transaction (one query string): the real name never exists unmarked. Callers clear
        a leftover creating name first (`ownership.make_room`). A session on the template
        makes PostgreSQL wait 5 s, then fail (SQLSTATE 55006): `inspect` ends those beforehand,
        and one that arrives after it is ended here and the clone retried.
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
        """FILE_COPY copies the template's files after a checkpoint: about 2x faster than WAL_LOG
        when fsync is off (the embedded server, a tmpfs CI service), 3-7x slower on a durable
        server, where that checkpoint flushes to disk (docs/benchmarks.md). PostgreSQL < 15 has
        only the former."""
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
        self.end_sessions(scratch)
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        with self.conn.transaction():
            if displaced_comment is not None:
                # Three renames, as in swapping two variables: the parked name is the scratch
                # name's creating name, which the build cleared before it began.
                parked = sql.Identifier(creating_name(scratch))
                self._execute(rename.format(sql.Identifier(template), parked))
                self._execute(rename.format(sql.Identifier(scratch), sql.Identifier(template)))
                self._execute(rename.format(parked, sql.Identifier(scratch)))
                self.set_comment(scratch, displaced_comment)
            else:
                self._execute(rename.format(sql.Identifier(scratch), sql.Identifier(template)))
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

    def end_sessions(self, name: str) -> int:
        """End the other sessions on database `name` (see `end_backends`)."""
        return end_backends(
            self.conn,
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )

    def drop_database(self, name: str, *, force: bool = False) -> None:
        """Drop; callers must have checked ownership.

        Without `force`, a database with sessions is refused by PostgreSQL itself (SQLSTATE 55006,
        checked at the moment of the drop, so no session can slip in after a check): raised as
        `DatabaseInUse`. With `force` its sessions are ended: only for a database whose users
        are the caller's own (a run's pooled connections) or dead (a killed build's).
        """
        if force:
            self.end_sessions(name)  # FORCE below stays the backstop (and PostgreSQL < 13's way)
            self.roll_back_prepared(name)
        found = self.find(name)
        if found is None:
            return
        frozen = sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE {}")
        if found.is_template:  # PostgreSQL refuses to drop a template database
            self._execute(frozen.format(sql.Identifier(name), sql.SQL("false")))
        option = sql.SQL(" WITH (FORCE)" if force and self.server_version_num >= 130000 else "")
        try:
            self._execute(
                sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), option)
            )
        except pgerrors.ObjectInUse:
            if found.is_template:  # leave it as it was
                self._execute(frozen.format(sql.Identifier(name), sql.SQL("true")))
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
        pid, _, started = identity.partition("@")
        if not pid.isdigit():
            return False
        row = self._execute(
            "SELECT backend_start IS NULL OR backend_start = %s::timestamptz "
            "FROM pg_stat_activity WHERE pid = %s",
            (started or None, int(pid)),
        ).fetchone()
        return bool(row and row[0])

    # -- advisory locks: PostgreSQL's, not files, because the racers may be CI jobs on other
    # machines; session-level, so the server releases them however a process ends. -------------

    def advisory_lock(self, label: str, *, timeout: float, shared: bool = False) -> float:
        """Take `label` for the session, waiting up to `timeout` s; returns the seconds waited.
        SHARED: beside other shared holders, keeping out only an exclusive taker (`clean`)."""
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
