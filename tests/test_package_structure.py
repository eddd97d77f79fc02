"""The package's shape, read from its source: no module imports another that imports it back
(at any depth, lazy imports included), and no module reaches for another's private names."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "pepperpy_pg_memory"


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Per module, the sibling modules it imports; and every private name imported."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    private: list[tuple[str, str, str]] = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None:  # from . import x
                    graph[path.stem] |= {a.name for a in node.names if a.name in modules}
                    continue
                target = node.module.split(".")[0]
                if target not in modules:
                    continue
                graph[path.stem].add(target)
                private += [
                    (path.stem, target, alias.name)
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "pepperpy_pg_memory."
            ):
                target = (node.module or "").split(".")[1]
                if target in modules:
                    graph[path.stem].add(target)
    return graph, private


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, if it has any."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            found = visit(imported, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return None


def test_the_package_has_no_import_cycles() -> None:
    graph, _ = _imports()
    assert len(graph) > 20  # the walk found the package
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_modules_private_names() -> None:
    _, private = _imports()
    assert private == []
