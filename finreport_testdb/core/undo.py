"""Undo what a test committed, inside the worker database, so tests can commit for real.

Rolling a test back (SAVEPOINTs in an outer transaction) changes what production code sees: `xmin`
guards, deferred constraints, concurrent sessions and background tasks all behave differently
inside one transaction. Re-cloning the database after every test is exact but costs a CREATE and
a DROP DATABASE, which on a durable server wait for checkpoints. So every test commits for real,
and afterwards only what it changed is put back:

- `undo.sql`, installed into each worker database after its clone (never into the template, which
  stays the production schema), adds a statement-level trigger to every table that marks the table
  as touched *in the writing transaction* (a write that rolls back marks nothing; every driver,
  thread and task goes through it), baseline copies of every table, and the baseline of every
  sequence, large object and database setting;
- `restore()` (one round trip, ~0.1 ms when nothing was committed) deletes and re-inserts the
  touched tables from their copies with triggers and foreign-key actions off
  (`session_replication_role = replica`), resets changed sequences and drops new large objects;
- what SQL inside the database cannot undo is handled here: prepared transactions are rolled back,
  sessions holding advisory locks are ended, and DDL or changed database settings make `restore()`
  answer False: only a new clone undoes those (the caller swaps one in);
- `rebase()` makes the current state the baseline, after wider-scoped (session, module, class)
  fixtures committed: their rows stay for the tests that follow.

This module talks to one worker database only; it decides nothing about names or ownership.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from sqlalchemy.engine import URL

from ..errors import FinreportTestdbError
from .sessions import end_backends, roll_back_prepared_here
from .urls import psycopg_connect_kwargs, redact

log = logging.getLogger("finreport_testdb.core.undo")

SCHEMA = "_testdb"
#: Written on the schema: tracking of another version (undo.sql changed) is replaced.
_VERSION = "finreport-testdb undo 2"
APPLICATION_NAME = "finreport-testdb-undo"
#: How long a restore waits for a lock a stray session holds before ending that session.
_LOCK_WAIT = "1s"
#: Rounds of "undo what blocks the restore, then restore" before giving up.
_ATTEMPTS = 5


#: Carried rows stay in memory up to this size, then go to a temporary file.
_SPOOL_BYTES = 16 << 20
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


def _install_sql() -> str:
    return resources.files(__package__).joinpath("undo.sql").read_text(encoding="utf-8")


class Undo:
    """The change tracking of one worker database, over a connection of its own.

    `install()` once after each clone; then `restore()` after every test and `rebase()` after
    wider-scoped fixtures ran. `ended_sessions` counts the sessions it had to end (their
    connections' pools must reconnect).
    """

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
                    f"test committed: {' '.join(redact(str(exc), self.url).split())}; check that "
                    "the server is up, then run again"
                ) from None
            # The restore must not wait long behind a session a test left open in a transaction;
            # it ends that session instead (see _end_stray_sessions). Its commit need not wait
            # for the disk: nothing of a test database has to survive a crash.
            self._conn.execute(f"SET lock_timeout = '{_LOCK_WAIT}'")
            self._conn.execute("SET synchronous_commit = off")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- install -------------------------------------------------------------------------------

    def install(self) -> None:
        """Track the database as it is now (its baseline). Idempotent: a database that already
        carries the tracking (reused across runs) is only re-read."""
        try:
            self._install()
        except psycopg.Error as exc:
            reason = " ".join(redact(str(exc), self.url).split())
            raise FinreportTestdbError(
                f"cannot install the change tracking in the test database {self.url.database!r}: "
                f"{reason}; the role of the URL must own the database and its tables (it does when "
                "it built the template)"
            ) from None

    def _install(self) -> None:
        conn = self.conn
        with conn.transaction():
            conn.execute("SET LOCAL finreport_testdb.internal = on")
            installed = conn.execute(
                "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
                (SCHEMA,),
            ).fetchone()
            if installed is not None and installed[0] != _VERSION:
                # Another version's tracking (a database --testdb-reuse kept across an upgrade):
                # its triggers and event triggers go with its functions.
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
            if installed is None or installed[0] != _VERSION:
                # A test database need not survive a crash: its commits (the app's too) do not
                # wait for the disk, which on a durable server is most of a small commit's cost.
                # Visibility and every other transaction semantic stay as in production.
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                        sql.Identifier(str(self.url.database))
                    )
                )
                conn.execute(_install_sql())
                conn.execute(
                    sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                        sql.Identifier(SCHEMA), sql.Literal(_VERSION)
                    )
                )
                if self._is_superuser():
                    # DDL is seen only through event triggers, which need a superuser; without
                    # them a test's DDL is not undone (docs/pytest.md says so).
                    for event in ("ddl_command_end", "sql_drop"):
                        conn.execute(
                            sql.SQL(
                                "CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION _testdb.mark_ddl()"
                            ).format(sql.Identifier(f"_testdb_{event}"), sql.SQL(event))
                        )
                conn.execute(
                    "UPDATE _testdb.baseline SET replica = %s", (self._may_use_replica_mode(),)
                )
            conn.execute("SELECT _testdb.sync()")

    def _is_superuser(self) -> bool:
        row = self.conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        found = row.fetchone()
        return bool(found and found[0])

    def _may_use_replica_mode(self) -> bool:
        """Whether this role may turn triggers off for the restore (a superuser, or since
        PostgreSQL 15 a role granted SET on session_replication_role). Without it, a test that
        committed is undone by swapping in a new clone."""
        try:
            with self.conn.transaction():
                self.conn.execute("SET LOCAL session_replication_role = replica")
        except pgerrors.InsufficientPrivilege:
            return False
        return True

    # -- per test ------------------------------------------------------------------------------

    def restore(self) -> str:
        """Put back what was committed since the baseline: "clean" (nothing was), "restored",
        or "swap" when only a new clone can undo it (DDL, changed database settings, or a role
        that may not turn triggers off); nothing is changed then."""
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
                self._end_sessions("SELECT _testdb.new_lock_holders()")
            else:
                self._end_stray_sessions()
        raise FinreportTestdbError(
            f"cannot undo what the last test committed in {self.url.database!r}: other sessions "
            "keep blocking it; stop whatever keeps connecting to the test database between tests"
        )

    def carry(self) -> Carried:
        """Before this database is replaced (DDL): what wider-scoped fixtures committed, read
        from the baseline copies, for `apply` on the new clone. The clone has the template's
        rows, so only the rebased tables travel, and every sequence's baseline."""
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
                for chunk in out:
                    data.write(chunk)
            data.seek(0)
            carried.tables.append((int(relid), str(columns), data))
        carried.sequences = [
            (int(seq), value)
            for seq, value in conn.execute("SELECT seqrelid, last_value FROM _testdb.sequences")
        ]
        return carried

    def apply(self, carried: Carried) -> None:
        """On the new clone (tracking installed): put the carried baseline in, then make it the
        baseline. A clone has the same relation oids as the database it replaces: both are
        copies of one template."""
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
        """Make the current state the baseline (what wider-scoped fixtures committed stays);
        whether it changed."""
        return bool(self._call("SELECT _testdb.rebase()"))

    def _call(self, query: str) -> Any:
        row = self.conn.execute(query).fetchone()
        return row[0] if row else None

    def _end_stray_sessions(self) -> None:
        """Sessions idle inside a transaction that holds locks on tracked tables (a test left
        them open): they block the restore, and what they wrote would land after it."""
        self._end_sessions(
            "SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.datname = current_database() AND l.pid <> pg_backend_pid() AND l.granted "
            "AND a.state LIKE 'idle in transaction%' "
            "AND l.relation IN (SELECT relid FROM _testdb.tables)"
        )

    def _end_sessions(self, pids_query: str) -> None:
        """End the sessions `pids_query` selects (this run's own connections to its own
        database) and wait until they are gone."""
        self.ended_sessions += end_backends(self.conn, pids_query)
