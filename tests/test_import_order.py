"""The package's modules import each other one way only: no cycle, counting the imports inside
functions too (a lazy import is still a dependency). docs/architecture.md lists the order."""

from __future__ import annotations

import ast
from pathlib import Path

import finreport_testdb

PACKAGE = Path(finreport_testdb.__file__).parent


def package_imports(path: Path) -> set[str]:
    """The sibling modules `path` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("finreport_testdb."):
                found.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("finreport_testdb."):
                    found.add(alias.name.split(".")[1])
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: package_imports(path) & set(modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path `a -> b -> ... -> a`, else None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
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


def test_find_cycle_finds_a_lazy_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_modules_import_each_other_one_way_only() -> None:
    graph = import_graph()
    assert "errors" in graph and "manager" in graph["plugin"]
    assert find_cycle(graph) is None


def test_plugin_and_fixtures_do_not_import_each_other() -> None:
    graph = import_graph()
    assert "plugin" not in graph["fixtures"] and "fixtures" not in graph["plugin"]
    assert "plugin_state" in graph["fixtures"] and "plugin_state" in graph["plugin"]
