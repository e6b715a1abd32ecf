"""The fsmde_core import graph: module-level imports form a DAG, and layers point one way.

A module-level import cycle works only as long as nobody reorders a file, and
makes "which module owns this" impossible to answer; lazy imports inside
functions are the sanctioned way to reach an optional heavy dependency, so
only top-level statements (including ``if``/``try`` blocks at top level) count.
The graph is read with ``ast`` from the sources, so nothing is imported and
the test cannot be fooled by what happens to be in ``sys.modules``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "fsmde_core"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path) -> str:
    """``fsmde_core/runtime/base.py -> fsmde_core.runtime.base``; a package is its ``__init__``."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _top_level_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import time: the body and the blocks of top-level if/try/with (not defs)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _top_level_statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [s for h in node.handlers for s in h.body]
            yield from _top_level_statements(node.body + handlers + node.orelse + node.finalbody)
        elif isinstance(node, ast.With):
            yield from _top_level_statements(node.body)


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def imported_modules(module: str, path: Path, modules: dict[str, Path], lazy: bool = False) -> set[str]:
    """fsmde_core modules that ``module`` imports (module level only unless ``lazy``).

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a
    module, else ``pkg`` itself; importing ``a.b.c`` also runs ``a`` and ``a.b``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    statements = ast.walk(tree) if lazy else _top_level_statements(tree.body)
    found: set[str] = set()
    for node in statements:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(module, path.name == "__init__.py", node.level, node.module)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    deps: set[str] = set()
    for name in found:
        parts = name.split(".")
        deps.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules)
    deps.discard(module)
    # A module's own parent packages run before it anyway; that edge is not a choice the module made.
    return {d for d in deps if not module.startswith(d + ".")}


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(name, path, modules, lazy) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]`` (depth-first search with colours), or None for a DAG."""
    colour: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if start not in colour and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 30
    assert "fsmde_core.runtime.base" in graph["fsmde_core.runtime.tensorrt_backend"]
    assert "fsmde_core.metrics" in graph["fsmde_core.evaluate"]
    # lazy (function-level) imports are left out at module level and seen with lazy=True
    assert "fsmde_core.checkpoint" not in graph["fsmde_core.export"]
    assert "fsmde_core.checkpoint" in import_graph(lazy=True)["fsmde_core.export"]


def test_find_cycle_finds_one_and_passes_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_module_level_imports_form_a_dag() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("fsmde_core.runtime", "fsmde_core.export"),  # export builds on the runtime, never the reverse
        ("fsmde_core.metrics", "fsmde_core.evaluate"),  # pure metrics know no loop, bag or CLI
        ("fsmde_core.metrics", "fsmde_core.predictors"),
        ("fsmde_core.predictors", "fsmde_core.evaluate"),
    ],
)
def test_layers_point_one_way_even_lazily(lower: str, upper: str) -> None:
    """Not even a function-level import from a lower layer into a higher one (the old export<->TensorRT loop)."""
    graph = import_graph(lazy=True)
    offenders = {
        name: sorted(d for d in deps if d == upper or d.startswith(upper + "."))
        for name, deps in graph.items()
        if name == lower or name.startswith(lower + ".")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_metrics_need_no_torch() -> None:
    """The node's calibration-health check and the trainer import the metrics; they must stay numpy-only."""
    tree = ast.parse((ROOT / "metrics.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] == "torch"}
