"""Worker and per-test databases: what a clone hands back, and the one rule for making one.

Every clone, re-clone and per-test clone goes through `clone`: it claims the name (an advisory lock
held until the database is dropped or the process ends, so no other run creates or drops it
meanwhile) and checks what may sit there already at the moment of the clone.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import URL

from ..errors import DatabaseInUse
from .admin import Admin
from .marker import Marker
from .names import Naming
from .ownership import Claims, check_template_owner, clear_leftover, ours
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
    """The one rule for putting a new clone of `template` under the managed name `name`: True if
    an existing clone of the same fingerprint was reused instead (`reuse`).

    One round trip claims the name (unless this session holds it) and finds what is there; then
    the clone is two more (`Admin.create_database`). What may sit there is dealt with at this
    moment, under the claim: a leftover of an interrupted creation is cleared, a database without
    our marker is refused, ours is reused or replaced, but one with another run's sessions is
    refused (`own`: the database is this process's, its sessions are the app's pooled
    connections, and they are ended)."""
    held = name in claims.databases
    found = admin.inspect(name, template=template, claim=None if held else claims.label(name))
    if not found.claimed:
        raise claims.taken(name)
    claims.databases.add(name)
    try:
        check_template_owner(found.template_owner, found.role, template)
        if found.creating_exists:
            clear_leftover(admin, name, naming.base, found.creating_comment, found.creating_ours)
        if found.exists:
            existing = ours(name, found.comment, naming.base, action="replace")
            if reuse and existing.fingerprint == marker.fingerprint:
                return True
            sessions = 0 if own else admin.session_count(name)
            if sessions:
                raise DatabaseInUse(
                    f"database {name!r} is in use by {sessions} other session(s), probably "
                    "another test run with the same namespace on this server; give each "
                    "concurrent run its own namespace (TESTDB_NAMESPACE=auto or "
                    "--testdb-namespace), or close those sessions"
                )
            admin.drop_database(name, force=own)
        admin.create_database(name, comment=marker.to_comment(), template=template)
    except BaseException:
        if not held and not admin.conn.closed:
            claims.release(admin, name)
        raise
    return False
