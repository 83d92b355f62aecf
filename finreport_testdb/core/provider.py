"""The seam between the core and whatever runs PostgreSQL.

All the core needs of a server is a URL to a role that may create databases on a running one. A
configured URL is the common case; with none, a `ServerProvider` starts (or finds) a server and
hands that URL back. The embedded server (`embedded_server.EmbeddedServer`) is the default
provider; a project can pass its own to `ProjectDatabases.from_settings` (a server its CI starts, a
container) without the core knowing how it runs.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.engine import URL


class RunningServer(Protocol):
    """What a provider hands back: the admin URL (its database part is ignored)."""

    @property
    def url(self) -> URL: ...


class ServerProvider(Protocol):
    def start(self) -> RunningServer:
        """Return the running server, starting it first if needed; idempotent, and safe to call
        from many processes at once (every xdist worker may call it)."""
        ...


def started_action(provider: ServerProvider) -> str | None:
    """What `start()` did ("started", "copied", "initdb", "running"), for providers that say so
    (the embedded server does): the pytest header announces a server the run started."""
    action = getattr(provider, "last_start_action", None)
    return action if isinstance(action, str) else None
