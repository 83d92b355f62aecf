"""finreport-testdb: one PostgreSQL database per pytest-xdist worker, cloned from a template that
Alembic migrated once.

The core API is `TestDatabases` (see `manager.py`); the `testdb` CLI and the pytest plugin are thin
front ends over it. Everything a public call raises or returns is exported here.

The errors are imported eagerly (they need nothing); the rest is imported on first attribute access
(PEP 562) so that `import finreport_testdb.cli` - and therefore `testdb --help` - does not pay for
SQLAlchemy, psycopg and Alembic before a command actually needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DatabaseInUse,
    DriftError,
    EmbeddedServerError,
    MigrationError,
    NotManagedDatabase,
    PermissionProblem,
    ServerUnreachable,
    TemplateBuildError,
    TestdbError,
    UnsafeDatabaseName,
)

if TYPE_CHECKING:
    from .admin import Admin, DatabaseInfo
    from .alembic_migrator import AlembicMigrator
    from .clean import CleanPlan, ManagedDatabase
    from .clone_pool import ClonePool
    from .clones import ClonedDatabase
    from .dump_cache import DumpCacheError
    from .extend import RevisionChain
    from .manager import TestDatabases
    from .migrator import Migrator
    from .settings import Settings, resolve_settings
    from .template import TemplateResult

# public name -> the module that defines it (imported lazily by __getattr__)
_LAZY = {
    "Admin": "admin",
    "DatabaseInfo": "admin",
    "AlembicMigrator": "alembic_migrator",
    "ClonePool": "clone_pool",
    "DumpCacheError": "dump_cache",
    "RevisionChain": "extend",
    "CleanPlan": "clean",
    "ClonedDatabase": "clones",
    "ManagedDatabase": "clean",
    "TestDatabases": "manager",
    "Migrator": "migrator",
    "Settings": "settings",
    "resolve_settings": "settings",
    "TemplateResult": "template",
}


def __getattr__(name: str) -> Any:
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
    "ClonePool",
    "ClonedDatabase",
    "ConfigError",
    "DatabaseInUse",
    "DatabaseInfo",
    "DriftError",
    "DumpCacheError",
    "EmbeddedServerError",
    "ManagedDatabase",
    "MigrationError",
    "Migrator",
    "NotManagedDatabase",
    "PermissionProblem",
    "RevisionChain",
    "ServerUnreachable",
    "Settings",
    "TemplateBuildError",
    "TemplateResult",
    "TestDatabases",
    "TestdbError",
    "UnsafeDatabaseName",
    "resolve_settings",
]
