"""Extend instead of rebuild: find a ready template whose migration chain is a prefix of ours.

A template's marker records its `head` and the cumulative digest there (`RevisionChain.steps`),
so "T is a prefix of the new chain" is a dictionary lookup, however long the chain.
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
    """The ready template of this base (ours, by its marker) whose path is the longest prefix of
    `chain`, or None; `target` itself, being rebuilt, is no candidate."""
    position = {step: index for index, step in enumerate(chain.steps())}
    best: ExtendBase | None = None
    for info in admin.list_databases():
        marker = owned_marker(info.name, info.comment, naming.base)
        if info.name == target or marker is None or marker.role != ROLE_TEMPLATE:
            continue
        index = position.get(marker.chain or "")
        if not marker.ready or index is None or chain.revisions[index][0] != marker.head:
            continue
        missing = len(chain.revisions) - 1 - index
        if best is None or missing < best.missing:
            best = ExtendBase(info.name, marker, missing)
    return best
