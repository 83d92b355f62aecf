"""The embedded PostgreSQL server: the provider the core uses when no server URL is configured.

The core needs only "a URL to an admin role on a running server": `EmbeddedServer` is the default
`ServerProvider` (provider.py), and `start()` returns that URL in a `ServerInfo`. Modules, in
import order, one job each:

    binaries    which initdb/pg_ctl/postgres to use, and their version
    passwords   the superuser secret and its SCRAM verifier (computed by libpq)
    layout      the cache dir, its permission checks, the password file, the log
    process     run-as-user, pid file, liveness, signals, ports, the start lock, tool runs
    cluster     initdb or the initdb cache, configuration, setting the password
    server      `EmbeddedServer`: start / stop / status

This package re-exports their public names.
"""

from __future__ import annotations

from .binaries import DEBIAN_PG_ROOT, find_bindir
from .layout import StartAction, default_cache_dir, default_initdb_cache_dir
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
