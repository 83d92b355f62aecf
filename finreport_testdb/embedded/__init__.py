"""The embedded PostgreSQL server: the provider the core uses when no server URL is configured.

The core needs only "a URL to an admin role on a running server": `EmbeddedServer` is the default
`ServerProvider` (core/provider.py), and `start()` returns that URL in a `ServerInfo`. Parts, in
import order, each with one job and no base classes; `EmbeddedServer` assembles them:

    binaries    which initdb/pg_ctl/postgres to use, and their version
    layout      the cache dirs and their permission checks, the server user, file writes
    passwords   the superuser secret, its file, and its SCRAM verifier (computed by libpq)
    process     the pid file, liveness, stopping, ports, the start lock, running server tools
    cluster     initdb or the initdb cache, configuration, setting the password
    server      `EmbeddedServer`: start / stop / status / purge
"""

from __future__ import annotations

from .binaries import DEBIAN_PG_ROOT, find_bindir
from .layout import default_cache_dir, default_initdb_cache_dir
from .server import EmbeddedServer, ServerInfo, StartAction

__all__ = [
    "DEBIAN_PG_ROOT",
    "EmbeddedServer",
    "ServerInfo",
    "StartAction",
    "default_cache_dir",
    "default_initdb_cache_dir",
    "find_bindir",
]
