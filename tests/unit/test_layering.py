"""The package's import graph: no cycle, and every arrow points down the layering below (stdlib ``ast``).

Every ``import`` counts, at module level or inside a function, so a deferred import is no way around it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tunesmith"

LAYERS: list[tuple[str, ...]] = [
    ("tunesmith",),  # the package root: __version__ only
    ("errors",),
    ("io", "faults"),  # faults: test-only fault-injection points (the crash tests)
    ("schema",),  # the Strict base of every config section
    ("objective",),  # objective and grader schemas
    ("config",),
    ("models",),  # loading, memory planning
    ("infer",),  # batching, token losses, generation, label scoring: below train, evaluate and serve
    ("data",),  # formats, rendering, preparation, hygiene tools
    ("rag",),  # chunking, BM25 index, the retrieval prompt, RAFT rows
    ("runs",),  # the run directory: paths, files, typed Summary, loader registry
    ("report",),  # plots and report.html, read from a run directory
    ("methods",),  # prepare / save / load a model per method
    ("train", "evaluate", "tracking"),  # siblings: the loop, the metrics, the trackers (MLflow, TensorBoard)
    ("pipelines",),  # one Pipeline shape, run kinds by name
    ("api",),
    ("jobs", "sweep", "plan"),  # the API's jobs (served by serve/); sweeps (Optuna); model-selection plans
    ("serve", "export", "demo"),  # faces
    ("ui",),  # the web app: mounts its routes on serve's app
    ("cli",),  # tunesmith/cli.py and every package's cli.py: parse, call the API, print
]
"""Lowest first. A module may import its own package and anything in a lower layer; packages that share a
layer may not import each other."""

RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer_of(module: str) -> str:
    """``tunesmith.evaluate.runner`` -> ``evaluate``; any ``*.cli`` module is a face (``cli``)."""
    parts = module.split(".")
    if parts[-1] == "cli":
        return "cli"
    return parts[1] if len(parts) > 1 else "tunesmith"


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the tunesmith modules it imports (``from pkg import submodule`` points at the submodule)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _graph() -> dict[str, set[str]]:
    return _imports({_module_name(p): p for p in PACKAGE.rglob("*.py")})


def test_every_package_has_a_layer():
    unknown = {_layer_of(m) for m in _graph()} - RANK.keys()
    assert not unknown, f"add these packages to LAYERS: {sorted(unknown)}"


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        src = _layer_of(module)
        for target in targets:
            dst = _layer_of(target)
            if dst != src and RANK[dst] >= RANK[src]:
                wrong.append(f"{module} -> {target} ({src} may not import {dst})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
