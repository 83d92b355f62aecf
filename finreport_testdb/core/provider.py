"""The seam between the core and whatever runs PostgreSQL: all the core needs is a URL to a role
that may create databases on a running server. Without a configured URL a `ServerProvider` (the
embedded server, or a project's own passed to `ProjectDatabases.from_settings`) hands one back.
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
        """The running server, started first if needed; idempotent and safe to call from many
        processes at once (every xdist worker may call it)."""


def started_action(provider: ServerProvider) -> str | None:
    """What `start()` did ("started", "copied", "initdb", "running"), for providers that say so:
    the pytest header announces a server the run started."""
    action = getattr(provider, "last_start_action", None)
    return action if isinstance(action, str) else None
