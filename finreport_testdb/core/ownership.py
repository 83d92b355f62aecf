"""Whose database is this, and is anyone using it right now?

Every step that creates, replaces or drops a database asks here first, so the rules live in one
place: a database is ours only if it carries our marker for this base *and* that marker names the
database it sits on (`marker.owned_marker`); a run claims its databases and holds its template with
session-level advisory locks (the server releases them however the process ends), and other runs
and `clean` probe those locks without waiting at the moment they act, never when they planned.
This module decides; `admin.py` only executes.
"""

from __future__ import annotations

import logging

from ..errors import DatabaseInUse, NotManagedDatabase, PermissionProblem, ServerUnreachable
from .admin import Admin, Found, Inspection
from .marker import Marker, owned_marker, utc_now
from .names import CREATING_SUFFIX, Naming, creating_name

log = logging.getLogger("finreport_testdb.core.ownership")


# -- lock labels ---------------------------------------------------------------------------------


def template_lock_label(template_name: str) -> str:
    """Held EXCLUSIVELY while the template is built; racers (here or on other machines) queue."""
    return f"template:{template_name}"


def template_hold_label(template_name: str) -> str:
    """Held SHARED by every run using the template (`Claims.hold_template`); `clean` drops a
    template only if it can take it exclusively."""
    return f"template-in-use:{template_name}"


#: Held SHARED by the administration session of every process working on the server (a test
#: run's controller and workers, a `testdb` command: `Claims.hold_server`); `testdb server stop`
#: stops the embedded server only if it can take it exclusively, or with --force. Like every claim
#: it ends with its session, so a run killed with SIGKILL holds nothing.
SERVER_HOLD_LABEL = "server-in-use"

#: The start of the `application_name` of our sessions; `describe_holders` groups them by run.
SESSION_PREFIX = "finreport-testdb: "
_WORKER_SEPARATOR = " / "


def session_label(run: str, worker: str | None = None) -> str:
    """The `application_name` of a session of `run` ("pytest pid 1234", "testdb clean pid 77"),
    and of which of its xdist workers, if any: what `testdb server stop` names when it refuses.
    PostgreSQL keeps 63 bytes of it."""
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


def database_lock_label(name: str) -> str:
    """Held by the process a worker or per-test database belongs to, from before its creation
    (or reuse) until it is dropped or the process ends; `clean` and other runs try it."""
    return f"database:{name}"


# -- markers -------------------------------------------------------------------------------------


def new_marker(
    naming: Naming,
    fingerprint: str,
    role: str,
    *,
    worker: str | None = None,
    index: int | None = None,
) -> Marker:
    """The marker of a database a run creates now (worker, per-test)."""
    return Marker(
        role=role,
        base=naming.base,
        namespace=naming.namespace,
        fingerprint=fingerprint,
        created_at=utc_now(),
        worker=worker,
        index=index,
    )


def same_marker(planned: Marker, now: Marker) -> bool:
    """Still the database a plan saw: a re-created or rebuilt one has another marker."""
    # used_at too: a template a run adopted after the plan was made is not stale any more.
    return (
        planned.role,
        planned.fingerprint,
        planned.created_at,
        planned.builder,
        planned.used_at,
    ) == (now.role, now.fingerprint, now.created_at, now.builder, now.used_at)


def looks_like_ours(name: str, base: str) -> bool:
    """Names the user may expect `clean` to handle (also as `<name>.creating`); used to explain
    skips, and to find unmarked leftovers of interrupted creations."""
    name = name.removesuffix(CREATING_SUFFIX)
    return name == base or name.startswith(f"{base}_")


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
    """The marker of `name` if it exists and is ours, None if it does not exist.

    A database that exists without our marker raises `NotManagedDatabase`: whatever `action` was
    about to happen to it (drop, replace), we never touch a database the tool did not create.
    """
    found = admin.find(name)
    return None if found is None else ours(name, found.comment, base, action=action)


def ours(name: str, comment: str | None, base: str, *, action: str) -> Marker:
    """The marker of the existing database `name` (whose comment is `comment`), or
    `NotManagedDatabase`: see `existing_marker`."""
    marker = owned_marker(name, comment, base)
    if marker is None:
        raise NotManagedDatabase(
            f"database {name!r} exists but was not created by testdb (no ownership marker for "
            f"base {base!r}), so it is left alone: refusing to {action} it; drop or rename it "
            "yourself, or choose another base name or namespace"
        )
    return marker


# -- interrupted creations -----------------------------------------------------------------------


def _clear_leftover(admin: Admin, name: str, base: str, creating: Found | None) -> None:
    """Drop `creating`, the leftover of a creation of `name` that died before its rename (see
    `Admin.create_database`); the caller holds `name`'s lock (or the build lock). Dropped: one
    with our marker for `name`, or with no comment at all (death between CREATE and COMMENT)
    if this role may drop it. Anything else there is refused."""
    if creating is None:
        return
    leftover = creating_name(name)
    marked = owned_marker(leftover, creating.comment, base) is not None
    if not marked and (creating.comment is not None or not creating.usable):
        raise NotManagedDatabase(
            f"database {leftover!r} exists but was not created by testdb for base {base!r}, so "
            "it is left alone; drop or rename it yourself, or choose another base name or "
            "namespace"
        )
    log.info("dropping %s (leftover of an interrupted creation)", leftover)
    admin.drop_database(leftover, force=True)


