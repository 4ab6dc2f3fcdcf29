"""The training package is laid out in floors: no module imports one that imports it back, not even
through an import placed inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (anywhere in its body)."""
    root = REPO / package
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
                    break
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_training_has_no_import_cycle() -> None:
    graph = import_graph("training")
    assert "training.train" in graph and "training.metrics" in graph["training.train"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# the service's floors, top to bottom: a module may import its own floor or one below, never one above
SERVICE_FLOORS = ["service.api", "service.serving", "service.pipeline", "service.runtime"]


def floor_of(module: str) -> int:
    """The floor index of a service module; modules outside the floors (errors, settings) sit below them all."""
    return next((i for i, f in enumerate(SERVICE_FLOORS) if module == f or module.startswith(f + ".")), 99)


def packages_imported(package: str) -> dict[str, set[str]]:
    """Module of `package` -> the top-level packages it imports (anywhere in its body)."""
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
        found[str(path.relative_to(REPO))] = names
    return found


@pytest.mark.parametrize(
    ("package", "above"),
    [
        ("service", {"emoserve_cli", "training"}),
        ("training", {"emoserve_cli", "service"}),
        ("model_store", {"emoserve_cli", "service", "training", "emoserve_client"}),
        ("clients/python/emoserve_client", {"emoserve_cli", "service", "training", "model_store"}),
    ],
)
def test_no_package_imports_a_layer_above_it(package: str, above: set[str]) -> None:
    """The command line sits on top; the service and the training job beside each other; the model store
    and the SDK at the bottom, each on its own."""
    offending = {module: sorted(names & above) for module, names in packages_imported(package).items() if names & above}
    assert offending == {}


def test_service_imports_run_one_way() -> None:
    graph = import_graph("service")
    assert "service.serving.dataplane" in graph and "service.serving.keys" in graph["service.serving.dataplane"]
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if floor_of(target) < floor_of(module)
    )
    assert upward == []


def test_the_floor_check_sees_an_upward_import() -> None:
    assert floor_of("service.pipeline.analyze") > floor_of("service.api.app")
    assert floor_of("service.errors") > floor_of("service.runtime.sessions")
