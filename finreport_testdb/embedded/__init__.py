"""The embedded PostgreSQL server: the provider the core uses when no server URL is configured.

`EmbeddedServer` keeps one cluster per project in a cache dir and leaves it running, so the next
run only pays for a lock and a login. Its parts, in import order: `binaries`, `layout`,
`passwords`, `process`, `cluster` and `server`; each module's docstring says what it holds.

It must not know about templates or any database but `postgres`, print anything, put the password
into a message, a log record, a command line or a file other than `password`, or touch anything
outside its own directories (no chmod of parents, nothing in /etc).
"""

from __future__ import annotations

from .binaries import DEBIAN_PG_ROOT, find_bindir
from .cluster import StartAction
from .layout import default_cache_dir, default_initdb_cache_dir
from .server import EmbeddedServer, ServerInfo

__all__ = [
    "DEBIAN_PG_ROOT",
    "EmbeddedServer",
    "ServerInfo",
    "StartAction",
    "default_cache_dir",
    "default_initdb_cache_dir",
    "find_bindir",
]
