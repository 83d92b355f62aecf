"""Drift check (optional, `metadata` setting): a model column no migration adds makes tests fail
far from the cause, or pass against a schema production will not have. After a build, Alembic's
`compare_metadata` diffs the scratch database against the models, and the build fails with the list.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from ..errors import ConfigError, DriftError
from ..migrators.migrator import sync_engine
from .seed import import_failure, importable_from


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
        raise ConfigError(
            f"metadata {reference!r} cannot be loaded ({import_failure(exc)}); fix the reference "
            "(module:attribute, e.g. app.models:Base.metadata) or the module, and make it "
            "importable from the project root"
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
        return (
            f"column {diff[2]}.{diff[3]}: {op[7:]} differs ({diff[5]!r} in the migrations, "
            f"{diff[6]!r} in the models)"
        )
    return f"{op.replace('_', ' ')} {getattr(diff[1], 'name', None) or diff[1]}"


def check_drift(url: URL, reference: str, root: Path) -> None:
    """Raise `DriftError` listing every difference between the database at `url` and the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    metadata = load_metadata(reference, root)
    with sync_engine(url) as engine, engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), metadata)
    if diffs:
        lines = "\n".join(f"  - {_describe(d)}" for d in diffs)
        raise DriftError(
            f"the migrations and the models ({reference}) differ in {len(diffs)} place(s); add a "
            f"migration (alembic revision --autogenerate) or fix the models, or pass "
            f"--no-drift-check (no template was created):\n{lines}"
        )
