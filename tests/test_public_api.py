"""The public API: everything a public call raises or returns is importable from the package, and
no public name makes pytest try to collect it."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import sys
import textwrap
import typing
import warnings
from pathlib import Path

import pytest

import finreport_testdb

PACKAGE = Path(finreport_testdb.__file__).parent


def package_classes_in(annotation: object) -> set[type]:
    """The package's classes named by a type annotation (through unions, generics, tuples)."""
    found: set[type] = set()
    if inspect.isclass(annotation) and annotation.__module__.startswith("finreport_testdb"):
        found.add(annotation)
    for arg in typing.get_args(annotation):
        found |= package_classes_in(arg)
    return found


def type_namespace(module_name: str) -> dict[str, object]:
    """The module's globals plus what it imports only under TYPE_CHECKING (annotations name those
    too: an exported class may hide behind one)."""
    module = sys.modules[module_name]
    namespace = dict(vars(module))
    tree = ast.parse(Path(inspect.getsourcefile(module) or "").read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            block = ast.Module(body=node.body, type_ignores=[])
            exec(compile(block, module.__file__ or "", "exec"), namespace)
    return namespace


def hints_of(function: object, module_name: str) -> dict[str, object]:
    return typing.get_type_hints(function, type_namespace(module_name))


def reachable_types(roots: list[type]) -> set[type]:
    """Classes a user gets back from the exported classes: return types of public methods and
    properties, and public fields of returned dataclasses and instances, followed transitively."""
    seen: set[type] = set()
    todo = list(roots)
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints: list[object] = []
        if dataclasses.is_dataclass(cls):
            field_types = hints_of(cls, cls.__module__)
            hints += [field_types[f.name] for f in dataclasses.fields(cls) if f.name[0] != "_"]
        init = cls.__dict__.get("__init__")
        for name, member in vars(cls).items():
            if name.startswith("_"):
                continue
            function = member.fget if isinstance(member, property) else member
            function = getattr(function, "__func__", function)  # classmethod / staticmethod
            function = getattr(function, "func", function)  # functools.cached_property
            if callable(function):
                hints.append(hints_of(function, cls.__module__).get("return"))
        if init is not None and not dataclasses.is_dataclass(cls):
            # public attributes assigned in __init__ with an annotation (`self.naming: Naming`)
            source = textwrap.dedent(inspect.getsource(init))
            for node in ast.walk(ast.parse(source)):
                if (
                    isinstance(node, ast.AnnAssign)
                    and isinstance(node.target, ast.Attribute)
                    and not node.target.attr.startswith("_")
                ):
                    namespace = type_namespace(cls.__module__)
                    hints.append(eval(ast.unparse(node.annotation), namespace))
        for hint in hints:
            todo += package_classes_in(hint)
    return seen


def test_everything_public_calls_return_is_exported() -> None:
    exported = {getattr(finreport_testdb, name) for name in finreport_testdb.__all__}
    roots = [value for value in exported if inspect.isclass(value)]
    missing = {f"{t.__module__}.{t.__qualname__}" for t in reachable_types(roots) - exported}
    assert not missing, f"returned by public calls but not exported: {sorted(missing)}"


def test_every_error_the_package_raises_is_exported() -> None:
    """Every exception class of the package that some `raise` uses (resolved in the module that
    raises it), except private ones that never leave their module."""
    raised: set[type] = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = importlib.import_module(".".join(p for p in parts if p != "__init__"))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = ast.unparse(node.exc.func)
                if "." not in name and not name.startswith("_"):
                    value = getattr(module, name, None)
                    if isinstance(value, type) and value.__module__.startswith("finreport_testdb"):
                        raised.add(value)
    assert len(raised) >= 8, f"the scan found only {raised}: it is broken"
    exported = {getattr(finreport_testdb, name) for name in finreport_testdb.__all__}
    assert not {e.__name__ for e in raised - exported}
    assert all(issubclass(e, finreport_testdb.FinreportTestdbError) for e in raised)


def test_exported_names_resolve_to_themselves() -> None:
    for name in finreport_testdb.__all__:
        value = getattr(finreport_testdb, name)
        assert getattr(value, "__name__", name) == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = finreport_testdb.nope  # type: ignore[attr-defined]


def test_no_public_name_looks_like_a_pytest_test() -> None:
    """pytest collects classes named `Test*` from test modules that import them."""
    assert not [name for name in finreport_testdb.__all__ if name.startswith("Test")]


@pytest.mark.parametrize(
    ("old", "new"),
    [("TestDatabases", "ProjectDatabases"), ("TestdbError", "FinreportTestdbError")],
)
def test_the_0_1_names_still_work_and_warn(old: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated .* use {new}"):
        value = getattr(finreport_testdb, old)
    assert value is getattr(finreport_testdb, new)
    assert value.__test__ is False  # imported under the old name, pytest must not collect it


def test_old_names_imported_into_a_test_module_are_not_collected(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_user="""
        from finreport_testdb import TestDatabases, TestdbError

        def test_ok():
            assert TestDatabases and TestdbError
        """
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = pytester.runpytest_subprocess(
            "-p", "no:testdb", "-W", "ignore::DeprecationWarning"
        )
    result.assert_outcomes(passed=1)
    assert "cannot collect test class" not in result.stdout.str()
