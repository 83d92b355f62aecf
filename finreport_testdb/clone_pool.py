"""A worker's warm pool of ready clones, so a `fresh` reset costs a rename, not a clone.

Cloning the template costs 10-25 ms on tmpfs and 100-250 ms on a disk-backed server, and a
`fresh` test (or `fresh_database`) paid it on its critical path. Here a background thread with its
own administration connection keeps `pool_size` clones (`<stem>_gwN_p<k>`) ready while tests run;
a reset then swaps one in under the worker's own name in a single transaction:

    ALTER DATABASE <stem>_gwN RENAME TO <stem>_gwN_x<j>;  COMMENT ... (role trash)
    ALTER DATABASE <stem>_gwN_p<k> RENAME TO <stem>_gwN;  COMMENT ... (role worker)

and the thread drops the used database (`_x<j>`) afterwards. The worker's name and URL never
change, so an engine the app built at import time reaches the pristine database (its pooled
connections are terminated and `pool_reset` makes them reconnect). Every rename rewrites the
ownership marker in the same transaction, so after a crash at any point each database's marker
names exactly the database it sits on and `testdb clean` removes pool members and trash like any
other database of the namespace. An empty pool never fails a test: the caller waits for the clone
the thread is making, or clones directly if the thread has stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from psycopg import errors as pgerrors
from psycopg import sql

from .admin import Admin
from .errors import FinreportTestdbError
from .marker import ROLE_POOL, ROLE_TEST, ROLE_TRASH, Marker, owned_marker
from .names import Naming
from .ownership import (
    Claims,
    clear_interrupted_creation,
    existing_marker,
    new_marker,
)

log = logging.getLogger("finreport_testdb.pool")

#: How long a reset waits for the pool thread's clone before cloning itself.
_TAKE_TIMEOUT = 120.0
#: How often a rename retries after terminating sessions that connected in between (55006).
_RENAME_ATTEMPTS = 10
#: Roles whose databases the pool thread may drop in the background.
_DISPOSABLE = (ROLE_TRASH, ROLE_TEST, ROLE_POOL)


def rename_marked(admin: Admin, renames: list[tuple[str, str, Marker]], *, evict: str) -> None:
    """Apply `(old, new, marker)` renames, each with its new ownership marker, in one transaction.

    Sessions on `evict` (the worker's own database: this run's connections) are ended first (a
    rename fails while a backend is still exiting); one that reconnects in between makes
    PostgreSQL refuse the rename (55006), so we retry.
    """
    for attempt in range(1, _RENAME_ATTEMPTS + 1):
        admin.end_sessions(evict)
        try:
            with admin.conn.transaction():
                for old, new, marker in renames:
                    admin.conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(old), sql.Identifier(new)
                        )
                    )
                    admin.set_comment(new, marker.to_comment())
            return
        except pgerrors.ObjectInUse:
            if attempt == _RENAME_ATTEMPTS:
                raise FinreportTestdbError(
                    f"cannot rename {evict!r}: sessions keep reconnecting to it; stop whatever "
                    "connects to the worker database outside the tests, or set pool_size = 0"
                ) from None


class ClonePool:
    """Ready clones of one template for one worker, filled and emptied by a background thread.

    The thread owns its connection; the caller's thread only takes names from the ready list and
    hands names back for dropping, under one condition variable.
    """

    def __init__(
        self,
        connect: Callable[[], Admin],
        naming: Naming,
        worker_id: str,
        template: str,
        fingerprint: str,
        size: int,
    ) -> None:
        self._connect = connect
        self.naming = naming
        self.worker_id = worker_id
        self.template = template
        self.fingerprint = fingerprint
        self.size = size
        #: What the thread's own session claims (a member while it is created).
        self._claims = Claims()
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._trash: deque[str] = deque()
        self._job = ""  # what the thread is doing: "fill", "drop" or "" (idle)
        self._stopping = False
        self._error: BaseException | None = None
        self._next_member = 1
        self._next_trash = 1
        self._thread = threading.Thread(
            target=self._run, name=f"testdb-pool-{worker_id}", daemon=True
        )
        self._thread.start()

    # -- markers -----------------------------------------------------------------------------

    def marker(self, role: str, index: int | None = None) -> Marker:
        return new_marker(self.naming, self.fingerprint, role, worker=self.worker_id, index=index)

    def trash_name(self) -> tuple[str, Marker]:
        """A fresh trash name (and its marker) for a used database about to be renamed away."""
        with self._cond:
            index = self._next_trash
            self._next_trash += 1
        return self.naming.trash(self.worker_id, index), self.marker(ROLE_TRASH, index)

    # -- the caller's side -------------------------------------------------------------------

    def swap_in(self, admin: Admin, name: str, marker: Marker, *, evict: bool) -> None:
        """Put a pristine clone under `name`: rename `name` away to trash (when it exists) and a
        ready clone in, markers rewritten in the same transaction; the trash is dropped in the
        background. With no ready clone (the thread stopped) clone directly."""
        renames = []
        if evict:
            trash, trash_marker = self.trash_name()
            while admin.lookup(trash)[0]:  # a crashed run's leftover: dropped in the background
                self.discard(trash)
                trash, trash_marker = self.trash_name()
            renames.append((name, trash, trash_marker))
        member = self.take()
        if member is not None:
            renames.append((member, name, marker))
        if renames:
            try:
                rename_marked(admin, renames, evict=name)
            except pgerrors.InvalidCatalogName:  # the clone vanished (a `clean`): clone directly
                if member is None:
                    raise
                renames.pop()
                member = None
                if renames:
                    rename_marked(admin, renames, evict=name)
        if member is None:
            admin.create_database(name, comment=marker.to_comment(), template=self.template)
        if evict:
            self.discard(renames[0][1])
            self.drop_backlog(admin)

    def take(self, timeout: float = _TAKE_TIMEOUT) -> str | None:
        """A ready clone's name, or, with the pool empty, the one the thread is making (it
        started earlier, so it is ready sooner than a new clone). None when the thread is not
        making one (dropping, stopped, failed): the caller clones directly, today's cost."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ready:
                remaining = deadline - time.monotonic()
                if self._job != "fill" or self._stopping or self._error or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            name = self._ready.popleft()
            self._cond.notify_all()
            return name

    def discard(self, name: str) -> None:
        """Drop `name` (a trash or used per-test database) in the background."""
        with self._cond:
            self._trash.append(name)
            self._cond.notify_all()

    def drop_backlog(self, admin: Admin) -> int:
        """Drop, on the caller's connection, the used databases beyond `size` still waiting for
        the thread: when resets outpace it (slow disk, 0 ms tests) the backlog is bounded and
        paid as it grows, not all at session end. Returns how many were dropped."""
        dropped = 0
        while True:
            with self._cond:
                if len(self._trash) <= self.size:
                    return dropped
                name = self._trash.popleft()
            self._drop_if_ours(admin, name, force=True)
            dropped += 1

    @property
    def error(self) -> BaseException | None:
        return self._error

    def wait_full(self, timeout: float) -> bool:
        """Block until the pool holds `size` ready clones and no trash (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._ready) < self.size or self._trash or self._job:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._error is not None or self._stopping:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self) -> None:
        """Stop the thread (after its current job); resets then clone directly."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def close(self, admin: Admin) -> None:
        """Stop the thread, then drop every ready clone and pending trash (markers re-checked)."""
        self.stop()
        with self._cond:
            leftovers = [*self._ready, *self._trash]
            self._ready.clear()
            self._trash.clear()
        for name in leftovers:
            self._drop_if_ours(admin, name, force=True)

    # -- the thread --------------------------------------------------------------------------

    def _next_job(self) -> tuple[str, str] | None:
        """("fill", "") or ("drop", name), or None to stop. Called with the lock held."""
        while True:
            if self._stopping:
                return None
            # An empty pool first (the next test may need a clone), then drops before the rest
            # of the filling, so used databases do not pile up while tests keep the pool busy.
            if not self._ready:
                return ("fill", "")
            if self._trash:
                return ("drop", self._trash.popleft())
            if len(self._ready) < self.size:
                return ("fill", "")
            self._cond.wait()

    def _run(self) -> None:
        admin: Admin | None = None
        try:
            admin = self._connect()
            self._sweep(admin)
            while True:
                with self._cond:
                    self._job = ""
                    self._cond.notify_all()
                    job = self._next_job()
                    self._job = job[0] if job else ""
                if job is None:
                    return
                kind, name = job
                if kind == "drop":
                    self._drop_if_ours(admin, name, force=True)
                    continue
                made = self._make_member(admin)
                with self._cond:
                    if self._stopping:
                        self._trash.append(made)  # close() drops it
                    else:
                        self._ready.append(made)
                    self._cond.notify_all()
        except BaseException as exc:
            log.warning("testdb pool for %s stopped: %s", self.worker_id, exc)
            with self._cond:
                self._error = exc
                self._job = ""
                self._cond.notify_all()
        finally:
            if admin is not None:
                admin.close()

    def _sweep(self, admin: Admin) -> None:
        """Drop this worker's pool members and trash that a crashed run left behind, before the
        first clone is made under one of their names."""
        for info in admin.list_databases():
            marker = owned_marker(info.name, info.comment, self.naming.base)
            if (
                marker is not None
                and marker.role in (ROLE_POOL, ROLE_TRASH)
                and marker.worker == self.worker_id
                and marker.namespace == self.naming.namespace
            ):
                self._drop_if_ours(admin, info.name)

    def _make_member(self, admin: Admin) -> str:
        with self._cond:
            index = self._next_member
            self._next_member += 1
        name = self.naming.pool_member(self.worker_id, index)
        # Claimed while it is created, like every clone: a `clean` meanwhile must not take the
        # unmarked `<name>.creating` for a crash's leftover. Ready members are not claimed: a
        # `clean` may drop one, and `swap_in` then clones directly.
        self._claims.claim(admin, name)
        try:
            # A crashed run with this namespace may have left this name (or its unmarked
            # `.creating`, if it was killed mid-clone): it is ours, replace it.
            clear_interrupted_creation(admin, name, self.naming.base)
            if existing_marker(admin, name, self.naming.base, action="replace") is not None:
                admin.drop_database(name)
            admin.create_database(
                name, comment=self.marker(ROLE_POOL, index).to_comment(), template=self.template
            )
        finally:
            if admin.conn.closed:
                self._claims.forget()  # the server released the lock with the session
            else:
                self._claims.release(admin, name)
        return name

    def _drop_if_ours(self, admin: Admin, name: str, *, force: bool = False) -> None:
        """`force` only for this run's own databases (used trash, discarded per-test clones,
        its own pool members): their sessions are this run's pooled connections. A crashed run's
        leftover is dropped only without sessions."""
        found, comment = admin.lookup(name)
        marker = owned_marker(name, comment, self.naming.base) if found else None
        if marker is not None and marker.role in _DISPOSABLE:
            admin.drop_database(name, force=force)
        elif found:
            log.warning("testdb pool: not dropping %s, its ownership marker changed", name)
