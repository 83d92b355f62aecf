"""Worker and per-test databases: what a clone hands back, and `clone`, which every clone,
re-clone and per-test clone goes through."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import URL

from .admin import Admin
from .marker import Marker
from .names import Naming
from .ownership import Claims, check_template_owner, database_lock_label, make_room
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


def clone(
    admin: Admin,
    naming: Naming,
    claims: Claims,
    name: str,
    marker: Marker,
    template: str,
    *,
    reuse: bool = False,
    own: bool = False,
) -> bool:
    """Put a new clone of `template` under the managed name `name`, claimed until it is dropped or
    the process ends, in three round trips (docs/architecture.md): True if an existing clone of
    the same fingerprint was reused instead (`reuse`)."""
    held = name in claims.databases
    found = admin.inspect(name, template, None if held else database_lock_label(name))
    if not found.claimed:
        raise claims.taken(name)
    claims.databases.add(name)
    try:
        check_template_owner(found.template, found.role, template)
        if make_room(
            admin, naming, name, found, reuse=marker.fingerprint if reuse else None, own=own
        ):
            return True
        admin.create_database(name, comment=marker.to_comment(), template=template)
    except BaseException:
        if not held and not admin.conn.closed:
            claims.release(admin, name)
        raise
    return False
