"""Where a missing template's content comes from: under the build lock, *extend* the ready
template whose migration chain is the longest prefix of ours (only the newer revisions run), else
*restore* the dump cache's file, else migrate from empty. Then drift-check and dump. A cache
failure is a note, not an error: the template is built instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from sqlalchemy.engine import URL

from ..core.admin import Admin
from ..core.export import exported
from ..core.marker import ROLE_TEMPLATE, owned_marker
from ..core.names import Naming
from ..core.settings import Settings
from ..core.template import Filled
from ..core.urls import with_database
from ..errors import DumpCacheError, FinreportTestdbError
from ..migrators.migrator import ChainMigrator, Migrator, RevisionChain
from .dump_cache import dump_path, restore_dump, write_dump
from .seed import run_seed

log = logging.getLogger("finreport_testdb.core.template")

STALE_HINT_THRESHOLD = 3  # stale templates beyond which `clean --stale-templates` is suggested
_USE_RESOLUTION = timedelta(minutes=1)  # how often a template's last use is written at most


@dataclass
class Sources:
    """The `build`, `fill` and `finish` steps of one `ensure_template` call, for one project."""

    settings: Settings
    server_url: URL
    migrator: Migrator
    naming: Naming
    fingerprint: str
    server_major: int
    chain: RevisionChain | None
    #: One-line remarks for the user (a refused dump), reported with the result.
    notes: list[str] = field(default_factory=list)

    def build(self, scratch_url: URL, *, seed: bool = True) -> None:
        """Migrate the scratch database (from empty, or an older template's clone: Alembic reads
        where it stands and runs only the newer revisions), then seed it. An env.py (or the app
        settings it imports) that reads DATABASE_URL sees the scratch database meanwhile."""
        with exported(self.settings.export_url_as, scratch_url):
            self.migrator.migrate(scratch_url)
            if seed:
                run_seed(self.settings.seed, scratch_url, self.settings.project_root)

    @property
    def _migrator(self) -> ChainMigrator | None:
        return self.migrator if isinstance(self.migrator, ChainMigrator) else None

    def fill(self, admin: Admin, scratch: str, comment: str) -> Filled | None:
        return self._extend(admin, scratch, comment) or self._restore(admin, scratch, comment)

    def _extend_base(self, admin: Admin, chain: RevisionChain) -> tuple[str, str, int] | None:
        """(name, head, revisions missing) of the ready template of this base whose chain is the
        longest prefix of ours: its marker records the cumulative digest at its head
        (`RevisionChain.steps`), so that is a dictionary lookup, however long the chain."""
        position = {step: index for index, step in enumerate(chain.steps())}
        target, best = self.naming.template(self.fingerprint), None
        for info in admin.list_databases():
            marker = owned_marker(info.name, info.comment, self.naming.base)
            if info.name == target or marker is None or marker.role != ROLE_TEMPLATE:
                continue
            index = position.get(marker.chain or "")
            if not marker.ready or index is None or chain.revisions[index][0] != marker.head:
                continue
            missing = len(chain.revisions) - 1 - index
            if best is None or missing < best[2]:
                best = (info.name, marker.head, missing)
        return best

    def _extend(self, admin: Admin, scratch: str, comment: str) -> Filled | None:
        migrator, chain = self._migrator, self.chain
        base = self._extend_base(admin, chain) if migrator and chain else None
        if migrator is None or base is None:
            return None
        name, head, missing = base
        url = with_database(self.server_url, scratch)
        try:
            admin.create_database(scratch, comment=comment, template=name)
        except FinreportTestdbError as exc:  # dropped meanwhile, say: build from empty instead
            log.info("cannot extend %s (%s); building from empty", name, exc)
            return None
        try:
            found = migrator.database_heads(url)
            if found == {head}:
                self.build(url, seed=False)  # a seed is in the template extended already
        except BaseException:
            admin.drop_database(scratch, force=True)
            raise
        if found != {head}:
            log.info("%s is at %s, not %s: building from empty", name, found, head)
            admin.drop_database(scratch, force=True)
            return None
        return Filled("extended", name, missing)

    def _restore(self, admin: Admin, scratch: str, comment: str) -> Filled | None:
        cache_dir, migrator, fingerprint = self.settings.cache_dir, self._migrator, self.fingerprint
        if cache_dir is None or migrator is None:
            return None
        path = dump_path(cache_dir, fingerprint)
        if not path.is_file():
            return None
        url = with_database(self.server_url, scratch)
        admin.create_database(scratch, comment=comment)
        try:
            restore_dump(path, self.server_url, scratch, fingerprint, self.server_major)
            found, wanted = migrator.database_heads(url), migrator.target_heads()
            if found != wanted:
                raise DumpCacheError(
                    f"dump file {path} refused: the restored database is at revision(s) "
                    f"{', '.join(sorted(found)) or 'none'}, not {', '.join(sorted(wanted))}; building "
                    "the template instead (a fresh dump then replaces the file)"
                )
        except DumpCacheError as exc:
            self.notes.append(str(exc))
            admin.drop_database(scratch, force=True)
            return None
        except BaseException:
            admin.drop_database(scratch, force=True)
            raise
        return Filled("restored", str(path))

    def finish(self, scratch_url: URL, filled: Filled | None) -> None:
        settings = self.settings
        if settings.metadata and settings.drift_check:
            from .drift import check_drift

            with exported(settings.export_url_as, scratch_url):  # the models may read it on import
                check_drift(scratch_url, settings.metadata, settings.project_root)
        if settings.cache_dir is not None and (filled is None or filled.how != "restored"):
            assert scratch_url.database is not None
            try:
                path = write_dump(
                    self.server_url,
                    scratch_url.database,
                    settings.cache_dir,
                    self.fingerprint,
                    self.server_major,
                )
                log.info("wrote %s", path)
            except DumpCacheError as exc:
                self.notes.append(f"{exc} (the template itself is fine)")


def record_use(admin: Admin, name: str, naming: Naming) -> None:
    """Stamp the template's marker with this run's time (at most once a minute), for
    `clean --keep/--older-than`. Best effort: a template dropped meanwhile is not stamped."""
    try:
        found = admin.find(name)
        marker = owned_marker(name, found.comment, naming.base) if found else None
        if marker is None or marker.role != ROLE_TEMPLATE:
            return
        now = datetime.now(timezone.utc)
        last = marker.last_used_datetime()
        if marker.used_at and last is not None and now - last < _USE_RESOLUTION:
            return
        # Microseconds: templates built within one second still order by recency for --keep.
        used_at = now.isoformat(timespec="microseconds")
        admin.set_comment(name, replace(marker, used_at=used_at).to_comment())
    except FinreportTestdbError as exc:
        log.info("could not record the use of %s: %s", name, exc)


def stale_hint(naming: Naming, admin: Admin, fingerprint: str) -> list[str]:
    """One line suggesting a clean-up when many templates of other fingerprints pile up."""
    markers = (owned_marker(db.name, db.comment, naming.base) for db in admin.list_databases())
    stale = sum(
        1 for m in markers if m and m.role == ROLE_TEMPLATE and m.fingerprint != fingerprint
    )
    if stale <= STALE_HINT_THRESHOLD:
        return []
    return [
        f"hint: {stale} templates of base {naming.base!r} are not the current one; "
        "`testdb clean --stale-templates --keep 2` removes all but the newest"
    ]
