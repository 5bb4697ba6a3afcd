"""The house's layout: no two modules of the project import each other (directly or around a
longer loop, function-level and type-checking imports included), and no module outgrows one
idea (~400 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "variants")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file, ``if TYPE_CHECKING``
    blocks included (two modules that need each other's types share one idea: one module).
    ``from P import x`` names the module P.x where that is a module of the project, else P (a
    name defined in P)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of ``graph`` (as the list of modules around it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return None


def test_the_cycle_finder_finds_a_loop_and_passes_a_tree():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_imports_resolve_to_project_modules():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert "bench.grid.suite" in graph["bench.report.records"]  # from ..suite import ...
    assert "variants.decoders.made" in graph["variants.decoders"]  # from .made import ...
    assert "variants.core" in graph["bench.grid.runner"] or "variants.factory" in graph["bench.grid.runner"]


def test_no_module_imports_itself_around_a_loop():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    loop = _cycle(graph)
    assert loop is None, "import loop: " + " -> ".join(loop)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_module_holds_one_idea(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (split it: one idea per module)"


#: bench's layers, lowest first: a module may import its own layer and those below it, never one
#: above (``bench.cli`` and ``bench.contract`` sit on top of everything).
LAYERS = (
    ("bench.machine", "bench.seeding", "bench.schema", "bench.results"),
    ("bench.data", "bench.config", "bench.checks", "bench.keys", "bench.identity"),
    ("bench.training", "bench.evaluation"),
    ("bench.grid", "bench.throughput"),
    ("bench.report",),
    ("bench.cli", "bench.contract"),
)


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_every_harness_module_has_a_layer():
    assert [m for m in _modules() if m.startswith("bench.") and _layer(m) is None] == []


def test_no_layer_imports_one_above_it():
    modules = _modules()
    upward = [(m, dep) for m, p in modules.items() if m.startswith("bench.")
              for dep in _imports(m, p, modules)
              if dep.startswith("bench.") and _layer(dep) > _layer(m)]
    assert upward == [], f"imports that reach a higher layer: {upward}"
