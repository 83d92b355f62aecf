"""`ProjectDatabases`: the core API that the CLI and the pytest plugin both call.

It turns settings into a server URL (from a `ServerProvider`, by default the embedded server,
when no URL is configured), a `Naming` and a `Migrator`, keeps the one administration session and
what it has claimed, and offers the operations: ensure the template, clone a worker or per-test
database, reset or drop one, plan and run a clean-up, report status. The rules live in the modules
it calls (ownership, template, clones, undo, clean); it prints nothing, the front ends decide
how to show results.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import cached_property

import psycopg
from sqlalchemy.engine import URL

from .core import clean as clean_step
from .core import reconnect
from .core.admin import Admin
from .core.clean import CleanPlan, ManagedDatabase
from .core.clones import ClonedDatabase, clone
from .core.export import exported
from .core.marker import ROLE_TEST, ROLE_WORKER, Marker
from .core.names import Naming
from .core.ownership import (
    Claims,
    existing_marker,
    new_marker,
    session_label,
)
from .core.provider import ServerProvider, started_action
from .core.settings import Settings
from .core.template import TemplateResult, ensure_template
from .core.undo import Undo
from .core.urls import with_application_name, with_database, with_driver
from .errors import FinreportTestdbError
from .migrators.migrator import ChainMigrator, Migrator, RevisionChain
from .templates.fingerprint import revision_chain as revision_chain_of
from .templates.fingerprint import template_fingerprint
from .templates.seed import run_seed


class ProjectDatabases:
    """Everything about the test databases of one project on one server."""

    def __init__(self, settings: Settings, server_url: URL, migrator: Migrator) -> None:
        self.settings = settings
        self.server_url = server_url  # database part = base name
        self.migrator = migrator
        self._fingerprint: str | None = None
        self.naming = Naming(settings.base_database, settings.namespace)
        self._admin: Admin | None = None
        #: What starting the server did ("started", "copied", "initdb", "running") when the
        #: provider says (the embedded server does), else None; the pytest header announces a
        #: server the run started.
        self.embedded_action: str | None = None
        #: What the admin session has claimed (advisory locks: they end with the session).
        self._claims = Claims()
        #: The change tracking of each worker database this object cloned (undo.py).
        self._undo: dict[str, Undo] = {}
        #: The `application_name` of this object's sessions, set before the first one opens: the
        #: plugin and the CLI say which run or command they are (`ownership.session_label`), so
        #: `testdb server stop` can name who holds the server.
        self.application_name = session_label(f"python pid {os.getpid()}")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        migrator: Migrator | None = None,
        server: ServerProvider | None = None,
        start: bool = True,
    ) -> ProjectDatabases:
        """Resolve the server: the configured URL, else `server` (a `ServerProvider`), else the
        embedded server; the provider is started (or found running) here. Its URL gets the
        project's driver (`settings.driver`). `start=False` starts nothing: the provider's
        `expected_url()` (the embedded server reads its cache dir) stands in, for sessions that
        only need to know the URLs, never to connect."""
        embedded_action = None
        if settings.url is not None:
            server_url = settings.url
        else:
            if server is None:
                from .embedded import EmbeddedServer, default_cache_dir

                server = EmbeddedServer(default_cache_dir(settings.project_root))
            if start:
                provided = server.start().url
                embedded_action = started_action(server)
            else:
                expected = getattr(server, "expected_url", None)
                provided = expected() if callable(expected) else URL.create("postgresql")
            if settings.driver is not None:
                provided = with_driver(provided, settings.driver)
            server_url = with_database(provided, settings.base_database)
        if migrator is None:
            from .migrators.alembic_migrator import AlembicMigrator

            migrator = AlembicMigrator(
                settings.alembic_config,
                script_location=settings.script_location,
                project_root=settings.project_root,
                config_source=settings.sources.get("alembic_config"),
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
            self._claims.forget()  # the server released them with the session
        if admin is None:
            admin = self._connect()
            try:
                self._claims.hold_server(admin)  # against `testdb server stop`, until closed
            except BaseException:
                admin.close()
                raise
            self._admin = admin
        yield admin

    def _connect(self) -> Admin:
        """A new session on the maintenance database, named for `testdb server stop`."""
        configured = self.settings.url is not None
        return Admin(
            with_application_name(self.server_url, self.application_name),
            self.settings.maintenance_db,
            url_source=self.settings.sources.get("url") if configured else None,
        )

    def close(self) -> None:
        """Close the worker databases' tracking connections and the administration session
        (each is reopened if used again), even when the server is gone (stopped under a run)."""
        for undo in self._undo.values():
            undo.close()
        if self._admin is not None:
            if self._claims and self._admin.is_alive():
                # Closing the socket releases session locks only once the server notices; a
                # `clean` right after this run ends must already find its template free.
                with contextlib.suppress(psycopg.Error):  # the server went away just now
                    self._admin.conn.execute("SELECT pg_advisory_unlock_all()")
            self._admin.close()
            self._admin = None
        self._claims.forget()

    def __enter__(self) -> ProjectDatabases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def adopt_template(self, name: str, fingerprint: str) -> None:
        """Trust a template another process (the xdist controller) prepared in this same checkout,
        so this process needs neither the migrations nor Alembic to clone from it."""
        if name != self.naming.template(fingerprint):
            raise FinreportTestdbError(
                f"template {name!r} is not named for fingerprint {fingerprint[:12]}; "
                "the controller and this worker disagree on the base name or namespace"
            )
        self._fingerprint = fingerprint

    @cached_property
    def server_major(self) -> int:
        with self.admin() as admin:
            return admin.server_major

    @property
    def fingerprint(self) -> str:
        """Hash of everything that decides the template's content, incl. the server major;
        computed once (or adopted from the controller, `adopt_template`)."""
        if self._fingerprint is None:
            self._fingerprint = template_fingerprint(
                self.settings, self.migrator, self.server_major
            )
        return self._fingerprint

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

    def _upgrade(self, scratch_url: URL) -> None:
        """Extend a clone of an older template: the same `migrate` call and exported URL as a
        full build (Alembic reads where the clone stands and runs only the newer revisions)."""
        with exported(self.settings.export_url_as, scratch_url):
            self.migrator.migrate(scratch_url)

    @cached_property
    def revision_chain(self) -> RevisionChain | None:
        """The chain a template of this checkout records, for extending it later; None when the
        migrator cannot tell (not linear, not a `ChainMigrator`) or seeds are configured (a
        seed is applied after the migrations, so on an extended clone it would run twice)."""
        return revision_chain_of(self.settings, self.migrator, self.server_major)

    @cached_property
    def script_head(self) -> str | None:
        """The revision the migrations reach, when the migrator can tell (a `ChainMigrator`),
        recorded in the template's marker and compared with it at reuse; the script directory
        is loaded already (the fingerprint), so this costs no import."""
        if self.revision_chain is not None:
            return self.revision_chain.head
        if isinstance(self.migrator, ChainMigrator):
            heads = self.migrator.target_heads()
            return next(iter(heads)) if len(heads) == 1 else None
        return None

    # -- template ----------------------------------------------------------------------------

    def ensure_template(self, *, rebuild: bool = False, full: bool = False) -> TemplateResult:
        """The ready template: reused, else extended from an older one, restored from the dump
        cache, or built from empty (`full` or `rebuild` skip the first two)."""
        from .templates import sources as template_sources

        fingerprint = self.fingerprint  # outside the admin session: reads files, may connect
        chain = self.revision_chain
        fields = {"head": self.script_head} if self.script_head else {}
        if chain is not None:
            fields["chain"] = chain.digest
        sources = template_sources.Sources(self, chain)
        with self.admin() as admin:
            result = ensure_template(
                admin,
                self.naming,
                fingerprint,
                self.server_url,
                self._build,
                rebuild=rebuild,
                lock_timeout=self.settings.lock_timeout,
                fill=None if (rebuild or full) else sources.fill,
                finish=sources.finish,
                marker_fields=fields,
            )
            template_sources.record_use(admin, result.name, self.naming)
            notes = sources.notes + template_sources.stale_hint(self, admin, fingerprint)
        return replace(result, notes=tuple(notes))

    def hold_template(self) -> str:
        """Protect this run's template from `clean` for as long as this object stays open.

        Takes a SHARED advisory lock on the template's hold key in the kept admin session (so it
        ends with the process, however it ends). Call it before `ensure_template` / adopting, and
        keep the object open while workers may still clone: `clean` drops a template only if it
        can take that lock exclusively. A `clean` that holds it already makes this wait (up to
        lock_timeout), and the template is then rebuilt.
        """
        name = self.template_name
        with self.admin() as admin:
            self._claims.hold_template(admin, name, timeout=self.settings.lock_timeout)
        return name

    # -- clones ------------------------------------------------------------------------------

    def _clone(
        self, name: str, marker: Marker, *, reuse: bool = False, own: bool = False
    ) -> ClonedDatabase:
        """Every clone, re-clone and per-test clone: `clones.clone`, timed."""
        started = time.monotonic()
        template = self.template_name
        with self.admin() as admin:
            reused = clone(
                admin, self.naming, self._claims, name, marker, template, reuse=reuse, own=own
            )
        url = self.url_for(name)
        return ClonedDatabase(
            name, url, template, self.fingerprint, reused, time.monotonic() - started
        )

    def _marker(self, role: str, worker_id: str, index: int | None = None) -> Marker:
        return new_marker(self.naming, self.fingerprint, role, worker=worker_id, index=index)

    def clone_for_worker(
        self, worker_id: str, *, reuse: bool = False, track: bool = False
    ) -> ClonedDatabase:
        """The worker's own database (`master` = serial run), cloned from the ready template.
        With `track`, its change tracking is installed (undo.py): `restore_worker` then undoes
        what a test committed, over a connection this object keeps to it."""
        name = self.naming.worker(worker_id)
        undo = self._undo.pop(name, None)
        if undo is not None:
            undo.close()  # our own session on the database about to be replaced
        cloned = self._clone(name, self._marker(ROLE_WORKER, worker_id), reuse=reuse)
        if track:
            self._track(cloned.name)
        return cloned

    def _track(self, name: str) -> None:
        undo = self._undo.get(name)
        if undo is None:
            undo = self._undo[name] = Undo(self.url_for(name))
        undo.install()

    def restore_worker(self, worker_id: str) -> str:
        """Undo what was committed in the worker's database since its baseline: "clean"
        (nothing was), "restored" (the touched tables, sequences, ... were put back) or
        "replaced" (DDL or changed database settings: a new clone was swapped in, see
        `reset_worker`; what wider-scoped fixtures committed is gone with the old one)."""
        undo = self._tracked(worker_id)
        ended = undo.ended_sessions
        outcome = undo.restore()
        if undo.ended_sessions != ended:
            reconnect.bump()  # the app's pooled connections to it were ended
        if outcome == "swap":
            # The rows wider-scoped fixtures committed must survive the new clone.
            carried = undo.carry()
            try:
                self.reset_worker(worker_id)
                if carried.replica:
                    self._tracked(worker_id).apply(carried)
            finally:
                carried.close()
            return "replaced"
        return outcome

    def rebase_worker(self, worker_id: str) -> bool:
        """Make the worker database's current state the baseline `restore_worker` returns to
        (after wider-scoped fixtures committed); whether it changed."""
        return self._tracked(worker_id).rebase()

    def _tracked(self, worker_id: str) -> Undo:
        undo = self._undo.get(self.naming.worker(worker_id))
        if undo is None:
            raise FinreportTestdbError(
                f"the database of worker {worker_id!r} has no change tracking: clone it with "
                "clone_for_worker(..., track=True) before its first test"
            )
        return undo

    def reset_worker(self, worker_id: str) -> ClonedDatabase:
        """Make the worker's own database pristine (exactly the template's state) under the same
        name and URL, so engines the app built at import time reach the pristine database.

        For `isolation="fresh"`, and to undo what only a new clone can (DDL): drop and re-clone
        from the template. The worker's database is this process's own, so its sessions (the
        app's pooled connections) are terminated; `core.reconnect` makes those pools reconnect
        transparently.
        """
        name = self.naming.worker(worker_id)
        reconnect.install()
        if name in self._undo:
            self._undo[name].close()  # its session is on the database being replaced
        cloned = self._clone(name, self._marker(ROLE_WORKER, worker_id), own=True)
        reconnect.bump()
        if name in self._undo:  # tracked before: tracked again, from the template's state
            self._track(name)
        return cloned

    def clone_for_test(self, worker_id: str, index: int) -> ClonedDatabase:
        """A brand-new database for one test; drop it with `drop_database` afterwards."""
        marker = self._marker(ROLE_TEST, worker_id, index)
        name = self.naming.per_test(worker_id, index)
        with self.admin() as admin:
            # Per-test names derive from the worker's: claiming the worker's name keeps a
            # concurrent run with the same namespace (whose counter also starts at 1) out of
            # them, also when this run never clones the worker database itself.
            self._claims.claim(admin, self.naming.worker(worker_id))
        return self._clone(name, marker)

    def drop_database(self, name: str) -> None:
        """Drop a database this tool created for this base; refuse anything else.

        A database this process cloned (it holds its lock) is dropped even with open sessions:
        they are this run's own (pooled connections of the code under test). Any other is
        dropped only without sessions (`DatabaseInUse`)."""
        undo = self._undo.pop(name, None)
        if undo is not None:
            undo.close()
        with self.admin() as admin:
            if existing_marker(admin, name, self.naming.base, action="drop") is not None:
                admin.drop_database(name, force=name in self._claims.databases)
            self._claims.release(admin, name)

    # -- inventory ---------------------------------------------------------------------------

    def managed_databases(
        self, *, with_size: bool = False
    ) -> tuple[list[ManagedDatabase], list[str]]:
        """(databases of this base carrying a valid marker, other names that look like ours)."""
        with self.admin() as admin:
            return clean_step.managed_databases(admin, self.naming, with_size=with_size)

    def current_fingerprint_or_none(self) -> str | None:
        try:
            return self.fingerprint
        except FinreportTestdbError:
            return None

    def plan_clean(
        self,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        templates: bool = False,
        stale_templates: bool = False,
        keep: int | None = None,
        older_than: float | None = None,
    ) -> CleanPlan:
        """What `clean` would drop, and what it leaves alone and why.

        Worker, per-test and scratch databases of `namespace` (None: the configured one; "": no
        namespace) are dropped; templates only when asked. A scratch database whose build lock
        is held belongs to a build in progress and is skipped. With `stale_templates`, `keep`
        spares the N most recently used templates of the base (the current one counts first)
        and `older_than` spares those used within that many seconds.
        """
        # Which template is current must be known, not guessed: with an unreadable migration tree
        # (say, two heads mid-merge) "stale" would otherwise mean every template.
        current = self.fingerprint if stale_templates else None
        with self.admin() as admin:
            return clean_step.plan(
                admin,
                self.naming,
                clean_step.CleanScope(all_namespaces, templates, stale_templates, keep, older_than),
                namespace=self.naming.namespace if namespace is None else namespace,
                current=current,
            )

    def clean(self, plan: CleanPlan, *, force: bool = False) -> list[str]:
        """Drop what the plan lists, re-checking each database at the moment of its drop.

        Between plan and drop a build may have started, a run may have re-created a worker
        database or started using a template. So each drop happens under that database's lock
        (its name lock; for a scratch database also the build lock; for a template its hold
        lock, exclusively), after checking that it still carries the marker the plan saw (same
        role, fingerprint, created_at, builder), that a scratch database has no live builder,
        and that the role may drop it. A database with sessions is refused by PostgreSQL at the
        drop itself unless `force`. What is left alone is added to `plan.skipped` with the
        reason. If a drop fails, the error says what was already dropped.
        """
        with self.admin() as admin:
            return clean_step.drop_planned(admin, self.naming, self._claims, plan, force=force)
