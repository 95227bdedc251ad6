"""The import graph of ``src/mmbalance`` points only down the layer list, and has no cycle.

Every import counts, also those inside functions (they hide cycles as well as top-level
ones do). The order is that of docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "mmbalance"

#: first dotted part below ``mmbalance`` -> layer; a module may import its own layer or lower
LAYERS: Dict[str, int] = {
    "types": 0, "errors": 0, "config": 0, "config_paths": 0, "shapley": 0, "version": 0,
    "models": 1, "losses": 1,
    "methods": 2,
    "engine": 3,
    "data": 4,
    "testing": 5,
    "training": 6,
    "analysis": 7,
    "bench": 8,
    "demo": 9, "cli": 9, "__main__": 9,
}


def module_name(path: Path) -> str:
    parts = ["mmbalance", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{a.name}" for a in node.names)  # `from . import x` names a module
    return {t for t in targets if t in known and t != name}


def graph() -> Dict[str, Set[str]]:
    mods = modules()
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else max(LAYERS.values()) + 1


def upward_edges(edges: Dict[str, Set[str]]) -> List[Tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets if layer(b) > layer(a))


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle through each strongly connected component of more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    unknown = sorted(m for m in modules() if m != "mmbalance" and m.split(".")[1] not in LAYERS)
    assert not unknown, f"modules without a layer (add them to LAYERS): {unknown}"


def test_imports_only_point_down():
    bad = upward_edges(graph())
    assert not bad, "upward imports:\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ re-exporting its own modules is not a cycle of meaning
    for name in edges:
        edges[name] = {t for t in edges[name] if not t.startswith(name + ".")}
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join("  " + " <-> ".join(c) for c in found)
