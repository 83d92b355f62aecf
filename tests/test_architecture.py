"""The package's shape, as docs/architecture.md draws it: parts that import each other one way
only (counting imports inside functions and under TYPE_CHECKING: a lazy import is still a
dependency), no module that reaches into another part's private names, few top-level modules,
small modules, and a package under its line ceiling."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import finreport_testdb

PACKAGE = Path(finreport_testdb.__file__).parent
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    """`databases`, `core.admin`: the dotted name inside the package (a sub-package's `__init__`
    is the sub-package itself; the top-level `__init__` is left out)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """(imported package module, imported names) for every import of `path`, anywhere in it."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif (node.module or "").startswith("finreport_testdb."):
                target = (node.module or "").split(".")[1:]
            else:
                continue
            found.append((".".join(target), [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("finreport_testdb."):
                    found.append((".".join(alias.name.split(".")[1:]), []))
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (`from .x import y`: `x`, or `x.y` if a module)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        deps: set[str] = set()
        for target, names in imports_of(path, name):
            deps |= {f"{target}.{n}" for n in names if f"{target}.{n}" in known}
            if target in known:
                deps.add(target)
        graph[name] = deps - {name}
    return graph


def part_of(module: str) -> str:
    return module.split(".")[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path `a -> b -> ... -> a`, else None (depth-first, three colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def documented_parts() -> dict[str, int]:
    """docs/architecture.md's "## Parts" list: part -> its place in the one-way order. Parts on
    one line (`plugin`, `cli`) share a place and may not import each other."""
    section = ARCHITECTURE.read_text().split("## Parts", 1)[1].split("\n## ", 1)[0]
    order: dict[str, int] = {}
    for number, rest in re.findall(r"^(\d+)\. (.+)$", section, flags=re.MULTILINE):
        for name in re.findall(r"`([\w]+)`", rest.split(":", 1)[0]):
            assert name not in order, f"{name} is listed twice"
            order[name] = int(number)
    return order


def test_find_cycle_finds_a_lazy_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_modules_import_each_other_one_way_only() -> None:
    graph = import_graph()
    assert "core.admin" in graph["databases"]  # the graph sees relative imports
    assert "embedded.layout" in graph["embedded.process"]  # and sub-packages
    assert find_cycle(graph) is None


def test_parts_import_only_the_parts_before_them_as_documented() -> None:
    graph = import_graph()
    order = documented_parts()
    assert {part_of(m) for m in graph} == set(order), "every part is documented, and only those"
    against = sorted(
        f"{module} ({part_of(module)}) imports {dep} ({part_of(dep)})"
        for module, deps in graph.items()
        for dep in deps
        if part_of(dep) != part_of(module) and order[part_of(dep)] >= order[part_of(module)]
    )
    assert not against, against


def test_no_module_imports_another_parts_private_names() -> None:
    reaching = sorted(
        f"{name} imports {target}.{imported}"
        for name, path in modules().items()
        for target, names in imports_of(path, name)
        for imported in names
        if imported.startswith("_") and part_of(target) != part_of(name)
    )
    assert not reaching, reaching


def test_few_top_level_modules_and_small_modules() -> None:
    top_level = [p for p in PACKAGE.glob("*.py")]
    assert len(top_level) <= 10, [p.name for p in top_level]
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {name: n for name, n in sizes.items() if n > 500}


#: Issue 19 asked for under 7,000 lines; the package went from 9,412 (with the isolation and trust
#: issues in) to 7,190, and the last ~190 were not found without dropping a guard or an error
#: message (docs/architecture.md, "Sizes"). The ceiling only ever goes down.
LINE_CEILING = 7_200


def test_the_package_stays_under_its_line_ceiling() -> None:
    total = sum(len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py"))
    assert total < LINE_CEILING, total


def test_the_plugins_hooks_and_fixtures_share_state_without_importing_each_other() -> None:
    graph = import_graph()
    assert "plugin.hooks" not in graph["plugin.fixtures"]
    assert "plugin.fixtures" not in graph["plugin.hooks"]
    assert {"plugin.state"} <= graph["plugin.fixtures"] & graph["plugin.hooks"]
