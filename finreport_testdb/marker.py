"""The ownership marker: JSON in `COMMENT ON DATABASE`, written on every database the tool creates.

Destructive commands act only on databases whose marker parses, names this tool and this base, and
whose name is exactly the one the marker's own fields produce. The last check defeats a marker
copied onto a database with another name: the name must be derivable, not just the comment present.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from .errors import UnsafeDatabaseName
from .names import Naming

TOOL = "finreport-testdb"
ROLE_TEMPLATE = "template"
ROLE_SCRATCH = "scratch"
ROLE_WORKER = "worker"
ROLE_TEST = "test"
#: A ready clone in a worker's pool, and a used database renamed away to be dropped (`clone_pool`).
ROLE_POOL = "pool"
ROLE_TRASH = "trash"
ROLES = (ROLE_TEMPLATE, ROLE_SCRATCH, ROLE_WORKER, ROLE_TEST, ROLE_POOL, ROLE_TRASH)


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

    def to_comment(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def promoted_to_template(self) -> Marker:
        """The marker a finished build carries once renamed: role template, ready, dated now."""
        return replace(self, role=ROLE_TEMPLATE, ready=True, created_at=utc_now())

    @classmethod
    def parse(cls, comment: str | None) -> Marker | None:
        """The marker in a database comment, or None for anything that is not exactly ours."""
        if not comment:
            return None
        try:
            data: Any = json.loads(comment)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("tool") != TOOL or data.get("role") not in ROLES:
            return None
        try:
            marker = cls(**data)
        except TypeError:
            return None
        str_fields = (marker.base, marker.namespace, marker.fingerprint, marker.created_at)
        if not all(isinstance(value, str) for value in str_fields):
            return None
        # A forged or damaged comment must be rejected, not crash the naming code with a TypeError.
        if marker.worker is not None and not isinstance(marker.worker, str):
            return None
        if marker.index is not None and (
            not isinstance(marker.index, int) or isinstance(marker.index, bool)
        ):
            return None
        if not isinstance(marker.ready, bool):
            return None
        return marker

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
            if self.role == ROLE_POOL and self.worker and isinstance(self.index, int):
                return naming.pool_member(self.worker, self.index)
            if self.role == ROLE_TRASH and self.worker and isinstance(self.index, int):
                return naming.trash(self.worker, self.index)
        except UnsafeDatabaseName:
            return None
        return None

    def created_datetime(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.created_at)
        except ValueError:
            return None


def owned_marker(name: str, comment: str | None, base: str) -> Marker | None:
    """The marker if `name` is a database this tool created for `base`, else None."""
    marker = Marker.parse(comment)
    if marker is None or marker.base != base or marker.expected_name() != name:
        return None
    return marker
