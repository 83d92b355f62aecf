"""The ownership marker: JSON in `COMMENT ON DATABASE`, written on every database the tool creates.

A database is ours only if its marker names this tool and this base, and its name is exactly the
one the marker's own fields give: a marker copied onto another database does not make it ours.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any, get_type_hints

from ..errors import UnsafeDatabaseName
from .names import Naming, creating_name

TOOL = "finreport-testdb"
ROLE_TEMPLATE = "template"
ROLE_SCRATCH = "scratch"
ROLE_WORKER = "worker"
ROLE_TEST = "test"
ROLES = (ROLE_TEMPLATE, ROLE_SCRATCH, ROLE_WORKER, ROLE_TEST)
#: A marker is ~250 characters; any database on the server can carry a comment, and a huge or
#: deeply nested one must not make `status` or `clean` fail for every user of that server.
MAX_COMMENT_LENGTH = 4096


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Marker:
    role: str
    base: str
    namespace: str
    fingerprint: str
    created_at: str
    worker: str | None = None
    index: int | None = None
    ready: bool = False
    tool: str = TOOL
    #: Templates only: where the migration chain stood, so a longer chain can extend this template
    #: (templates/sources.py), and when a run last adopted it, for `clean --stale-templates`.
    head: str | None = None
    chain: str | None = None
    used_at: str | None = None
    #: A scratch database's builder, `<pid>@<backend_start>` of its admin session: advisory locks
    #: are per database, pg_stat_activity shows a builder locking in another one too.
    builder: str | None = None

    def to_comment(self) -> str:
        # The fields added later are left out unset: markers without them stay as they always were.
        data = {k: v for k, v in asdict(self).items() if v is not None or k in ("worker", "index")}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def promoted_to_template(self) -> Marker:
        """The marker a finished build carries once renamed: role template, ready, dated now."""
        return replace(self, role=ROLE_TEMPLATE, ready=True, created_at=utc_now(), builder=None)

    @classmethod
    def parse(cls, comment: str | None) -> Marker | None:
        """The marker in a database comment, or None for anything that is not exactly ours (a
        forged or damaged one included, which must not crash the naming code later)."""
        if not comment or len(comment) > MAX_COMMENT_LENGTH:
            return None
        try:
            data: Any = json.loads(comment)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("tool") != TOOL or data.get("role") not in ROLES:
            return None
        types = get_type_hints(cls)
        if set(data) - types.keys():
            return None
        for field in fields(cls):
            value = data.get(field.name, field.default)
            if value is MISSING or not isinstance(value, types[field.name]):
                return None
        if isinstance(data.get("index"), bool):
            return None
        return cls(**data)

    def expected_name(self) -> str | None:
        """The name a database carrying this marker must have; None if the marker is incoherent."""
        try:
            naming = Naming(self.base, self.namespace)
            if self.role == ROLE_TEMPLATE:
                return naming.template(self.fingerprint)
            if self.role == ROLE_SCRATCH:
                return naming.scratch(self.fingerprint)
            if self.role == ROLE_WORKER and self.worker:
                return naming.worker(self.worker)
            if self.role == ROLE_TEST and self.worker and isinstance(self.index, int):
                return naming.per_test(self.worker, self.index)
        except UnsafeDatabaseName:
            return None
        return None

    def created_datetime(self) -> datetime | None:
        return _aware(self.created_at)

    def last_used_datetime(self) -> datetime | None:
        """When a run last adopted this template (its creation if never recorded)."""
        return (_aware(self.used_at) if self.used_at else None) or self.created_datetime()


def _aware(text: str) -> datetime | None:
    """A time without a zone (hand-edited) is UTC, as the tool writes: age arithmetic must never
    mix naive and aware datetimes."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def owned_marker(name: str, comment: str | None, base: str) -> Marker | None:
    """The marker if `name` is a database this tool created for `base` (or the `creating_name` of
    one: a creation interrupted between marking and renaming), else None."""
    marker = Marker.parse(comment)
    if marker is None or marker.base != base:
        return None
    expected = marker.expected_name()
    if expected is None or name not in (expected, creating_name(expected)):
        return None
    return marker
