"""Where a missing template's content comes from: under the build lock, *extend* the ready
template whose migration chain is the longest prefix of ours (only the newer revisions run), else
*restore* the dump cache's file, else migrate from empty. A cache failure is a note, not an error:
the template is built instead. Then the drift check (a model column no migration adds makes tests
fail far from the cause) and the dump.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from ..core.admin import Admin
from ..core.export import exported
from ..core.marker import ROLE_TEMPLATE, owned_marker
from ..core.names import Naming
from ..core.settings import Settings
from ..core.template import Filled
from ..core.urls import with_database
from ..errors import ConfigError, DriftError, DumpCacheError, FinreportTestdbError
from ..migrators.migrator import ChainMigrator, Migrator, RevisionChain, sync_engine
from .dump_cache import dump_path, restore_dump, write_dump
from .seed import import_failure, importable_from, run_seed

log = logging.getLogger("finreport_testdb.core.template")

STALE_HINT_THRESHOLD = 3  # stale templates beyond which `clean --stale-templates` is suggested
_USE_RESOLUTION = timedelta(minutes=1)  # how often a template's last use is written at most


@dataclass
class Sources:
    """The `build`, `fill` and `finish` steps of one `ensure_template` call."""

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
        """Migrate the scratch database (from empty, or an older template's clone), then seed it,
        exporting its URL: an env.py that reads DATABASE_URL must migrate this database."""
        with exported(self.settings.export_url_as, scratch_url):
            self.migrator.migrate(scratch_url)
            if seed:
                run_seed(self.settings.seed, scratch_url, self.settings.project_root)

    def fill(self, admin: Admin, scratch: str, comment: str) -> Filled | None:
        m = self.migrator
        if not isinstance(m, ChainMigrator):
            return None
        return self._extend(admin, m, scratch, comment) or self._restore(admin, m, scratch, comment)

    def _extend(
        self, admin: Admin, migrator: ChainMigrator, scratch: str, comment: str
    ) -> Filled | None:
        """The longest prefix: a lookup of each marker's chain digest in `RevisionChain.steps`."""
        if (chain := self.chain) is None:
            return None
        position = {step: index for index, step in enumerate(chain.steps())}
        target, candidates = self.naming.template(self.fingerprint), []
        for info in admin.list_databases():
            marker = owned_marker(info.name, info.comment, self.naming.base)
            if info.name == target or marker is None or marker.role != ROLE_TEMPLATE:
                continue
            index = position.get(marker.chain or "")
            if marker.ready and index is not None and chain.revisions[index][0] == marker.head:
                candidates.append((len(chain.revisions) - 1 - index, info.name, marker.head))
        if not candidates:
            return None
        missing, name, head = min(candidates)
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
                return Filled("extended", name, missing)
        except BaseException:
            admin.drop_database(scratch, force=True)
            raise
        log.info("%s is at %s, not %s: building from empty", name, found, head)
        admin.drop_database(scratch, force=True)
        return None

    def _restore(
        self, admin: Admin, migrator: ChainMigrator, scratch: str, comment: str
    ) -> Filled | None:
        cache_dir = self.settings.cache_dir
        path = dump_path(cache_dir, self.fingerprint) if cache_dir is not None else None
        if path is None or not path.is_file():
            return None
        admin.create_database(scratch, comment=comment)
        try:
            restore_dump(path, self.server_url, scratch, self.fingerprint, self.server_major)
            url = with_database(self.server_url, scratch)
            found, wanted = migrator.database_heads(url), migrator.target_heads()
            if found != wanted:
                raise DumpCacheError(
                    f"dump file {path} refused: the restored database is at revision(s) "
                    f"{', '.join(sorted(found)) or 'none'}, not {', '.join(sorted(wanted))}; "
                    "building the template instead (a fresh dump then replaces the file)"
                )
        except BaseException as exc:
            admin.drop_database(scratch, force=True)
            if not isinstance(exc, DumpCacheError):
                raise
            self.notes.append(str(exc))
            return None
        return Filled("restored", str(path))

    def finish(self, scratch_url: URL, filled: Filled | None) -> None:
        settings = self.settings
        if settings.metadata and settings.drift_check:
            with exported(settings.export_url_as, scratch_url):  # the models may read it on import
                check_drift(scratch_url, settings.metadata, settings.project_root)
        if settings.cache_dir is not None and (filled is None or filled.how != "restored"):
            assert scratch_url.database is not None
            key = (settings.cache_dir, self.fingerprint, self.server_major)
            try:
                log.info("wrote %s", write_dump(self.server_url, scratch_url.database, *key))
            except DumpCacheError as exc:
                self.notes.append(f"{exc} (the template itself is fine)")


def _describe(diff: Any) -> str:
    """One line per difference, in the models' terms ('missing from the migrations')."""
    if isinstance(diff, list):  # modify_* come grouped per column
        return "; ".join(_describe(d) for d in diff)
    op = diff[0]
    sides = ("migrations", "models") if op.startswith("remove_") else ("models", "migrations")
    if op in ("add_table", "remove_table"):
        return f"table {diff[1].name!r} is in the {sides[0]} but not in the {sides[1]}"
    if op in ("add_column", "remove_column"):
        return f"column {diff[2]}.{diff[3].name} is in the {sides[0]} but not in the {sides[1]}"
    if op.startswith("modify_"):
        return (
            f"column {diff[2]}.{diff[3]}: {op[7:]} differs ({diff[5]!r} in the migrations, "
            f"{diff[6]!r} in the models)"
        )
    return f"{op.replace('_', ' ')} {getattr(diff[1], 'name', None) or diff[1]}"


def check_drift(url: URL, reference: str, root: Path) -> None:
    """Raise `DriftError` listing every difference between the database at `url` and the models
    at `reference` (`module:attr.path`, imported from the project root)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    module_name, _, attr_path = reference.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(
            f"metadata {reference!r} must look like 'package.models:Base.metadata'; fix it in "
            "[tool.testdb] or TESTDB_METADATA"
        )
    try:
        with importable_from(root):
            obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as exc:  # whatever importing the user's module raises
        raise ConfigError(
            f"metadata {reference!r} cannot be loaded ({import_failure(exc)}); fix the reference "
            "(module:attribute, e.g. app.models:Base.metadata) or the module, and make it "
            "importable from the project root"
        ) from None
    if not isinstance(obj, MetaData):
        raise ConfigError(
            f"metadata {reference!r} is a {type(obj).__name__}, not a sqlalchemy MetaData; point "
            "it at e.g. Base.metadata"
        )
    with sync_engine(url) as engine, engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), obj)
    if diffs:
        lines = "\n".join(f"  - {_describe(d)}" for d in diffs)
        raise DriftError(
            f"the migrations and the models ({reference}) differ in {len(diffs)} place(s); add a "
            f"migration (alembic revision --autogenerate) or fix the models, or pass "
            f"--no-drift-check (no template was created):\n{lines}"
        )


def record_use(admin: Admin, name: str, naming: Naming) -> None:
    """Stamp the template's marker with this run's time (at most once a minute), for
    `clean --keep/--older-than`; a template dropped meanwhile is not stamped."""
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
    stale = [m for m in markers if m and m.role == ROLE_TEMPLATE and m.fingerprint != fingerprint]
    if len(stale) <= STALE_HINT_THRESHOLD:
        return []
    return [
        f"hint: {len(stale)} templates of base {naming.base!r} are not the current one; "
        "`testdb clean --stale-templates --keep 2` removes all but the newest"
    ]
