"""Whose database is this, and is anyone using it right now? The rules, in one place
(docs/architecture.md, "Ownership"); `admin.py` executes.
"""

from __future__ import annotations

import logging

from ..errors import DatabaseInUse, NotManagedDatabase, PermissionProblem, ServerUnreachable
from .admin import Admin, DatabaseInfo, Inspection
from .marker import Marker, owned_marker
from .names import CREATING_SUFFIX, Naming, creating_name

log = logging.getLogger("finreport_testdb.core.ownership")


def template_lock_label(template_name: str) -> str:
    """Held EXCLUSIVELY while the template is built; racers (here or on other machines) queue."""
    return f"template:{template_name}"


def template_hold_label(template_name: str) -> str:
    """Held SHARED by every run using the template; `clean` drops it only if it can take this
    exclusively."""
    return f"template-in-use:{template_name}"


def database_lock_label(name: str) -> str:
    """Held by the process a worker or per-test database belongs to, from before its creation
    until it is dropped or the process ends."""
    return f"database:{name}"


#: Held SHARED by the admin session of every process using the server; `testdb server stop`
#: stops the embedded server only if it can take it exclusively (or with --force).
SERVER_HOLD_LABEL = "server-in-use"

#: The start of the `application_name` of our sessions; `describe_holders` groups them by run.
SESSION_PREFIX = "finreport-testdb: "
_WORKER_SEPARATOR = " / "


def session_label(run: str, worker: str | None = None) -> str:
    """The `application_name` of a session of `run` ("pytest pid 1234"), and of which worker:
    what `testdb server stop` names when it refuses."""
    return f"{SESSION_PREFIX}{run}{_WORKER_SEPARATOR}{worker}" if worker else SESSION_PREFIX + run


def describe_holders(names: list[str]) -> str:
    """Sessions (their `application_name`s) as a human reads them, grouped by run:
    "pytest pid 1234 (3 sessions; workers gw0, gw1)"."""
    runs: dict[str, list[str]] = {}
    for name in names:
        if name.startswith(SESSION_PREFIX):
            run, _, worker = name.removeprefix(SESSION_PREFIX).partition(_WORKER_SEPARATOR)
        else:
            run, worker = (f"a session named {name!r}" if name else "an unnamed session"), ""
        runs.setdefault(run, []).append(worker)
    parts = []
    for run, workers in runs.items():
        named = sorted({w for w in workers if w}, key=lambda w: (len(w), w))
        detail = f"{len(workers)} session{'s' if len(workers) != 1 else ''}"
        parts.append(f"{run} ({detail}{'; workers ' + ', '.join(named) if named else ''})")
    return ", ".join(parts)


def unowned_reason(comment: str | None, naming: Naming) -> str:
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


def existing_marker(admin: Admin, name: str, base: str, *, action: str) -> Marker | None:
    """The marker of `name`, None if it does not exist, `NotManagedDatabase` if it is not ours
    (whatever `action` was about to happen to it)."""
    found = admin.find(name)
    return None if found is None else ours(name, found.comment, base, action=action)


def ours(name: str, comment: str | None, base: str, *, action: str) -> Marker:
    marker = owned_marker(name, comment, base)
    if marker is None:
        raise NotManagedDatabase(
            f"database {name!r} exists but was not created by testdb (no ownership marker for "
            f"base {base!r}), so it is left alone: refusing to {action} it; drop or rename it "
            "yourself, or choose another base name or namespace"
        )
    return marker


def interrupted_creation(
    found: DatabaseInfo, name: str, naming: Naming, *, any_namespace: bool = False
) -> str | None:
    """The real name, if `name` is the unmarked leftover of a creation of ours that died between
    CREATE and COMMENT: `<a name this base gives>.creating`, owned by this very role (a
    superuser may drop anybody's, so "may drop it" would not tell ours)."""
    real = name.removesuffix(CREATING_SUFFIX)
    # A shortened (hashed) name cannot be traced back: its next run clears it.
    if creating_name(real) != name or found.comment is not None or not found.mine:
        return None
    managed = naming.is_managed_name(real, any_namespace=any_namespace)
    return real if managed and not found.is_template else None


