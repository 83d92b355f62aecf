"""Undo what a test committed, inside the worker database, so that tests commit for real.

Rolling a test back changes what production code sees (xmin guards, deferred constraints,
concurrent sessions, background tasks); re-cloning after every test waits for checkpoints. So
`undo.sql` tracks and restores inside the database; what blocks it is handled in `Undo.restore`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from sqlalchemy.engine import URL

from ..errors import FinreportTestdbError
from .admin import end_backends, roll_back_prepared_here
from .urls import one_line, psycopg_connect_kwargs

SCHEMA = "_testdb"
_VERSION = "finreport-testdb undo 2"  # on the schema: another version's tracking is replaced
APPLICATION_NAME = "finreport-testdb-undo"
_LOCK_WAIT = "1s"  # for a lock a stray session holds, before that session is ended
_ATTEMPTS = 5  # rounds of "undo what blocks the restore, then restore"
_SPOOL_BYTES = 16 << 20  # carried rows beyond this go to a temporary file
_CHUNK = 1 << 20


@dataclass
class Carried:
    """A baseline on its way from a database to the clone that replaces it."""

    replica: bool
    tables: list[tuple[int, str, IO[bytes]]] = field(default_factory=list)
    sequences: list[tuple[int, int | None]] = field(default_factory=list)

    def close(self) -> None:
        for _, _, data in self.tables:
            data.close()


class Undo:
    """The change tracking of one worker database, over a connection of its own: `install()`
    after each clone, `restore()` after every test, `rebase()` after wider-scoped fixtures ran.
    `ended_sessions` counts the sessions it ended (their pools must reconnect)."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self.ended_sessions = 0

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    autocommit=True,
                    application_name=APPLICATION_NAME,
                    **psycopg_connect_kwargs(self.url),
                )
            except psycopg.Error as exc:
                raise FinreportTestdbError(
                    f"cannot connect to the test database {self.url.database!r} to undo what a "
                    f"test committed: {one_line(exc, self.url)}; check that the server is up, "
                    "then run again"
                ) from None
            # Not waiting behind a session a test left in a transaction (it is ended instead),
            # nor for the disk: nothing of a test database has to survive a crash.
            self._conn.execute(f"SET lock_timeout = '{_LOCK_WAIT}'")
            self._conn.execute("SET synchronous_commit = off")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:  # reopened by `conn` if used again
            self._conn.close()

    def install(self) -> None:
        """Track the database as it is now (its baseline); a database reused across runs that
        carries the tracking already is only re-read."""
        try:
            conn = self.conn
            with conn.transaction():
                conn.execute("SET LOCAL finreport_testdb.internal = on")
                row = conn.execute(
                    "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
                    (SCHEMA,),
                ).fetchone()
                if row is None or row[0] != _VERSION:
                    self._install_schema(replace=row is not None)
                conn.execute("SELECT _testdb.sync()")
        except psycopg.Error as exc:
            raise FinreportTestdbError(
                f"cannot install the change tracking in the test database {self.url.database!r}: "
                f"{one_line(exc, self.url)}; the role of the URL must own the database and its "
                "tables (it does when it built the template)"
            ) from None

    def _install_schema(self, *, replace: bool) -> None:
        conn = self.conn
        if replace:  # another version's
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
        # The app's commits need not wait for the disk either (most of a small commit's cost on a
        # durable server); visibility and every other semantic stay.
        database = sql.Identifier(str(self.url.database))
        conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(database))
        conn.execute(resources.files(__package__).joinpath("undo.sql").read_text(encoding="utf-8"))
        comment = sql.SQL("COMMENT ON SCHEMA {} IS {}")
        conn.execute(comment.format(sql.Identifier(SCHEMA), sql.Literal(_VERSION)))
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if (superuser.fetchone() or (False,))[0]:
            # Event triggers (DDL) need a superuser; docs/pytest.md says what that means.
            trigger = sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION _testdb.mark_ddl()")
            for event in ("ddl_command_end", "sql_drop"):
                conn.execute(trigger.format(sql.Identifier(f"_testdb_{event}"), sql.SQL(event)))
        # A superuser, or (PostgreSQL 15) a role granted SET on session_replication_role; the
        # restore of any other truncates and refills, with its triggers disabled one by one.
        replica = True
        try:
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
        except pgerrors.InsufficientPrivilege:
            replica = False
        conn.execute("UPDATE _testdb.baseline SET replica = %s", (replica,))

    def restore(self) -> str:
        """Put back what was committed since the baseline: "clean" (nothing was), "restored",
        or "swap" (DDL or changed settings: only a new clone undoes them; nothing is changed)."""
        for _ in range(_ATTEMPTS):
            try:
                outcome = str(self._call("SELECT _testdb.restore()"))
            except pgerrors.LockNotAvailable:
                outcome = "stray"
            if outcome in ("clean", "restored", "swap"):
                return outcome
            if outcome == "prepared":
                roll_back_prepared_here(self.conn)
            elif outcome == "locks":
                self.ended_sessions += end_backends(self.conn, "SELECT _testdb.new_lock_holders()")
            else:  # idle in transaction with locks on tracked tables: their writes would land later
                self.ended_sessions += end_backends(
                    self.conn,
                    "SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE a.datname = current_database() AND l.pid <> pg_backend_pid() AND l.granted "
                    "AND a.state LIKE 'idle in transaction%' "
                    "AND l.relation IN (SELECT relid FROM _testdb.tables)",
                )
        raise FinreportTestdbError(
            f"cannot undo what the last test committed in {self.url.database!r}: other sessions "
            "keep blocking it; stop whatever keeps connecting to the test database between tests"
        )

    def carry(self) -> Carried:
        """Before a swap: the baseline of the tables wider-scoped fixtures changed (the rest is
        the template's anyway) and of every sequence, for `apply` on the new clone."""
        conn = self.conn
        row = conn.execute("SELECT ddl, replica FROM _testdb.baseline").fetchone()
        if row is not None and row[0]:
            raise FinreportTestdbError(
                f"a test ran DDL in {self.url.database!r}, so it was replaced by a new clone of "
                "the template, but session-, module- or class-scoped fixtures had changed the "
                "schema before it, and a clone cannot have their changes; give the test that runs "
                "DDL its own database (the fresh_database fixture), or move the fixtures' schema "
                "changes into a migration"
            )
        carried = Carried(replica=bool(row and row[1]))
        tables = conn.execute(
            "SELECT relid, columns, copy FROM _testdb.tables WHERE rebased ORDER BY relid"
        ).fetchall()
        for relid, columns, copy in tables:
            # Closed by `apply` (or `Carried.close`): it outlives this call.
            data = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
            query = sql.SQL("COPY (SELECT {} FROM _testdb.{}) TO STDOUT (FORMAT binary)").format(
                sql.SQL(columns), sql.Identifier(copy)
            )
            with conn.cursor().copy(query) as out:
                data.writelines(out)
            data.seek(0)
            carried.tables.append((int(relid), str(columns), data))
        carried.sequences = [
            (int(seq), value)
            for seq, value in conn.execute("SELECT seqrelid, last_value FROM _testdb.sequences")
        ]
        return carried

    def apply(self, carried: Carried) -> None:
        """Put the carried baseline into the new clone (same relation oids: both are copies of
        one template) and make it the baseline."""
        conn = self.conn
        with conn.transaction():
            if carried.replica:
                conn.execute("SET LOCAL session_replication_role = replica")
            for relid, columns, data in carried.tables:
                name = conn.execute("SELECT %s::regclass::text", (relid,)).fetchone()
                table = sql.SQL(str(name[0] if name else relid))  # quoted by regclass's output
                conn.execute(sql.SQL("DELETE FROM ONLY {}").format(table))
                query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                    table, sql.SQL(columns)
                )
                with conn.cursor().copy(query) as into:
                    while chunk := data.read(_CHUNK):
                        into.write(chunk)
            for seq, value in carried.sequences:
                if value is not None:
                    conn.execute("SELECT setval(%s::regclass, %s, true)", (seq, value))
            conn.execute("SELECT _testdb.sync()")
            conn.execute(
                "UPDATE _testdb.tables SET rebased = true WHERE relid = ANY(%s)",
                ([relid for relid, _, _ in carried.tables],),
            )

    def rebase(self) -> bool:
        """Make the current state the baseline; whether it changed."""
        return bool(self._call("SELECT _testdb.rebase()"))

    def _call(self, query: str) -> Any:
        row = self.conn.execute(query).fetchone()
        return row[0] if row else None