def interrupted_creation(
    found: Found, name: str, naming: Naming, *, any_namespace: bool = False
) -> str | None:
    """The real name, if `name` (`found`) is the unmarked leftover of a creation that died
    between CREATE DATABASE and COMMENT: exactly `<real name>.creating`, the real name exactly
    one of the names this base gives (of this namespace unless `any_namespace`), and owned by
    this very role. Only a creation of ours leaves such a database; a superuser has every role's
    privileges, so "may drop it" would not tell ours from anybody's."""
    real = name.removesuffix(CREATING_SUFFIX)
    if real == name or creating_name(real) != name or found.comment is not None:
        return None  # a shortened (hashed) name cannot be traced back: its next run clears it
    if not naming.is_managed_name(real, any_namespace=any_namespace):
        return None
    return real if found.mine and not found.is_template else None


def make_room(
    admin: Admin,
    naming: Naming,
    name: str,
    found: Inspection,
    *,
    reuse: str | None = None,
    own: bool = False,
) -> bool:
    """The one rule for what may sit under a managed name about to be (re)created, applied at
    that moment by the holder of the name's lock: a leftover of an interrupted creation is
    cleared, a database without our marker is refused, ours is replaced, but one with another
    run's sessions is refused (`own`: its sessions are this process's, e.g. the app's pooled
    connections, and they are ended). True if it is ours with fingerprint `reuse`: kept."""
    _clear_leftover(admin, name, naming.base, found.creating)
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


# -- who is using it now -------------------------------------------------------------------------


def build_in_progress(admin: Admin, marker: Marker, naming: Naming) -> bool:
    """Whether a scratch database belongs to a live build: its build lock is held (in this
    maintenance database) or its builder's session is still connected (anywhere on the server:
    builders with another maintenance database take their lock elsewhere)."""
    if marker.builder is not None and admin.backend_alive(marker.builder):
        return True
    return not lock_free(admin, template_lock_label(naming.template(marker.fingerprint)))


def lock_free(admin: Admin, label: str) -> bool:
    """Nobody holds `label` now (probed without waiting, and released at once)."""
    if not admin.try_advisory_lock(label):
        return False
    admin.advisory_unlock(label)
    return True


def template_free(admin: Admin, template: str) -> bool:
    """No run in progress holds the template (see `Claims.hold_template`)."""
    return lock_free(admin, template_hold_label(template))


def check_template_owner(found: Found | None, me: str, template: str) -> None:
    """A clone's tables belong to the template's owner: a role `me` without its privileges would
    get a database whose tables it cannot read (`permission denied for table ...`). Say so before
    cloning."""
    if found is not None and not found.usable:
        raise PermissionProblem(
            f"template {template!r} belongs to role {found.owner!r}, and role {me!r} does not "
            f"have its privileges, so the tables of a clone would be unusable (permission "
            f"denied); run as {found.owner!r}, GRANT {found.owner} TO {me}, or use a base name "
            f"of {me!r}'s own"
        )


class Claims:
    """The databases and templates one administration session has claimed.

    Claims are session-level advisory locks, so they end with the session however the process
    ends; this object only remembers which ones the session holds, so a claim is taken once and
    released once.
    """

    def __init__(self) -> None:
        self.databases: set[str] = set()
        self.templates: set[str] = set()
        self.server = False

    def __bool__(self) -> bool:
        return bool(self.databases or self.templates or self.server)

    def hold_server(self, admin: Admin) -> None:
        """Hold the server SHARED against `testdb server stop` for the session's lifetime.

        Never waits: only a `server stop` holds it exclusively, and it does so while the server
        shuts down, so waiting would only end in a lost connection."""
        if self.server:
            return
        if not admin.try_advisory_lock(SERVER_HOLD_LABEL, shared=True):
            raise ServerUnreachable(
                "the server is being stopped (`testdb server stop` is shutting it down); run "
                "again once it has stopped, and the embedded server is started anew"
            )
        self.server = True

    def claim(self, admin: Admin, name: str) -> None:
        """Claim `name` for this process until it is dropped or the process ends; refuse if
        another process (a concurrent run with the same namespace) has claimed it, even one
        that has cloned it and not connected yet. (`clones.clone` claims in the query with
        which it looks at the name.)"""
        if name in self.databases:
            return
        if not admin.try_advisory_lock(self.label(name)):
            raise self.taken(name)
        self.databases.add(name)

    label = staticmethod(database_lock_label)

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
        """Hold `template` SHARED against `clean` for the session's lifetime."""
        if template not in self.templates:
            admin.advisory_lock(template_hold_label(template), timeout=timeout, shared=True)
            self.templates.add(template)

    def forget(self) -> None:
        """The session ended (closed or lost): the server released every lock with it."""
        self.databases.clear()
        self.templates.clear()
        self.server = False
