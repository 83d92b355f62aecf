"""The public API: small, and complete for what a user calls and catches.

The top level exports `ProjectDatabases`, the settings it is made from, what its common calls
hand back, the two protocols a project may plug in, and every error: a user can catch anything
the package raises by a name imported from the top. Advanced types stay in their modules.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

import finreport_testdb
from finreport_testdb import errors

PACKAGE = Path(finreport_testdb.__file__).parent

#: The whole public API: adding a name is a decision, so it is listed here too.
PUBLIC = {
    "ProjectDatabases",
    "Settings",
    "resolve_settings",
    "ClonedDatabase",
    "TemplateResult",
    "Migrator",
    "ServerProvider",
}


def raised_package_errors() -> set[type]:
    """The package's own exception classes that some `raise X(...)` / `raise X` raises, each
    resolved in the module that raises it (a library's, raised on purpose into that library, and
    a private one caught inside its module, do not count)."""
    found: set[type] = set()
    for path in PACKAGE.rglob("*.py"):
        dotted = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = importlib.import_module(dotted.removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(target, ast.Name) and not target.id.startswith("_"):
                    value = getattr(module, target.id, None)
                    if inspect.isclass(value) and value.__module__.startswith("finreport_testdb"):
                        found.add(value)
    return found


def test_the_top_level_exports_the_api_and_every_error() -> None:
    error_types = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.FinreportTestdbError)
    }
    assert set(finreport_testdb.__all__) == PUBLIC | error_types
    for name in finreport_testdb.__all__:
        assert getattr(finreport_testdb, name) is not None


def test_every_error_the_package_raises_can_be_caught_by_a_top_level_name() -> None:
    """Our own errors all live in `errors.py`, derive from the base error, and are exported."""
    raised = raised_package_errors()
    assert raised, "the scan found no raise at all"
    for error in raised:
        assert error.__module__ == "finreport_testdb.errors", error
        assert issubclass(error, errors.FinreportTestdbError)
        assert error.__name__ in finreport_testdb.__all__


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = finreport_testdb.nope  # type: ignore[attr-defined]


def test_no_public_name_looks_like_a_pytest_test() -> None:
    """pytest collects classes named `Test*` from test modules that import them."""
    assert not [name for name in finreport_testdb.__all__ if name.startswith("Test")]


def test_importing_the_package_loads_no_database_library() -> None:
    """`testdb --help` and an app that only imports the errors pay for none of them."""
    import subprocess
    import sys

    code = (
        "import sys, finreport_testdb; "
        "print(sorted(m for m in ('sqlalchemy', 'psycopg', 'alembic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_lists_exactly_the_settings_there_are() -> None:
    """The README's configuration table is the settings reference users read: a removed setting
    (the warm pool's `pool_size` stayed listed after the pool was gone) or a new one it misses
    misleads them."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme.split("| key (`[tool.testdb]`) |", 1)[1].split("\n\n", 1)[0]
    listed = {
        key for row in table.splitlines()[2:] for key in re.findall(r"`(\w+)`", row.split("|")[1])
    }
    derived = {"project_root", "pyproject", "sources", "has_tool_table", "opted_in"}
    assert listed == {f.name for f in dataclasses.fields(finreport_testdb.Settings)} - derived
