"""The house rules of the layout (shared/DESIGN.md), read off the source with `ast`: no
import circle between modules, only runtime/ imports Ray, and nothing below the runtime
imports it (only runtime/ and cli.py wire it)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.joinpath("mmotif").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(tree: ast.Module, module_level: bool):
    """Imported names (a `from a import b` yields a and a.b); module level only, or all.
    An `if TYPE_CHECKING:` block imports nothing at run time."""
    nodes = []
    for node in tree.body if module_level else [tree]:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        nodes += ast.walk(node)
    for n in nodes:
        if isinstance(n, ast.Import):
            yield from (a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            yield n.module
            yield from (f"{n.module}.{a.name}" for a in n.names)


def _graph(module_level: bool) -> dict[str, set[str]]:
    mods = _modules()
    graph = defaultdict(set)
    for name, path in mods.items():
        for imported in _imports(ast.parse(path.read_text()), module_level):
            graph[name].add(imported)
    return graph


def _cycles(graph: dict[str, set[str]], nodes: set[str]) -> list[list[str]]:
    state, found = {}, []

    def visit(u, stack):
        state[u] = "open"
        stack.append(u)
        for v in sorted(set(graph.get(u, ())) & nodes):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = "done"

    for u in sorted(nodes):
        if u not in state:
            visit(u, [])
    return found


def test_no_import_circle_between_modules():
    assert _cycles(_graph(module_level=True), set(_modules())) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"a", "b", "c"}) == [["a", "b", "c", "a"]]


def test_only_runtime_imports_ray():
    outside = sorted(name for name, imported in _graph(module_level=False).items()
                     if not name.startswith("mmotif.runtime")
                     and any(i == "ray" or i.startswith("ray.") for i in imported))
    assert outside == [], f"Ray imported outside runtime/: {outside}"


def test_the_cores_do_not_import_the_runtime():
    wiring = ("mmotif.runtime", "mmotif.cli")
    upward = sorted((name, i) for name, imported in _graph(module_level=False).items()
                    if not name.startswith(wiring) for i in imported if i.startswith("mmotif.runtime"))
    assert upward == [], f"modules below the runtime import it: {upward}"
