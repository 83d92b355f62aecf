"""Error types. Each is raised with one line naming the problem and the fix (the CLI prints just
that line, the plugin shows it as why a session stopped), never a password (`render_for_humans`).
"""

from __future__ import annotations


class FinreportTestdbError(Exception):
    """Base class: a problem the user can fix; the CLI prints its message and exits 1."""


class ConfigError(FinreportTestdbError):
    """A setting is missing, malformed or contradictory."""


class UnsafeDatabaseName(ConfigError):
    """A database name or namespace that cannot be used safely as a PostgreSQL identifier."""


class ServerUnreachable(FinreportTestdbError):
    """The PostgreSQL server cannot be reached or refused the login."""


class PermissionProblem(FinreportTestdbError):
    """The role lacks a privilege the operation needs (e.g. CREATEDB)."""


class NotManagedDatabase(FinreportTestdbError):
    """Refused to touch a database that does not carry this tool's ownership marker."""


class DatabaseInUse(FinreportTestdbError):
    """A database the tool would replace is used by other sessions (another run?)."""


class TemplateBuildError(FinreportTestdbError):
    """The template could not be built (migration failure, lock timeout, ...)."""


class MigrationError(TemplateBuildError):
    """A migration failed; the message names the revision, `details` keeps its traceback."""

    def __init__(self, message: str, *, revision: str | None = None, details: str = "") -> None:
        super().__init__(message)
        self.revision = revision
        self.details = details


class EmbeddedServerError(FinreportTestdbError):
    """The embedded PostgreSQL server could not be set up, started or stopped."""


class DriftError(TemplateBuildError):
    """The migrated schema differs from the models named by the `metadata` setting."""


class DumpCacheError(FinreportTestdbError):
    """A dump could not be written or is not usable (the build then goes on without it)."""
