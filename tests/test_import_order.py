"""The package's modules import each other one way only: no cycle, counting the imports inside
functions too (a lazy import is still a dependency). docs/architecture.md lists the order."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import finreport_testdb

PACKAGE = Path(finreport_testdb.__file__).parent


def module_name(path: Path) -> str:
    """`manager`, `embedded.server`: the dotted name inside the package (a sub-package's
    `__init__` is the sub-package itself; the top-level `__init__` is left out)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_imports(path: Path, name: str) -> set[str]:
    """The package modules `path` imports anywhere (top level, functions, TYPE_CHECKING blocks),
    as dotted names: `from .x import y` counts as `x` and as `x.y` (whichever is a module)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    found: set[str] = set()
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
            found.add(".".join(target))
            found.update(".".join([*target, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("finreport_testdb."):
                    found.add(".".join(alias.name.split(".")[1:]))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}
    return {
        name: (package_imports(path, name) & set(modules)) - {name}
        for name, path in modules.items()
    }


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
    assert "embedded.layout" in graph["embedded.process"]  # the sub-package is walked too
    assert find_cycle(graph) is None


def test_plugin_and_fixtures_do_not_import_each_other() -> None:
    graph = import_graph()
    assert "plugin" not in graph["fixtures"] and "fixtures" not in graph["plugin"]
    assert "plugin_state" in graph["fixtures"] and "plugin_state" in graph["plugin"]


def documented_layers() -> dict[str, int]:
    """docs/architecture.md's "Import order": module -> layer number (1 = imports nothing)."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = text.split("## Import order", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for number, rest in re.findall(r"^(\d+)\. (.+)$", section, flags=re.MULTILINE):
        for name in re.findall(r"`([\w.]+)`", rest.split(" (", 1)[0]):
            assert name not in layers, f"{name} is listed twice"
            layers[name] = int(number)
    return layers


def test_the_documented_import_order_is_true() -> None:
    graph = import_graph()
    layers = documented_layers()
    assert set(layers) == set(graph), (
        f"not listed: {sorted(set(graph) - set(layers))}; "
        f"listed but not modules: {sorted(set(layers) - set(graph))}"
    )
    upward = [
        f"{module} (layer {layers[module]}) imports {dep} (layer {layers[dep]})"
        for module, deps in graph.items()
        for dep in deps
        if layers[dep] >= layers[module]
    ]
    assert not upward, upward


def test_no_package_module_is_over_500_lines() -> None:
    sizes = {
        module_name(path): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")
    }
    assert not {name: n for name, n in sizes.items() if n > 500}
