"""The shape of the code, checked from the source: the import graph between subpackages is a
DAG with the layers STYLE.md names, and no module outgrows one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the import package it is (pyproject's package-dir)
PACKAGE_DIRS = {"core": "loraserve", "kernels": "loraserve.kernels", "plugins": "loraserve.plugins"}
RUNTIME_MODULE_MAX_LINES = 400
RESOLVER_MODULE_MAX_LINES = 150
# what each subpackage may import from the others (root modules such as loraserve.errors are
# shared by all); a lower layer never reaches up
ALLOWED = {
    "kernels": set(),
    "model": {"kernels"},
    "lora": {"model", "kernels"},
    "plugins": {"lora"},
    "resolution": {"lora", "plugins"},
    "engine": {"lora", "resolution", "model", "kernels", "plugins"},
    # the command line finds loraserve.distributed by name (cli.RAY_SERVE_MODULE), never imports it
    "entrypoints": {"engine", "lora", "resolution", "model", "kernels", "plugins", "demo"},
    "distributed": {"entrypoints", "engine", "lora", "resolution", "model", "kernels", "plugins"},
}
# the only subpackage that may import Ray (the optional loraserve[ray] extra)
RAY_IMPORTERS = {"distributed"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every runtime module of the loraserve package."""
    found = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """Every loraserve module ``module`` imports, at the top or inside a function."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in names if name == "loraserve" or name.startswith("loraserve.")}


def _layer(module: str) -> str:
    """The subpackage a module belongs to ("errors" for the root module loraserve.errors)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "loraserve"


def _subpackage_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(_layer(module), set())
        for target in _imported(module, path, set(modules)):
            if _layer(target) != _layer(module):
                edges.add(_layer(target))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_subpackages():
    graph = _subpackage_graph()
    assert {"engine", "lora", "model", "kernels", "resolution"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_never_reach_up(layer):
    subpackages = {_layer(m) for m, p in _modules().items() if p.name == "__init__.py"}
    reached = _subpackage_graph()[layer] & subpackages
    assert reached <= ALLOWED[layer], f"{layer} imports {sorted(reached - ALLOWED[layer])}"


def test_no_runtime_module_outgrows_one_job():
    too_long = {
        str(path.relative_to(ROOT)): lines
        for module, path in _modules().items()
        if (lines := len(path.read_text().splitlines())) > RUNTIME_MODULE_MAX_LINES
    }
    assert not too_long, f"over {RUNTIME_MODULE_MAX_LINES} lines: {too_long}"


def test_resolver_packages_are_small():
    modules = [p for p in (ROOT / "resolvers").glob("*/loraserve_*/*.py")]
    assert len({p.parent for p in modules}) == 4
    too_long = {
        str(p.relative_to(ROOT)): n
        for p in modules
        if (n := len(p.read_text().splitlines())) >= RESOLVER_MODULE_MAX_LINES
    }
    assert not too_long, f"{RESOLVER_MODULE_MAX_LINES} lines or more: {too_long}"


def test_root_modules_import_no_subpackage():
    """loraserve.errors, .config, .sampling_params...: shared by every layer, so below all."""
    modules = _modules()
    subpackages = {_layer(m) for m, p in modules.items() if p.name == "__init__.py"}
    graph = _subpackage_graph()
    roots = {_layer(m) for m, p in modules.items() if m.count(".") == 1 and p.name != "__init__.py"}
    roots -= subpackages | {"__main__"}
    assert "errors" in roots
    reaching = {root: sorted(graph[root] & subpackages) for root in roots if graph[root] & subpackages}
    assert not reaching, reaching


def test_only_the_distributed_layer_imports_ray():
    importers = set()
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "ray" or name.startswith("ray.") for name in names):
                importers.add(module)
    assert importers, "loraserve.distributed imports ray: the scan is broken"
    assert {_layer(m) for m in importers} <= RAY_IMPORTERS, sorted(importers)


def test_plain_import_and_serve_without_replicas_never_import_ray():
    """``import loraserve`` and ``loraserve serve`` without --num-replicas stay Ray-free."""
    import subprocess
    import sys

    code = ("import sys, loraserve, loraserve.entrypoints.cli as cli, "
            "loraserve.entrypoints.openai.api_server; "
            "cli.parse_args(['serve', 'MODEL', '--enable-lora']); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT.parent, check=True).stdout
    assert out.strip() == "[]", out
