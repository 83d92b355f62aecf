"""finreport-testdb: one PostgreSQL database per pytest-xdist worker, cloned from a template that
Alembic migrated once.

The core API is `TestDatabases` (see `manager.py`); the `testdb` CLI and the pytest plugin are thin
front ends over it.
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    MigrationError,
    NotManagedDatabase,
    ServerUnreachable,
    TemplateBuildError,
    TestdbError,
    UnsafeDatabaseName,
)
from .manager import ClonedDatabase, TestDatabases
from .migrator import Migrator
from .settings import Settings, resolve_settings
from .template import TemplateResult

__all__ = [
    "ClonedDatabase",
    "ConfigError",
    "MigrationError",
    "Migrator",
    "NotManagedDatabase",
    "ServerUnreachable",
    "Settings",
    "TemplateBuildError",
    "TemplateResult",
    "TestDatabases",
    "TestdbError",
    "UnsafeDatabaseName",
    "resolve_settings",
]
