"""finreport-testdb: one PostgreSQL database per pytest-xdist worker, cloned from a template that
Alembic migrated once. What a user calls and catches is here (docs/architecture.md, "Public API").

The errors are imported eagerly (they need nothing); the rest on first attribute access
(PEP 562), so that `testdb --help` does not pay for SQLAlchemy, psycopg and Alembic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DatabaseInUse,
    DriftError,
    DumpCacheError,
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
    from .core.clones import ClonedDatabase
    from .core.provider import ServerProvider
    from .core.settings import Settings, resolve_settings
    from .core.template import TemplateResult
    from .databases import ProjectDatabases
    from .migrators.migrator import Migrator

# public name -> the module that defines it (imported lazily by __getattr__)
_LAZY = {
    "ProjectDatabases": "databases",
    "Settings": "core.settings",
    "resolve_settings": "core.settings",
    "ClonedDatabase": "core.clones",
    "TemplateResult": "core.template",
    "Migrator": "migrators.migrator",
    "ServerProvider": "core.provider",
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
    "ClonedDatabase",
    "ConfigError",
    "DatabaseInUse",
    "DriftError",
    "DumpCacheError",
    "EmbeddedServerError",
    "FinreportTestdbError",
    "MigrationError",
    "Migrator",
    "NotManagedDatabase",
    "PermissionProblem",
    "ProjectDatabases",
    "ServerProvider",
    "ServerUnreachable",
    "Settings",
    "TemplateBuildError",
    "TemplateResult",
    "UnsafeDatabaseName",
    "resolve_settings",
]
