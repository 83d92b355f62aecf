"""`ProjectDatabases`: the core API that the CLI and the pytest plugin both call. It wires the
parts and keeps the one administration session with what it has claimed; the rules live in the
modules it calls, and it prints nothing.
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
from .core.marker import ROLE_TEST, ROLE_WORKER, Marker, utc_now
from .core.names import Naming
from .core.ownership import Claims, existing_marker, session_label
from .core.provider import ServerProvider, started_action
from .core.settings import Settings
from .core.template import TemplateResult, ensure_template
from .core.undo import Undo
from .core.urls import with_application_name, with_database, with_driver
from .errors import FinreportTestdbError
from .migrators.migrator import ChainMigrator, Migrator, RevisionChain
from .templates.fingerprint import revision_chain as revision_chain_of
from .templates.fingerprint import template_fingerprint


class ProjectDatabases(contextlib.AbstractContextManager["ProjectDatabases"]):
    """Everything about the test databases of one project on one server."""

    def __init__(self, settings: Settings, server_url: URL, migrator: Migrator) -> None:
        self.settings = settings
        self.server_url = server_url  # database part = base name
        self.migrator = migrator
        self._fingerprint: str | None = None
        self.naming = Naming(settings.base_database, settings.namespace)
        self._admin: Admin | None = None
        #: What starting the server did ("started", "initdb", ...), if the provider says: the
        #: pytest header announces a server the run started.
        self.embedded_action: str | None = None
        self._claims = Claims()
        self._undo: dict[str, Undo] = {}  # the change tracking of each worker database
        #: Set by the front ends before the first session opens, so `testdb server stop` can name
        #: who holds the server.
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
        """The server is the configured URL, else `server`'s, else the embedded server's, started
        here. `start=False` starts nothing: the provider's `expected_url()` stands in, for
        sessions that only need to know the URLs."""
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

    @contextmanager
    def admin(self) -> Iterator[Admin]:
        """The administration session, opened once and kept (a login costs 5-15 ms); one the
        server closed (a restart) is replaced."""
        admin = self._admin
        if admin is not None and not admin.is_alive():
            admin.close()
            admin = None
            self._claims = Claims()  # the server released them with the session
        if admin is None:
            url_source = self.settings.sources.get("url") if self.settings.url is not None else None
            admin = Admin(
                with_application_name(self.server_url, self.application_name),
                self.settings.maintenance_db,
                url_source=url_source,
            )
            try:
                self._claims.hold_server(admin)  # against `testdb server stop`, until closed
            except BaseException:
                admin.close()
                raise
            self._admin = admin
        yield admin

    def close(self) -> None:
        """Close every session (each is reopened if used again), also when the server is gone."""
        for undo in self._undo.values():
            undo.close()
        if self._admin is not None:
            if self._admin.is_alive():  # it holds the server at least
                # Closing the socket releases session locks only once the server notices; a
                # `clean` right after this run ends must already find its template free.
                with contextlib.suppress(psycopg.Error):  # the server went away just now
                    self._admin.conn.execute("SELECT pg_advisory_unlock_all()")
            self._admin.close()
            self._admin = None
        self._claims = Claims()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def adopt_template(self, name: str, fingerprint: str) -> None:
        """Trust a template the xdist controller prepared in this checkout: a worker then needs
        neither the migrations nor Alembic."""
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
        """Hash of everything that decides the template's content (templates/fingerprint.py)."""
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

    @cached_property
    def revision_chain(self) -> RevisionChain | None:
        """The chain a template records, to be extended later (templates/fingerprint.py)."""
        return revision_chain_of(self.settings, self.migrator, self.server_major)

    def ensure_template(self, *, rebuild: bool = False, full: bool = False) -> TemplateResult:
        """The ready template: reused, else extended from an older one, restored from the dump
        cache, or built from empty (`full` or `rebuild` skip the first two)."""
        from .templates import sources as template_sources

        fingerprint = self.fingerprint  # outside the admin session: reads files, may connect
        chain = self.revision_chain
        # The revision the migrations reach, if the migrator can tell, is compared at reuse
        # (`core.template.ensure_template`).
        fields = {"head": chain.head, "chain": chain.digest} if chain is not None else {}
        if chain is None and isinstance(self.migrator, ChainMigrator):
            heads = self.migrator.target_heads()
            if len(heads) == 1:
                fields["head"] = next(iter(heads))
        sources = template_sources.Sources(
            self.settings,
            self.server_url,
            self.migrator,
            self.naming,
            fingerprint,
            self.server_major,
            chain,
        )
        with self.admin() as admin:
            result = ensure_template(
                admin,
                self.naming,
                fingerprint,
                self.server_url,
                sources.build,
                rebuild=rebuild,
                lock_timeout=self.settings.lock_timeout,
                fill=None if (rebuild or full) else sources.fill,
                finish=sources.finish,
                marker_fields=fields,
            )
            template_sources.record_use(admin, result.name, self.naming)
            notes = sources.notes + template_sources.stale_hint(self.naming, admin, fingerprint)
        return replace(result, notes=tuple(notes))

    def hold_template(self) -> str:
        """Protect this run's template from `clean` while this object stays open (a SHARED
        lock `clean` must take exclusively); call it before `ensure_template` or adopting."""
        name = self.template_name
        with self.admin() as admin:
            self._claims.hold_template(admin, name, timeout=self.settings.lock_timeout)
        return name

    def _clone(self, worker_id: str, index: int | None = None, **how: bool) -> ClonedDatabase:
        """Clone the template as the worker's database (`index` None) or a per-test one."""
        started, naming, template = time.monotonic(), self.naming, self.template_name
        name = naming.worker(worker_id) if index is None else naming.per_test(worker_id, index)
        role = ROLE_WORKER if index is None else ROLE_TEST
        undo = self._undo.get(name)
        if undo is not None:
            undo.close()  # our own session on the database about to be replaced
        marker = Marker(
            role, naming.base, naming.namespace, self.fingerprint, utc_now(), worker_id, index
        )
        with self.admin() as admin:
            reused = clone(admin, naming, self._claims, name, marker, template, **how)
        return ClonedDatabase(
            name, self.url_for(name), template, self.fingerprint, reused, time.monotonic() - started
        )

    def clone_for_worker(
        self, worker_id: str, *, reuse: bool = False, track: bool = False
    ) -> ClonedDatabase:
        """The worker's own database (`master` = serial run). With `track`, its change tracking
        is installed: `restore_worker` then undoes what a test committed (core/undo.py)."""
        cloned = self._clone(worker_id, reuse=reuse)
        if track:
            self._track(cloned.name)
        else:
            self._undo.pop(cloned.name, None)
        return cloned

    def _track(self, name: str) -> None:
        self._undo.setdefault(name, Undo(self.url_for(name))).install()  # Undo() connects lazily

    def restore_worker(self, worker_id: str) -> str:
        """Undo what was committed since the baseline: "clean" (nothing was), "restored", or
        "replaced" (DDL or changed database settings: a new clone, with the baseline's rows)."""
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
        """The current state becomes the baseline (after wider-scoped fixtures committed)."""
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
        """A new clone under the same name and URL, so engines the app built at import time
        reach it: its sessions (the app's pooled connections) are ended, and `core.reconnect`
        makes those pools reconnect."""
        cloned = self._clone(worker_id, own=True)
        reconnect.bump()
        if cloned.name in self._undo:  # tracked before: tracked again, from the template's state
            self._track(cloned.name)
        return cloned

    def clone_for_test(self, worker_id: str, index: int) -> ClonedDatabase:
        """A new database for one test; drop it with `drop_database` afterwards."""
        with self.admin() as admin:
            # Per-test names derive from the worker's: its claim keeps a concurrent run with the
            # same namespace (whose counter also starts at 1) out of them.
            self._claims.claim(admin, self.naming.worker(worker_id))
        return self._clone(worker_id, index)

    def drop_database(self, name: str) -> None:
        """Drop a database this tool created for this base; refuse anything else. One this
        process cloned is dropped even with sessions: they are this run's own."""
        undo = self._undo.pop(name, None)
        if undo is not None:
            undo.close()
        with self.admin() as admin:
            if existing_marker(admin, name, self.naming.base, action="drop") is not None:
                admin.drop_database(name, force=name in self._claims.databases)
            self._claims.release(admin, name)

    def managed_databases(
        self, *, with_size: bool = False
    ) -> tuple[list[ManagedDatabase], list[str]]:
        with self.admin() as admin:
            return clean_step.managed_databases(admin, self.naming, with_size=with_size)

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
        """What `clean` would drop, and what it leaves alone and why (core/clean.py);
        `namespace` None is the configured one, "" none."""
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
        """Drop what the plan lists, each re-checked at its drop (`core.clean.drop_planned`)."""
        with self.admin() as admin:
            return clean_step.drop_planned(admin, self.naming, self._claims, plan, force=force)
