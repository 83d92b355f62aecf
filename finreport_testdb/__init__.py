"""finreport-testdb: one PostgreSQL database per pytest-xdist worker, cloned from a template that
Alembic migrated once.

The core API is `ProjectDatabases` (see `manager.py`); the `testdb` CLI and the pytest plugin are
thin front ends over it. Everything a public call raises or returns is exported here
(tests/test_public_api.py walks the exported classes to keep that true).

The errors are imported eagerly (they need nothing); the rest is imported on first attribute access
(PEP 562) so that `import finreport_testdb.cli` - and therefore `testdb --help` - does not pay for
SQLAlchemy, psycopg and Alembic before a command actually needs them.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DatabaseInUse,
    DriftError,
    EmbeddedServerError,
    FinreportTestdbError,
    MigrationError,
    NotManagedDatabase,
    PermissionProblem,
    ServerUnreachable,
    TemplateBuildError,
    UnsafeDatabaseName,
)

if TYPE_CHECKING:
    from .admin import Admin, DatabaseInfo
    from .alembic_migrator import AlembicMigrator
    from .clean import CleanPlan, ManagedDatabase
    from .clones import ClonedDatabase
    from .dump_cache import DumpCacheError
    from .embedded_server import EmbeddedServer, ServerInfo
    from .extend import RevisionChain
    from .manager import ProjectDatabases
    from .marker import Marker
    from .migrator import Migrator
    from .names import Naming
    from .provider import RunningServer, ServerProvider
    from .settings import Settings, resolve_settings
    from .template import TemplateResult
    from .urls import SecretUrl

# public name -> the module that defines it (imported lazily by __getattr__)
_LAZY = {
    "Admin": "admin",
    "DatabaseInfo": "admin",
    "AlembicMigrator": "alembic_migrator",
    "CleanPlan": "clean",
    "ManagedDatabase": "clean",
    "ClonedDatabase": "clones",
    "DumpCacheError": "dump_cache",
    "EmbeddedServer": "embedded_server",
    "ServerInfo": "embedded_server",
    "RevisionChain": "extend",
    "ProjectDatabases": "manager",
    "Marker": "marker",
    "Migrator": "migrator",
    "Naming": "names",
    "RunningServer": "provider",
    "ServerProvider": "provider",
    "Settings": "settings",
    "resolve_settings": "settings",
    "TemplateResult": "template",
    "SecretUrl": "urls",
}

#: 0.1 names that started with "Test" (pytest collects such names): old name -> new name.
#: They keep working, with a DeprecationWarning, until 1.0.
_DEPRECATED = {"TestDatabases": "ProjectDatabases", "TestdbError": "FinreportTestdbError"}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(
            f"finreport_testdb.{name} is deprecated and goes away in 1.0; use {new} (same class)",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new] if new in globals() else __getattr__(new)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Admin",
    "AlembicMigrator",
    "CleanPlan",
    "ClonedDatabase",
    "ConfigError",
    "DatabaseInUse",
    "DatabaseInfo",
    "DriftError",
    "DumpCacheError",
    "EmbeddedServer",
    "EmbeddedServerError",
    "FinreportTestdbError",
    "ManagedDatabase",
    "Marker",
    "MigrationError",
    "Migrator",
    "Naming",
    "NotManagedDatabase",
    "PermissionProblem",
    "ProjectDatabases",
    "RevisionChain",
    "RunningServer",
    "SecretUrl",
    "ServerInfo",
    "ServerProvider",
    "ServerUnreachable",
    "Settings",
    "TemplateBuildError",
    "TemplateResult",
    "UnsafeDatabaseName",
    "resolve_settings",
]
