"""The layers of ARCHITECTURE.md, checked on the source: every import (module level or inside a
function) points down, no module imports itself round a cycle, and the lowest layers stay free
of I/O libraries and SDKs. A new module belongs to the layer of its folder."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# (module prefix, layer, rank): an import may go to a lower rank, or stay inside its own layer.
LAYERS = [
    ("xt_submit.domain", "domain", 0),
    ("xt_submit.node_kit", "node_kit", 1),
    ("xt_submit.ports", "ports", 2),
    ("xt_submit.config", "config", 2),
    ("xt_submit.adapters", "adapters", 3),
    ("xt_submit.handlers", "handlers", 3),
    ("xt_submit.services", "services", 4),
    ("xt_submit.runtime", "runtime", 5),
    ("xt_submit.bootstrap", "bootstrap", 6),
    ("xt_submit.cli", "cli", 7),
    ("xt_submit.entrypoints", "entrypoints", 7),
    ("xt_submit.api", "api", 7),
    ("function_app", "function_app", 7),
]
# What the lowest layers may import from outside XT (the stdlib aside).
ALLOWED_THIRD_PARTY = {
    # regex: pure matching with a timeout (--filter :regex:); optuna: the TPE sampler, pure computation
    # on the results handed in (adaptive_search.py rebuilds its study from them, no storage of its own)
    "domain": {"msgspec", "yaml", "regex", "optuna"},
    "node_kit": {"msgspec", "pathspec"},  # both optional on a node: imported where present
    "ports": set(),
    "handlers": {"msgspec"},
}
NODE_KIT_MAY_IMPORT = {"xt_submit.domain.errors"}  # a box gets node_kit/ and domain/errors.py only


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "handlers":
        parts = ["xt_submit", *parts]  # installed as xt_submit.handlers
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources():
    for top in ("xt_submit", "handlers", "function_app"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield module_name(path), path


def layer_of(module: str):
    for prefix, layer, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer, rank
    return None


def imports_of(module: str, path: Path):
    """Every module this one imports, as absolute names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield (candidate if is_module(candidate) else base), node.lineno


def is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] == "xt_submit" and len(parts) > 1 and parts[1] == "handlers":
        parts = parts[1:]
    rel = Path(*parts)
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


GRAPH = {module: list(imports_of(module, path)) for module, path in sources()}


def ours(name: str) -> bool:
    return name.split(".")[0] in ("xt_submit", "function_app")


def test_every_module_belongs_to_a_layer():
    homeless = [m for m in GRAPH if m != "xt_submit" and layer_of(m) is None]
    assert not homeless, f"modules outside every layer of ARCHITECTURE.md: {homeless}"


def test_imports_point_down_only():
    upward = []
    for module, imported in GRAPH.items():
        here = layer_of(module)
        if here is None:
            continue  # xt_submit/__init__.py: the Run API's lazy re-export
        for name, line in imported:
            if not ours(name) or name == "xt_submit":
                continue
            there = layer_of(name)
            if there is None or there[0] == here[0]:
                continue
            if there[1] >= here[1]:
                upward.append(f"{module}:{line} ({here[0]}) imports {name} ({there[0]})")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_the_node_kit_ships_alone():
    """A box and a Batch node get node_kit/ and domain/errors.py: nothing else of XT may be needed."""
    strays = [f"{m}:{line} imports {name}" for m, imported in GRAPH.items() if m.startswith("xt_submit.node_kit")
              for name, line in imported if ours(name) and name not in NODE_KIT_MAY_IMPORT
              and not name.startswith("xt_submit.node_kit") and name != "xt_submit"]
    assert not strays, strays
    from xt_submit.adapters.nodes import ssh

    shipped = {module_name(ROOT / "xt_submit" / name) for name in ssh._SHIPPED_MODULES}
    needed = {m for m in GRAPH if m.startswith("xt_submit.node_kit")} | NODE_KIT_MAY_IMPORT
    assert needed <= shipped, f"what a box needs but is not shipped: {needed - shipped}"


@pytest.mark.parametrize("layer", sorted(ALLOWED_THIRD_PARTY))
def test_the_inner_layers_use_no_sdk_and_no_io_library(layer):
    stdlib = sys.stdlib_module_names
    found = [f"{m}:{line} imports {name}" for m, imported in GRAPH.items() if layer_of(m) and layer_of(m)[0] == layer
             for name, line in imported if not ours(name) and name.split(".")[0] not in stdlib
             and name.split(".")[0] not in ALLOWED_THIRD_PARTY[layer]]
    assert not found, found


def test_no_import_cycle():
    graph = {m: {n for n, _ in imported if n in GRAPH and n != m} for m, imported in GRAPH.items()}
    # a package's __init__ importing its own modules is not a cycle of layers: drop package -> child edges
    graph = {m: {n for n in targets if not n.startswith(m + ".")} for m, targets in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_only_bootstrap_builds_adapters():
    """Outside the composition root, nothing imports an adapter module (an adapter's own package aside)."""
    builders = {"xt_submit.bootstrap"}
    found = [f"{m}:{line} imports {name}" for m, imported in GRAPH.items()
             if m not in builders and not m.startswith("xt_submit.adapters")
             for name, line in imported if name.startswith("xt_submit.adapters")]
    assert not found, "adapters reached outside bootstrap:\n" + "\n".join(found)
