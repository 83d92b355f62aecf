"""The embedded PostgreSQL server: the provider the core uses when no server URL is configured.

`EmbeddedServer` (the default `ServerProvider`) keeps one cluster per project in a cache dir and
leaves it running, so the next run only pays for a lock and a login. Parts, in import order, each
with one job; `EmbeddedServer` assembles them:

    binaries    which initdb/pg_ctl/postgres to use, and their version
    layout      the cache dir (data/, password, server.log, lock, run/) and its permission
                checks, the user the server runs as when we are root, file writes
    passwords   the superuser secret, its file, and its SCRAM verifier (computed by libpq)
    process     the pid file, liveness, stopping, ports, the start lock, running server tools
    cluster     initdb or a copy of the shared initdb cache, configuration, the password
    server      `EmbeddedServer`: start, stop, status, purge, expected_url

It must not know about templates or any database but `postgres`, print anything, put the password
into a message, a log record, a command line or a file other than `password`, or touch anything
outside its own directories (no chmod of parents, nothing in /etc).
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
