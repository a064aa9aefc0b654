"""The layers hold: every import in the package, function-level ones included, goes down the layer order or stays
within its layer, and the module graph (all imports as edges) has no cycle, so no import inside a function dodges one.

This is the rule docs/architecture.md states; a lazy import of a heavy dependency (a backend, Ray) is fine, an
import of a higher layer is not, wherever it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmr5_batch"

# Lowest first: a module may import its own layer and the ones before it.
LAYERS = ["errors", "version", "core", "config", "storage", "output", "engines", "stages", "job", "evaluation", "api", "devtools", "cli", "__init__"]
RANK = {"errors": 0, "version": 0, **{name: index for index, name in enumerate(LAYERS) if index >= 2}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_imports(path: Path) -> list[tuple[str, int]]:
    """Every mmr5_batch module `path` imports, anywhere in it (top level, functions, TYPE_CHECKING blocks), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("mmr5_batch")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("mmr5_batch"):
            if node.module == "mmr5_batch":
                found += [(f"mmr5_batch.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((node.module, node.lineno))
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_known_layer():
    assert {layer_of(module) for module in MODULES} <= set(RANK)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_goes_up_a_layer(module):
    own = layer_of(module)
    upward = [
        f"{module} (line {line}) imports {target}: layer {layer_of(target)!r} is above {own!r}"
        for target, line in package_imports(MODULES[module])
        if RANK[layer_of(target)] > RANK[own]
    ]
    assert not upward, "\n".join(upward)


def test_the_module_graph_has_no_cycle():
    graph = {module: {target for target, _ in package_imports(path) if target in MODULES and target != module} for module, path in MODULES.items()}
    # The package's own __init__ is a facade over everything, and importing a submodule runs it first: not an edge.
    graph = {module: targets - {"mmr5_batch"} for module, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
