"""The template's fingerprint: everything that changes what a build produces (the migrator's
hash, the server major, the extra files, the seed, `TEMPLATE_FORMAT`). The lineage is the same
minus the migrations: checkouts with the same lineage can extend each other's templates.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from ..core.settings import Settings
from ..migrators.migrator import ChainMigrator, Migrator, RevisionChain, hash_globs
from .seed import seed_fingerprint

#: Bump when the way templates are built changes, so old templates are not reused.
TEMPLATE_FORMAT = "1"


def template_fingerprint(settings: Settings, migrator: Migrator, server_major: int) -> str:
    h = hashlib.sha256(f"finreport-testdb template v{TEMPLATE_FORMAT}\0".encode())
    h.update(migrator.fingerprint().encode() + b"\0")
    h.update(f"server-major={server_major}\0".encode())
    if settings.fingerprint_extra:
        h.update(hash_globs(settings.project_root, settings.fingerprint_extra).encode())
    if settings.seed:
        h.update(seed_fingerprint(settings.seed, settings.project_root).encode())
    return h.hexdigest()


def revision_chain(
    settings: Settings, migrator: Migrator, server_major: int
) -> RevisionChain | None:
    """The chain a template of this checkout records, for extending it later; None when the
    migrator cannot tell, or with a seed (it runs after the migrations: twice on an extended
    clone)."""
    if settings.seed or not isinstance(migrator, ChainMigrator):
        return None
    if (chain := migrator.revision_chain()) is None:
        return None
    h = hashlib.sha256(f"v{TEMPLATE_FORMAT}\0server-major={server_major}\0".encode())
    if settings.fingerprint_extra:
        h.update(hash_globs(settings.project_root, settings.fingerprint_extra).encode())
    lineage = f"{chain.lineage}\0{h.hexdigest()}"
    return replace(chain, lineage=hashlib.sha256(lineage.encode()).hexdigest())
