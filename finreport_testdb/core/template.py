"""Build or reuse the golden template: idempotent, serialised by an advisory lock, atomic (a
*scratch* database is filled, then promoted in one transaction: `Admin.promote_to_template`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from ..errors import FinreportTestdbError, TemplateBuildError
from .admin import Admin
from .marker import ROLE_SCRATCH, ROLE_TEMPLATE, Marker, owned_marker, utc_now
from .names import Naming
from .ownership import existing_marker, make_room, template_hold_label, template_lock_label
from .urls import with_database

log = logging.getLogger("finreport_testdb.core.template")


@dataclass(frozen=True)
class Filled:
    """How the scratch database got its content when not migrated from empty."""

    how: str  # "extended" or "restored"
    source: str  # the template extended, or the dump file restored
    revisions: int | None = None  # revisions migrated on top (extended)


@dataclass(frozen=True)
class TemplateResult:
    name: str
    fingerprint: str
    built: bool
    seconds: float
    waited_seconds: float = 0.0
    how: str = "built"  # when built: "built" (from empty), "extended" or "restored"
    source: str | None = None
    revisions: int | None = None
    notes: tuple[str, ...] = ()  # one-line remarks for the user (a refused dump, a GC hint)

    @property
    def action(self) -> str:
        return self.how if self.built else "reused"

    def describe(self) -> str:
        """`built`, `extended from <tpl> by 1 revision`, `restored from <file>`, `reused`."""
        if self.action == "extended":
            plural = "" if self.revisions == 1 else "s"
            return f"extended from {self.source} by {self.revisions} revision{plural}"
        if self.action == "restored":
            return f"restored from {self.source}"
        return self.action


def _wait_for_live_builder(admin: Admin, scratch: str, naming: Naming, deadline: float) -> None:
    """Wait while a live builder whose lock is in another maintenance database (so ours did not
    keep it out) still owns the scratch database."""
    while True:
        found = admin.find(scratch)
        marker = owned_marker(scratch, found.comment, naming.base) if found else None
        if marker is None or marker.builder is None or not admin.backend_alive(marker.builder):
            return
        if time.monotonic() > deadline:
            raise TemplateBuildError(
                f"waited for another process building {scratch!r} (session {marker.builder}); "
                "if no build is running, that session is stuck: end it, or raise lock_timeout"
            )
        time.sleep(0.1)


def ensure_template(
    admin: Admin,
    naming: Naming,
    fingerprint: str,
    server_url: URL,
    build: Callable[[URL], None],
    *,
    rebuild: bool = False,
    lock_timeout: float = 600.0,
    fill: Callable[[Admin, str, str], Filled | None] | None,
    finish: Callable[[URL, Filled | None], None],
    marker_fields: Mapping[str, Any],
) -> TemplateResult:
    """A ready template for `fingerprint`, built with `build(scratch_url)` if needed: checked
    without the lock (the common case), then under it (another process may have built it
    meanwhile). `fill(admin, scratch, comment)` may create the scratch faster (extend, restore a
    dump); `finish` runs before the promotion (drift check, dump) and may fail the build."""
    started = time.monotonic()
    name = naming.template(fingerprint)
    head = marker_fields.get("head")

    def reused(waited: float) -> TemplateResult | None:
        """A ready template of ours. One whose marker records another `head` than the migrations
        reach is refused (the fingerprint missed an input: its clones would have an old schema),
        not replaced: that could pull it from under the run that built it."""
        found = None if rebuild else admin.find(name)
        marker = owned_marker(name, found.comment, naming.base) if found else None
        if marker is None or marker.role != ROLE_TEMPLATE or not marker.ready:
            return None
        if head is not None and marker.head is not None and marker.head != head:
            raise TemplateBuildError(
                f"template {name!r} was built at revision {marker.head}, but the migrations' head "
                f"is {head} under the same fingerprint {marker.fingerprint[:12]}: the fingerprint "
                "missed an input, so the template is not used; replace it with `testdb "
                "prepare-template --rebuild` (pytest --testdb-rebuild) and report this as a "
                "finreport-testdb bug"
            )
        return TemplateResult(name, fingerprint, False, time.monotonic() - started, waited)

    if result := reused(0.0):
        return result
    with contextlib.ExitStack() as locks:
        lock = template_lock_label(name)
        waited = admin.advisory_lock(lock, timeout=lock_timeout)
        locks.callback(_unlock, admin, lock)
        if result := reused(waited):
            return result
        scratch = naming.scratch(fingerprint)
        _wait_for_live_builder(admin, scratch, naming, started + lock_timeout)
        if result := reused(time.monotonic() - started):
            return result
        # A rebuild takes the template's hold lock exclusively, as `clean` does, until the new one
        # is promoted (runs starting meanwhile wait); a failed rebuild leaves the old one.
        if rebuild and admin.find(name):
            hold = template_hold_label(name)
            if not admin.try_advisory_lock(hold):
                raise TemplateBuildError(
                    f"cannot rebuild template {name!r}: a test run in progress is using it (it "
                    "holds the template); rebuild when that run has ended, or give the changed "
                    "schema its own fingerprint (a new migration) instead of --rebuild"
                )
            locks.callback(_unlock, admin, hold)
        # Under the build lock no live build uses either: their sessions are ended.
        make_room(admin, naming, scratch, admin.inspect(scratch, None, None), own=True)
        if rebuild:
            existing_marker(admin, name, naming.base, action="replace")  # ours, or refuse
        else:  # not ready
            make_room(admin, naming, name, admin.inspect(name, None, None), own=True)
        builder = admin.backend_identity()  # templates are shared by all namespaces: ""
        fields = {**marker_fields, "builder": builder}
        marker = Marker(ROLE_SCRATCH, naming.base, "", fingerprint, utc_now(), **fields)
        filled = fill(admin, scratch, marker.to_comment()) if fill is not None else None
        scratch_url = with_database(server_url, scratch)
        try:
            if filled is None:
                admin.create_database(scratch, comment=marker.to_comment())
                build(scratch_url)
            finish(scratch_url, filled)
        except BaseException:
            admin.drop_database(scratch, force=True)
            raise
        old = existing_marker(admin, name, naming.base, action="replace") if rebuild else None
        displaced = replace(old, role=ROLE_SCRATCH, ready=False) if old else None
        admin.promote_to_template(
            scratch,
            name,
            marker.promoted_to_template().to_comment(),
            displaced_comment=displaced.to_comment() if displaced else None,
        )
        if displaced is not None:  # the old template, now the scratch; else left for `clean`
            try:
                admin.drop_database(scratch, force=True)
            except (FinreportTestdbError, psycopg.Error) as exc:
                log.warning("could not drop %s, the template %s replaced: %s", scratch, name, exc)
        how = asdict(filled) if filled else {}
        result = TemplateResult(name, fingerprint, True, time.monotonic() - started, waited, **how)
        log.info("template %s %s in %.2f s", name, result.describe(), result.seconds)
        return result


def _unlock(admin: Admin, label: str) -> None:
    if not admin.conn.closed:
        admin.advisory_unlock(label)
