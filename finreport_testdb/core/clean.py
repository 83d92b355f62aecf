"""`clean`: plan what to drop, then drop it re-checking each database at the moment of its drop.

A plan is advice, not permission: between plan and drop a build may start or a run re-create a
worker database, so each drop takes the database's locks without waiting and checks it again.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from ..errors import DatabaseInUse, FinreportTestdbError
from .admin import Admin, DatabaseInfo
from .marker import (
    ROLE_SCRATCH,
    ROLE_TEMPLATE,
    ROLE_TEST,
    ROLE_WORKER,
    Marker,
    owned_marker,
)
from .names import CREATING_SUFFIX, Naming
from .ownership import (
    Claims,
    build_in_progress,
    database_lock_label,
    interrupted_creation,
    lock_free,
    template_hold_label,
    template_lock_label,
    unowned_reason,
)


@dataclass(frozen=True)
class ManagedDatabase(DatabaseInfo):
    marker: Marker = field(kw_only=True)

    def age_seconds(self) -> float | None:
        created = self.marker.created_datetime()
        if created is None:
            return None
        return (datetime.now(timezone.utc) - created).total_seconds()


@dataclass
class CleanPlan:
    drop: list[ManagedDatabase] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    #: Unmarked `<name>.creating` leftovers of this role's creations that died before their mark.
    interrupted: list[str] = field(default_factory=list)


IN_USE = "in use (open sessions); --force ends them"
IN_USE_PREPARED = "in use by prepared transactions (PREPARE TRANSACTION); --force rolls them back"
TEMPLATE_HELD = "template in use by a run in progress"
RUN_IN_PROGRESS = "in use by a run in progress"
BUILD_IN_PROGRESS = "a template build is in progress"
#: The reasons `clean --json` lists under `skipped_in_use`.
IN_USE_REASONS = (IN_USE, IN_USE_PREPARED, RUN_IN_PROGRESS)


def managed_databases(
    admin: Admin, naming: Naming, *, with_size: bool = False
) -> tuple[list[ManagedDatabase], list[str]]:
    """(databases of this base carrying a valid marker, other names that look like ours: the base
    or `<base>_...`, also as `<name>.creating`, which the user may expect `clean` to handle)."""
    managed: list[ManagedDatabase] = []
    lookalikes: list[str] = []
    for info in admin.list_databases(with_size=with_size):
        marker = owned_marker(info.name, info.comment, naming.base)
        if marker is not None:
            managed.append(ManagedDatabase(**asdict(info), marker=marker))
        elif f"{info.name.removesuffix(CREATING_SUFFIX)}_".startswith(f"{naming.base}_"):
            lookalikes.append(info.name)
    return managed, lookalikes


@dataclass(frozen=True)
class CleanScope:
    """What a clean covers besides the namespace's worker, per-test and scratch databases (see
    `ProjectDatabases.plan_clean`)."""

    all_namespaces: bool = False
    templates: bool = False
    stale_templates: bool = False
    keep: int | None = None
    older_than: float | None = None


def _spared_templates(
    managed: list[ManagedDatabase], current: str | None, scope: CleanScope
) -> dict[str, str]:
    """Templates `--keep` / `--older-than` spare, with why: the current one counts as the most
    recently used, then the last use recorded on adoption. Both limits only ever spare more."""
    keep, older_than = scope.keep, scope.older_than
    templates = [db for db in managed if db.marker.role == ROLE_TEMPLATE]
    epoch = datetime.min.replace(tzinfo=timezone.utc)

    def recency(db: ManagedDatabase) -> tuple[bool, datetime]:
        return (db.marker.fingerprint == current, db.marker.last_used_datetime() or epoch)

    spared: dict[str, str] = {}
    if keep is not None:
        for db in sorted(templates, key=recency, reverse=True)[:keep]:
            spared[db.name] = f"one of the {keep} most recently used templates (--keep {keep})"
    if older_than is not None:
        now = datetime.now(timezone.utc)
        for db in templates:
            last = db.marker.last_used_datetime()
            if last is None or (now - last).total_seconds() < older_than:
                spared.setdefault(db.name, "used more recently than --older-than")
    return spared


def plan(
    admin: Admin, naming: Naming, scope: CleanScope, *, namespace: str, current: str | None
) -> CleanPlan:
    """What `clean` would drop, and what it leaves alone and why. Worker, per-test and scratch
    databases of `namespace`; templates only when asked (`current`: the current fingerprint)."""
    managed, lookalikes = managed_databases(admin, naming)
    result = CleanPlan()
    used = {db.marker.fingerprint for db in managed if db.marker.role in (ROLE_WORKER, ROLE_TEST)}
    spared = _spared_templates(managed, current, scope) if scope.stale_templates else {}
    for name in lookalikes:
        found = admin.find(name)
        if found is None:
            continue
        if interrupted_creation(found, name, naming, any_namespace=scope.all_namespaces):
            result.interrupted.append(name)
            continue
        result.skipped.append((name, unowned_reason(found.comment, naming)))
    for db in managed:
        marker, reason = db.marker, None  # why it stays; None: it goes
        if marker.role == ROLE_TEMPLATE and not scope.templates:
            if not scope.stale_templates:
                continue
            if marker.fingerprint == current:
                reason = "template of the current fingerprint"
            elif marker.fingerprint in used:
                reason = "template still used by worker databases"
            else:
                reason = spared.get(db.name)
        elif marker.role == ROLE_SCRATCH:
            reason = BUILD_IN_PROGRESS if build_in_progress(admin, marker, naming) else None
        elif marker.role != ROLE_TEMPLATE and not scope.all_namespaces:
            reason = None if marker.namespace == namespace else f"namespace {marker.namespace!r}"
        if reason is None:
            result.drop.append(db)
        else:
            result.skipped.append((db.name, reason))
    for db in [db for db in result.drop if db.marker.role == ROLE_TEMPLATE]:
        if not lock_free(admin, template_hold_label(db.name)):
            result.drop.remove(db)
            result.skipped.append((db.name, TEMPLATE_HELD))
    return result


def drop_planned(
    admin: Admin, naming: Naming, claims: Claims, todo: CleanPlan, *, force: bool = False
) -> list[str]:
    """Drop what the plan lists (what stays goes to `todo.skipped`); a failure names the dropped."""
    dropped: list[str] = []
    try:
        for name, reason in itertools.chain(  # lazy: one drop at a time, in order
            ((db.name, _drop_one(admin, naming, claims, db, force=force)) for db in todo.drop),
            ((name, _drop_interrupted(admin, naming, name)) for name in todo.interrupted),
        ):
            if reason is None:
                dropped.append(name)
            else:
                todo.skipped.append((name, reason))
    except FinreportTestdbError as exc:
        if not dropped:
            raise
        raise type(exc)(f"{exc} (already dropped: {', '.join(dropped)})") from None
    return dropped


@contextmanager
def _locked(admin: Admin, locks: list[tuple[str, str]]) -> Iterator[str | None]:
    """Take each (label, reason if held) without waiting, for the block; yields the reason of
    the first one held elsewhere (then none is kept), else None."""
    with contextlib.ExitStack() as taken:
        for label, held_reason in locks:
            if not admin.try_advisory_lock(label):
                yield held_reason
                return
            taken.callback(admin.advisory_unlock, label)
        yield None


def _drop_one(
    admin: Admin, naming: Naming, claims: Claims, db: ManagedDatabase, *, force: bool
) -> str | None:
    """Drop one planned database under its locks; None if dropped, else why not."""
    real = db.marker.expected_name() or db.name  # a `.creating` leftover's lock is its real name's
    locks = [(database_lock_label(real), RUN_IN_PROGRESS)]
    if db.marker.role == ROLE_SCRATCH:
        template = naming.template(db.marker.fingerprint)
        locks.append((template_lock_label(template), BUILD_IN_PROGRESS))
    if db.marker.role == ROLE_TEMPLATE:
        locks.append((template_hold_label(db.name), TEMPLATE_HELD))
    with _locked(admin, locks) as held:
        if held:
            return held
        found = admin.find(db.name)
        if found is None:
            return "already gone (dropped by someone else)"
        # The same oid and comment (so marker): not re-created, rebuilt or adopted since the plan.
        if (found.oid, found.comment) != (db.oid, db.comment):
            return "changed since the plan (re-created or re-marked); run clean again"
        now = db.marker
        if now.role == ROLE_SCRATCH and now.builder and admin.backend_alive(now.builder):
            return BUILD_IN_PROGRESS
        if not found.usable:
            return f"owned by role {found.owner!r}: only that role (or a superuser) can drop it"
        # A scratch database without a live builder is a dead build's: its sessions too.
        try:
            admin.drop_database(db.name, force=force or now.role == ROLE_SCRATCH)
        except DatabaseInUse:
            return IN_USE_PREPARED if admin.prepared_transactions(db.name) else IN_USE
        claims.release(admin, real)  # if it was this process's own
        return None


def _drop_interrupted(admin: Admin, naming: Naming, name: str) -> str | None:
    """Drop an unmarked `<name>.creating` under the locks its creator would hold: held, it is
    still being created; free, it is the leftover of a dead creation, if it still looks it."""
    real = name.removesuffix(CREATING_SUFFIX)
    labels = [database_lock_label(real)]
    if naming.scratch(real[-12:]) == real:
        labels.append(template_lock_label(naming.template(real[-12:])))
    with _locked(admin, [(label, "a creation is in progress") for label in labels]) as held:
        if held:
            return held
        found = admin.find(name)
        if found is None:
            return None
        if interrupted_creation(found, name, naming, any_namespace=True) is None:
            return "changed since the plan; run clean again"
        try:
            admin.drop_database(name)
        except DatabaseInUse:
            return IN_USE
        return None
