"""The ekko package's layers: ps (the protocol) imports neither rec (the recommender) nor lab (the measurements),
rec does not import lab, and no two ekko modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import recmine.ekko

ROOT = Path(recmine.ekko.__file__).parent


def _imports() -> dict[str, set[str]]:
    """Module -> the recmine.ekko modules it imports (read from the source, not by importing it)."""
    mods = {}
    for f in ROOT.rglob("*.py"):
        name = ".".join(("recmine", "ekko", *f.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        mods[name] = f
    out: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        out[name] = {d for d in deps if d in mods and d != name and not name.startswith(d + ".")}
    return out


def test_layers_point_one_way():
    for name, deps in _imports().items():
        for layer, banned in (("ps", ("rec", "lab", "cli")), ("rec", ("ps", "lab", "cli")), ("lab", ("cli",))):
            if name.startswith(f"recmine.ekko.{layer}"):
                bad = [d for d in deps if any(d.startswith(f"recmine.ekko.{b}") for b in banned)]
                assert not bad, f"{name} ({layer}) imports {bad}"


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
