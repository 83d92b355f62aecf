"""`TestDatabases`: the core API that the CLI and the pytest plugin both call.

It turns settings into a server URL (starting the embedded server when no URL is configured), a
`Naming`, and a `Migrator`, and offers the operations: ensure the template, clone a worker or
per-test database, drop one, plan and run a clean-up, report status. It prints nothing; the front
ends decide how to show results.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property

from psycopg import errors as pgerrors
from sqlalchemy.engine import URL

from . import pool_reset
from .admin import Admin
from .clone_pool import ClonePool, rename_marked
from .errors import DatabaseInUse, TestdbError
from .export import exported
from .marker import (
    ROLE_POOL,
    ROLE_SCRATCH,
    ROLE_TEMPLATE,
    ROLE_TEST,
    ROLE_WORKER,
    Marker,
    owned_marker,
    utc_now,
)
from .migrator import Migrator, hash_globs
from .names import Naming
from .seed import run_seed, seed_fingerprint
from .settings import Settings
from .template import TemplateResult, ensure_template, existing_marker, template_lock_label
from .urls import (
    SecretUrl,
    async_variant,
    render_for_humans,
    sync_variant,
    with_database,
)

log = logging.getLogger("finreport_testdb")

#: Bump when the way templates are built changes, so old templates are not reused.
TEMPLATE_FORMAT = "1"


@dataclass(frozen=True, repr=False)
class ClonedDatabase:
    """A database cloned from the template for one worker or one test."""

    name: str
    url: URL
    template: str
    fingerprint: str
    reused: bool
    seconds: float

    @property
    def url_string(self) -> SecretUrl:
        """The URL with the configured driver and the password intact, for the code under test
        (a `str` whose `repr` masks the password, so failure reports do not show it)."""
        return SecretUrl(self.url)

    @property
    def sync_url(self) -> SecretUrl:
        return SecretUrl(sync_variant(self.url))

    @property
    def async_url(self) -> SecretUrl:
        return SecretUrl(async_variant(self.url))

    def __repr__(self) -> str:  # dataclass repr would print the password in test reports
        return (
            f"ClonedDatabase(name={self.name!r}, url={render_for_humans(self.url)!r}, "
            f"template={self.template!r}, reused={self.reused})"
        )


@dataclass(frozen=True)
class ManagedDatabase:
    name: str
    marker: Marker
    connections: int
    size_bytes: int | None
    is_template: bool

    def age_seconds(self, now: datetime | None = None) -> float | None:
        created = self.marker.created_datetime()
        if created is None:
            return None
        return ((now or datetime.now(timezone.utc)) - created).total_seconds()


@dataclass
class CleanPlan:
    drop: list[ManagedDatabase] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def _looks_like_ours(name: str, base: str) -> bool:
    """Names the user may expect `clean` to handle; used only to explain skips, never to drop."""
    return name == base or name.startswith(f"{base}_")


def _unowned_reason(comment: str | None, naming: Naming) -> str:
    """Why a database named like ours is not ours to drop."""
    marker = Marker.parse(comment)
    if marker is None:
        return "no testdb ownership marker (not created by testdb)"
    if marker.base != naming.base:
        return f"no testdb ownership marker for this base (its marker is for base {marker.base!r})"
    expected = marker.expected_name()
    if expected is None:
        return "no testdb ownership marker of its own (its marker is incoherent)"
    return f"no testdb ownership marker of its own (its marker is {expected!r}'s: copied or forged)"


class TestDatabases:
    """Everything about the test databases of one project on one server."""

    __test__ = False  # not a pytest test class

    def __init__(self, settings: Settings, server_url: URL, migrator: Migrator) -> None:
        self.settings = settings
        self.server_url = server_url  # database part = base name
        self.migrator = migrator
        self.naming = Naming(settings.base_database, settings.namespace)
        self._admin: Admin | None = None
        #: What starting the embedded server did ("started", "copied", "initdb", "running"), or
        #: None when a URL was configured: the pytest header announces a server it started.
        self.embedded_action: str | None = None
        #: Warm pools of ready clones, per worker id (`start_pool`); see clone_pool.py.
        self.pools: dict[str, ClonePool] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, *, migrator: Migrator | None = None
    ) -> TestDatabases:
        """Resolve the server: the configured URL, else the embedded server (started if needed)."""
        embedded_action = None
        if settings.url is not None:
            server_url = settings.url
        else:
            from .embedded_server import EmbeddedServer, default_cache_dir

            server = EmbeddedServer(default_cache_dir(settings.project_root))
            info = server.start()
            embedded_action = server.last_start_action
            server_url = with_database(info.url, settings.base_database)
        if migrator is None:
            from .alembic_migrator import AlembicMigrator

            migrator = AlembicMigrator(
                settings.alembic_config,
                script_location=settings.script_location,
                project_root=settings.project_root,
            )
        databases = cls(settings, server_url, migrator)
        databases.embedded_action = embedded_action
        return databases

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def admin(self) -> Iterator[Admin]:
        """The administration session, opened once and kept: a login costs 5-15 ms, and a worker
        running `fresh_database` tests would otherwise pay it twice per test. A connection the
        server closed (restart, terminate) is replaced: a round trip (~0.1 ms) checks it first."""
        admin = self._admin
        if admin is not None and not admin.is_alive():
            admin.close()
            admin = None
        if admin is None:
            admin = self._admin = Admin(self.server_url, self.settings.maintenance_db)
        yield admin

    def close(self) -> None:
        """Stop the pools (dropping their clones), close the administration session (it is
        reopened if used again)."""
        pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            with self.admin() as admin:
                pool.close(admin)
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def __enter__(self) -> TestDatabases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def adopt_template(self, name: str, fingerprint: str) -> None:
        """Trust a template another process (the xdist controller) prepared in this same checkout,
        so this process needs neither the migrations nor Alembic to clone from it."""
        if name != self.naming.template(fingerprint):
            raise TestdbError(
                f"template {name!r} is not named for fingerprint {fingerprint[:12]}; "
                "the controller and this worker disagree on the base name or namespace"
            )
        self.__dict__["fingerprint"] = fingerprint  # seeds the cached_property

    @cached_property
    def server_major(self) -> int:
        with self.admin() as admin:
            return admin.server_major

    @cached_property
    def fingerprint(self) -> str:
        """Hash of everything that decides the template's content, incl. the server major."""
        h = hashlib.sha256(f"finreport-testdb template v{TEMPLATE_FORMAT}\0".encode())
        h.update(self.migrator.fingerprint().encode() + b"\0")
        h.update(f"server-major={self.server_major}\0".encode())
        root = self.settings.project_root
        if self.settings.fingerprint_extra:
            h.update(hash_globs(root, self.settings.fingerprint_extra).encode())
        if self.settings.seed:
            h.update(seed_fingerprint(self.settings.seed, root).encode())
        return h.hexdigest()

    @property
    def template_name(self) -> str:
        return self.naming.template(self.fingerprint)

    def url_for(self, database: str) -> URL:
        return with_database(self.server_url, database)

    def worker_url(self, worker_id: str) -> URL:
        return self.url_for(self.naming.worker(worker_id))

    def _build(self, scratch_url: URL) -> None:
        # An env.py (or app settings it imports) that reads DATABASE_URL must see the scratch
        # database while it runs; the previous values come back afterwards.
        with exported(self.settings.export_url_as, scratch_url):
            self.migrator.migrate(scratch_url)
            run_seed(self.settings.seed, scratch_url, self.settings.project_root)

    # -- template ----------------------------------------------------------------------------

    def ensure_template(self, *, rebuild: bool = False) -> TemplateResult:
        fingerprint = self.fingerprint  # outside the admin session: reads files, may connect
        with self.admin() as admin:
            return ensure_template(
                admin,
                self.naming,
                fingerprint,
                self.server_url,
                self._build,
                rebuild=rebuild,
                lock_timeout=self.settings.lock_timeout,
            )

    # -- clones ------------------------------------------------------------------------------

    def _clone(self, name: str, marker: Marker, *, reuse: bool) -> ClonedDatabase:
        started = time.monotonic()
        template = self.template_name
        with self.admin() as admin:
            existing = existing_marker(admin, name, self.naming.base, action="replace")
            if existing is not None:
                if reuse and existing.fingerprint == self.fingerprint:
                    return ClonedDatabase(
                        name,
                        self.url_for(name),
                        template,
                        self.fingerprint,
                        True,
                        time.monotonic() - started,
                    )
                sessions = admin.session_count(name)
                if sessions:
                    raise DatabaseInUse(
                        f"database {name!r} is in use by {sessions} other session(s), probably "
                        "another test run with the same namespace on this server; give each "
                        "concurrent run its own namespace (TESTDB_NAMESPACE=auto or "
                        "--testdb-namespace), or close those sessions"
                    )
                admin.drop_database(name)
            admin.create_database(name, comment=marker.to_comment(), template=template)
        return ClonedDatabase(
            name, self.url_for(name), template, self.fingerprint, False, time.monotonic() - started
        )

    def _worker_marker(self, worker_id: str) -> Marker:
        return Marker(
            role=ROLE_WORKER,
            base=self.naming.base,
            namespace=self.naming.namespace,
            fingerprint=self.fingerprint,
            created_at=utc_now(),
            worker=worker_id,
        )

    def clone_for_worker(self, worker_id: str, *, reuse: bool = False) -> ClonedDatabase:
        """The worker's own database (`master` = serial run), cloned from the ready template."""
        marker = self._worker_marker(worker_id)
        return self._clone(self.naming.worker(worker_id), marker, reuse=reuse)

    def reset_worker(self, worker_id: str) -> ClonedDatabase:
        """Make the worker's own database pristine (exactly the template's state) under the same
        name and URL, so engines the app built at import time reach the pristine database.

        The one entry point for `isolation="fresh"`: with the worker's pool started
        (`start_pool`), a ready clone is renamed in and the used database renamed away to be
        dropped in the background (clone_pool.py); without one, drop + re-clone from the template.
        The worker's database is this process's own, so its sessions (the app's pooled
        connections) are terminated; `pool_reset` makes those pools reconnect transparently.
        """
        name = self.naming.worker(worker_id)
        started = time.monotonic()
        template = self.template_name
        marker = self._worker_marker(worker_id)
        pool_reset.install()
        pool = self.pools.get(worker_id)
        with self.admin() as admin:
            exists = existing_marker(admin, name, self.naming.base, action="reset") is not None
            if pool is not None:
                self._swap_in(admin, pool, name, marker, evict=exists)
            else:
                if exists:
                    admin.terminate_sessions(name)
                    admin.drop_database(name)
                admin.create_database(name, comment=marker.to_comment(), template=template)
        pool_reset.bump()
        return ClonedDatabase(
            name, self.url_for(name), template, self.fingerprint, False, time.monotonic() - started
        )

    def start_pool(self, worker_id: str) -> ClonePool | None:
        """Start (once) the worker's pool of `pool_size` ready clones, filled in the background;
        `reset_worker` and `clone_for_test` then swap one in. None when `pool_size` is 0."""
        if self.settings.pool_size <= 0:
            return None
        pool = self.pools.get(worker_id)
        if pool is None:
            pool = self.pools[worker_id] = ClonePool(
                lambda: Admin(self.server_url, self.settings.maintenance_db),
                self.naming,
                worker_id,
                self.template_name,
                self.fingerprint,
                self.settings.pool_size,
            )
        return pool

    def _swap_in(
        self, admin: Admin, pool: ClonePool, name: str, marker: Marker, *, evict: bool
    ) -> None:
        """Put a pristine clone under `name`: rename `name` away to trash (when it exists) and a
        ready clone in, markers rewritten in the same transaction; the trash is dropped in the
        background. With no ready clone (the pool thread stopped) clone directly."""
        renames = []
        if evict:
            trash, trash_marker = pool.trash_name()
            while admin.lookup(trash)[0]:  # a crashed run's leftover: dropped in the background
                pool.discard(trash)
                trash, trash_marker = pool.trash_name()
            renames.append((name, trash, trash_marker))
        member = pool.take()
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
            admin.create_database(name, comment=marker.to_comment(), template=self.template_name)
        if evict:
            pool.discard(renames[0][1])
            pool.drop_backlog(admin)

    def clone_for_test(self, worker_id: str, index: int) -> ClonedDatabase:
        """A brand-new database for one test; drop it with `drop_database` afterwards (or
        `drop_later`). Swapped in from the worker's pool when `start_pool` started one."""
        marker = Marker(
            role=ROLE_TEST,
            base=self.naming.base,
            namespace=self.naming.namespace,
            fingerprint=self.fingerprint,
            created_at=utc_now(),
            worker=worker_id,
            index=index,
        )
        name = self.naming.per_test(worker_id, index)
        pool = self.pools.get(worker_id)
        if pool is None:
            return self._clone(name, marker, reuse=False)
        started = time.monotonic()
        with self.admin() as admin:
            if existing_marker(admin, name, self.naming.base, action="replace") is not None:
                admin.drop_database(name)
            self._swap_in(admin, pool, name, marker, evict=False)
        return ClonedDatabase(
            name,
            self.url_for(name),
            self.template_name,
            self.fingerprint,
            False,
            time.monotonic() - started,
        )

    def drop_database(self, name: str) -> None:
        """Drop a database this tool created for this base; refuse anything else."""
        with self.admin() as admin:
            if existing_marker(admin, name, self.naming.base, action="drop") is not None:
                admin.drop_database(name)

    def drop_later(self, worker_id: str, name: str) -> None:
        """Drop a per-test database: in the pool's background thread when the worker has a pool
        (its marker is re-checked there), else now."""
        pool = self.pools.get(worker_id)
        if pool is None:
            self.drop_database(name)
        else:
            pool.discard(name)

    # -- inventory ---------------------------------------------------------------------------

    def managed_databases(
        self, *, with_size: bool = False
    ) -> tuple[list[ManagedDatabase], list[str]]:
        """(databases of this base carrying a valid marker, other names that look like ours)."""
        managed: list[ManagedDatabase] = []
        lookalikes: list[str] = []
        with self.admin() as admin:
            for info in admin.list_databases(with_size=with_size):
                marker = owned_marker(info.name, info.comment, self.naming.base)
                if marker is not None:
                    managed.append(
                        ManagedDatabase(
                            info.name, marker, info.connections, info.size_bytes, info.is_template
                        )
                    )
                elif _looks_like_ours(info.name, self.naming.base):
                    lookalikes.append(info.name)
        return managed, lookalikes

    def current_fingerprint_or_none(self) -> str | None:
        try:
            return self.fingerprint
        except TestdbError:
            return None

    def plan_clean(
        self,
        *,
        namespace: str | None = "",
        all_namespaces: bool = False,
        templates: bool = False,
        stale_templates: bool = False,
    ) -> CleanPlan:
        """What `clean` would drop, and what it leaves alone and why.

        Worker, per-test and scratch databases of the namespace (default: the configured one) are
        dropped; templates only when asked. A scratch database whose build lock is held belongs to
        a build in progress and is skipped.
        """
        ns = self.naming.namespace if namespace == "" else (namespace or "")
        managed, lookalikes = self.managed_databases()
        plan = CleanPlan()
        # Which template is current must be known, not guessed: with an unreadable migration tree
        # (say, two heads mid-merge) "stale" would otherwise mean every template.
        current = self.fingerprint if stale_templates else None
        used = {
            db.marker.fingerprint
            for db in managed
            if db.marker.role in (ROLE_WORKER, ROLE_TEST, ROLE_POOL)
        }
        with self.admin() as admin:
            for name in lookalikes:
                plan.skipped.append((name, _unowned_reason(admin.comment_of(name), self.naming)))
            for db in managed:
                role = db.marker.role
                if role == ROLE_TEMPLATE:
                    if templates:
                        plan.drop.append(db)
                    elif stale_templates:
                        if db.marker.fingerprint == current:
                            plan.skipped.append((db.name, "template of the current fingerprint"))
                        elif db.marker.fingerprint in used:
                            plan.skipped.append(
                                (db.name, "template still used by worker databases")
                            )
                        else:
                            plan.drop.append(db)
                    continue
                if role == ROLE_SCRATCH:
                    label = template_lock_label(self.naming.template(db.marker.fingerprint))
                    if not admin.try_advisory_lock(label):
                        plan.skipped.append((db.name, "a template build is in progress"))
                        continue
                    admin.advisory_unlock(label)
                    plan.drop.append(db)
                    continue
                if all_namespaces or db.marker.namespace == ns:
                    plan.drop.append(db)
                else:
                    plan.skipped.append((db.name, f"namespace {db.marker.namespace!r}"))
        return plan

    def clean(self, plan: CleanPlan) -> list[str]:
        """Drop what the plan lists (re-checking each marker right before the drop)."""
        dropped: list[str] = []
        for db in plan.drop:
            self.drop_database(db.name)
            dropped.append(db.name)
        return dropped
