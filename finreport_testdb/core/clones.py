"""Worker and per-test databases: what a clone hands back, and cloning one under its claim.

The caller has claimed the name (`ownership.Claims`), so no other run creates or drops it
meanwhile; what may sit there already is checked here, at the moment of the clone: a leftover
of an interrupted creation is cleared, a database without our marker is refused, ours is reused
(`--testdb-reuse`) or replaced, but never one another run still has sessions on.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import URL

from ..errors import DatabaseInUse
from .admin import Admin
from .marker import Marker
from .names import Naming
from .ownership import check_template_owner, clear_interrupted_creation, existing_marker
from .urls import SecretUrl, async_variant, render_for_humans, sync_variant


@dataclass(frozen=True, repr=False)
class ClonedDatabase:
    """A database cloned from the template for one worker or one test."""

    name: str
    url: URL
    template: str
    fingerprint: str
    reused: bool
    seconds: float

    @property
    def url_string(self) -> SecretUrl:
        """The URL with the configured driver and the password intact, for the code under test
        (a `str` whose `repr` masks the password, so failure reports do not show it)."""
        return SecretUrl(self.url)

    @property
    def sync_url(self) -> SecretUrl:
        return SecretUrl(sync_variant(self.url))

    @property
    def async_url(self) -> SecretUrl:
        return SecretUrl(async_variant(self.url))

    def __repr__(self) -> str:  # dataclass repr would print the password in test reports
        return (
            f"ClonedDatabase(name={self.name!r}, url={render_for_humans(self.url)!r}, "
            f"template={self.template!r}, reused={self.reused})"
        )


def clone_claimed(
    admin: Admin, naming: Naming, name: str, marker: Marker, template: str, *, reuse: bool
) -> bool:
    """Clone `template` as `name` (claimed by the caller); True if an existing clone of the same
    fingerprint was reused instead (`reuse`)."""
    check_template_owner(admin, template)
    clear_interrupted_creation(admin, name, naming.base)
    existing = existing_marker(admin, name, naming.base, action="replace")
    if existing is not None:
        if reuse and existing.fingerprint == marker.fingerprint:
            return True
        sessions = admin.session_count(name)
        if sessions:
            raise DatabaseInUse(
                f"database {name!r} is in use by {sessions} other session(s), probably "
                "another test run with the same namespace on this server; give each "
                "concurrent run its own namespace (TESTDB_NAMESPACE=auto or "
                "--testdb-namespace), or close those sessions"
            )
        admin.drop_database(name)
    admin.create_database(name, comment=marker.to_comment(), template=template)
    return False