def make_room(
    admin: Admin,
    naming: Naming,
    name: str,
    found: Inspection,
    *,
    reuse: str | None = None,
    own: bool = False,
) -> bool:
    """The one rule for what may sit under a managed name about to be (re)created, applied by
    the holder of its lock: a leftover of an interrupted creation is cleared (marked by us, or
    unmarked if this role may drop it: death between CREATE and COMMENT), a database without our
    marker refused, ours replaced unless another run has sessions on it (`own`: they are this
    process's, and ended). True if it is ours with fingerprint `reuse`: kept."""
    if (creating := found.creating) is not None:
        leftover = creating_name(name)
        if creating.comment is not None or not creating.usable:
            ours(leftover, creating.comment, naming.base, action="replace")
        log.info("dropping %s (leftover of an interrupted creation)", leftover)
        admin.drop_database(leftover, force=True)
    if found.target is None:
        return False
    existing = ours(name, found.target.comment, naming.base, action="replace")
    if reuse is not None and existing.fingerprint == reuse:
        return True
    sessions = 0 if own else admin.session_count(name)
    if sessions:
        raise DatabaseInUse(
            f"database {name!r} is in use by {sessions} other session(s), probably another test "
            "run with the same namespace on this server; give each concurrent run its own "
            "namespace (TESTDB_NAMESPACE=auto or --testdb-namespace), or close those sessions"
        )
    log.info("dropping %s (to be re-created)", name)
    admin.drop_database(name, force=own)
    return False


def build_in_progress(admin: Admin, marker: Marker, naming: Naming) -> bool:
    """Whether a scratch database belongs to a live build: its build lock is held, or its
    builder's session is connected (a builder on another maintenance database locks there)."""
    if marker.builder is not None and admin.backend_alive(marker.builder):
        return True
    return not lock_free(admin, template_lock_label(naming.template(marker.fingerprint)))


def lock_free(admin: Admin, label: str) -> bool:
    if not admin.try_advisory_lock(label):
        return False
    admin.advisory_unlock(label)
    return True


def check_template_owner(found: DatabaseInfo | None, me: str, template: str) -> None:
    """A clone's tables belong to the template's owner: without its privileges, role `me` would
    get tables it cannot read. Say so before cloning."""
    if found is not None and not found.usable:
        raise PermissionProblem(
            f"template {template!r} belongs to role {found.owner!r}, and role {me!r} does not "
            f"have its privileges, so the tables of a clone would be unusable (permission "
            f"denied); run as {found.owner!r}, GRANT {found.owner} TO {me}, or use a base name "
            f"of {me!r}'s own"
        )


class Claims:
    """The locks one administration session holds, so each is taken once and released once
    (the server releases them all with the session)."""

    def __init__(self) -> None:
        self.databases: set[str] = set()
        self.templates: set[str] = set()

    def hold_server(self, admin: Admin) -> None:
        """Hold the server against `testdb server stop`, once per session. Never waits: only a
        stop holds it exclusively, while the server shuts down."""
        if not admin.try_advisory_lock(SERVER_HOLD_LABEL, shared=True):
            raise ServerUnreachable(
                "the server is being stopped (`testdb server stop` is shutting it down); run "
                "again once it has stopped, and the embedded server is started anew"
            )

    def claim(self, admin: Admin, name: str) -> None:
        """Claim `name` until it is dropped or the process ends; refuse if another run has."""
        if name in self.databases:
            return
        if not admin.try_advisory_lock(database_lock_label(name)):
            raise self.taken(name)
        self.databases.add(name)

    @staticmethod
    def taken(name: str) -> DatabaseInUse:
        return DatabaseInUse(
            f"database {name!r} is in use by another test run with the same namespace on this "
            "server; give each concurrent run its own namespace (TESTDB_NAMESPACE=auto or "
            "--testdb-namespace)"
        )

    def release(self, admin: Admin, name: str) -> None:
        if name in self.databases:
            self.databases.discard(name)
            admin.advisory_unlock(database_lock_label(name))

    def hold_template(self, admin: Admin, template: str, *, timeout: float) -> None:
        if template not in self.templates:
            admin.advisory_lock(template_hold_label(template), timeout=timeout, shared=True)
            self.templates.add(template)
