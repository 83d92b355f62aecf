"""The embedded PostgreSQL server, under the name the rest of the package and its users import.

The implementation lives in `finreport_testdb.embedded` (one module per job: binaries,
passwords, layout, process, cluster, server); this module only re-exports its public names.
"""

from __future__ import annotations

from .embedded.binaries import DEBIAN_PG_ROOT, find_bindir
from .embedded.layout import StartAction, default_cache_dir, default_initdb_cache_dir
from .embedded.server import EmbeddedServer, ServerInfo
from .errors import EmbeddedServerError

__all__ = [
    "DEBIAN_PG_ROOT",
    "EmbeddedServer",
    "EmbeddedServerError",
    "ServerInfo",
    "StartAction",
    "default_cache_dir",
    "default_initdb_cache_dir",
    "find_bindir",
]
