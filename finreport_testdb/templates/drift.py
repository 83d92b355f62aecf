"""Drift check: does the migrated template match the models? (optional, `metadata` setting)

Migrations and models are written by hand side by side; when a model gains a column that no
migration adds, tests against the template fail far from the cause, or pass against a schema
production will not have. After a build, before any test runs, Alembic's `compare_metadata` diffs
the scratch database against `package.module:attr.path` (e.g. `app.models:Base.metadata`) and the
build fails with the list. It runs on the scratch database only, and only when configured.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from ..core.urls import libpq_variant, render_for_driver, sync_variant
from ..errors import ConfigError, DriftError
from .seed import importable_from


def load_metadata(reference: str, root: Path) -> MetaData:
    """Import `module:attr.path` (relative to the project root) and check it is a MetaData."""
    module_name, _, attr_path = reference.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(
            f"metadata {reference!r} must look like 'package.models:Base.metadata'; fix it in "
            "[tool.testdb] or TESTDB_METADATA"
        )
    try:
        with importable_from(root):
            obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as exc:  # whatever importing the user's module raises
        where = f" ({exc.filename}, line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
        reason = " ".join(str(exc.msg if isinstance(exc, SyntaxError) else exc).split())
        raise ConfigError(
            f"metadata {reference!r} cannot be loaded ({type(exc).__name__}: {reason}{where}); "
            "fix the reference (module:attribute, e.g. app.models:Base.metadata) or the module, "
            "and make it importable from the project root"
        ) from None
    if not isinstance(obj, MetaData):
        raise ConfigError(
            f"metadata {reference!r} is a {type(obj).__name__}, not a sqlalchemy MetaData; point "
            "it at e.g. Base.metadata"
        )
    return obj


def _describe(diff: Any) -> str:
    """One line per difference, in the models' terms ('missing from the migrations')."""
    if isinstance(diff, list):  # modify_* come grouped per column
        return "; ".join(_describe(d) for d in diff)
    op = diff[0]
    if op == "add_table":
        return f"table {diff[1].name!r} is in the models but not in the migrations"
    if op == "remove_table":
        return f"table {diff[1].name!r} is in the migrations but not in the models"
    if op == "add_column":
        return f"column {diff[2]}.{diff[3].name} is in the models but not in the migrations"
    if op == "remove_column":
        return f"column {diff[2]}.{diff[3].name} is in the migrations but not in the models"
    if op.startswith("modify_"):
        return f"column {diff[2]}.{diff[3]}: {op[7:]} differs ({diff[5]!r} in the migrations, {diff[6]!r} in the models)"
    name = getattr(diff[1], "name", None) or str(diff[1])
    return f"{op.replace('_', ' ')} {name}"


def check_drift(url: URL, reference: str, root: Path) -> None:
    """Raise `DriftError` listing every difference between the database at `url` and the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    metadata = load_metadata(reference, root)
    engine = create_engine(render_for_driver(libpq_variant(sync_variant(url))), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection), metadata)
    finally:
        engine.dispose()
    if diffs:
        lines = "\n".join(f"  - {_describe(d)}" for d in diffs)
        raise DriftError(
            f"the migrations and the models ({reference}) differ in {len(diffs)} place(s); add a "
            f"migration (alembic revision --autogenerate) or fix the models, or pass "
            f"--no-drift-check (no template was created):\n{lines}"
        )
