"""Extend instead of rebuild: find a ready template whose migration chain is a prefix of ours.

A chain is the ordered list of (revision id, hash of the revision file), base first, plus a
*lineage* digest of everything else that decides the schema (alembic.ini options, env.py and other
non-revision files, server major, fingerprint_extra, the template format). Each template's marker
records its `head` and the *cumulative* digest at that head (`chain`): step i hashes step i-1 with
revision i, starting from the lineage. So one short string per marker identifies the whole path,
and "template T is a prefix of the new chain" is a dictionary lookup, however long the chain.

An edited old revision, a changed lineage, a merge point (non-linear history) or a seed (seeds run
after migrations and would be applied twice on a clone) all mean: no candidate, full build.
This module knows neither Alembic nor pytest.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.admin import Admin
from ..core.marker import ROLE_TEMPLATE, Marker, owned_marker
from ..core.names import Naming
from ..migrators.migrator import RevisionChain


@dataclass(frozen=True)
class ExtendBase:
    """A ready template to clone and upgrade: `missing` revisions separate it from the head."""

    name: str
    marker: Marker
    missing: int


def find_extend_base(
    admin: Admin, naming: Naming, chain: RevisionChain, target: str
) -> ExtendBase | None:
    """The ready template of this base whose path is the longest prefix of `chain`, or None.

    Only templates this tool created (ownership marker) and marked ready are candidates; the
    target template itself is excluded (it is being rebuilt).
    """
    position = {step: index for index, step in enumerate(chain.steps())}
    best: ExtendBase | None = None
    for info in admin.list_databases():
        if info.name == target:
            continue
        marker = owned_marker(info.name, info.comment, naming.base)
        if marker is None or marker.role != ROLE_TEMPLATE or not marker.ready:
            continue
        index = position.get(marker.chain or "")
        if index is None or chain.revisions[index][0] != marker.head:
            continue
        missing = len(chain.revisions) - 1 - index
        if best is None or missing < best.missing:
            best = ExtendBase(info.name, marker, missing)
    return best
