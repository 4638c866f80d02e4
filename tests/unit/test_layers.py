"""One direction of arrows (issue 15): the application on top, then saga,
services and analytics, then the messaging kernel, then schemas.

The imports are read with ``ast`` (module-level and inside functions), so the
test sees the arrows a lazy import hides. It fails on an arrow that runs back up
(or sideways between saga, analytics and the services), and on a cycle between
modules or between packages.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("checkout_saga", "messaging", "saga", "services", "analytics", "schemas")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` lands in: itself, or the closest package above."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _base(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = importer if is_package else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(importer: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, importer, path.name == "__init__.py")
            # `from pkg import mod` is an arrow to pkg.mod when that is a module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != importer:
                yield resolved


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: set(imports_of(name, path, modules)) for name, path in modules.items()}


def layer(module: str) -> str:
    """application, saga, services.<name>, analytics, kernel or schemas."""
    top = module.split(".")[0]
    if top == "checkout_saga":
        return "application"
    if top == "messaging":
        return "kernel"
    if top == "services" and module.count("."):
        return ".".join(module.split(".")[:2])
    return top


def allowed(source: str, target: str) -> bool:
    """Whether an arrow from layer ``source`` to layer ``target`` runs down or sideways."""
    if source == target or source == "application":
        return True
    if source == "schemas":
        return False
    if source == "kernel":
        return target == "schemas"
    # saga, analytics and each service: the kernel and schemas only, no sibling.
    return target in ("kernel", "schemas")


def back_arrows(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(source, target) for source, targets in graph.items() for target in targets
            if not allowed(layer(source), layer(target))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph with each module folded into its package (``checkout_saga.cli``,
    ``checkout_saga``, ``services.inventory``, ...)."""
    modules = project_modules()

    def package(module: str) -> str:
        return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]

    folded: dict[str, set[str]] = {package(module): set() for module in graph}
    for source, targets in graph.items():
        folded[package(source)] |= {package(target) for target in targets} - {package(source)}
    return folded


def test_no_import_cycle_between_packages() -> None:
    assert cycles(package_graph(import_graph())) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_no_arrow_runs_back_up() -> None:
    assert sorted(back_arrows(import_graph())) == []


def test_the_checks_see_a_cycle_and_a_back_arrow() -> None:
    graph = {"schemas.a": {"messaging.kafka"}, "messaging.kafka": {"schemas.a"}}
    assert cycles(graph) == [["messaging.kafka", "schemas.a"]]
    assert back_arrows(graph) == {("schemas.a", "messaging.kafka")}


def test_the_package_fold_keeps_a_cycle_through_two_modules() -> None:
    graph = {"checkout_saga.dev.bench": {"checkout_saga.runtime"},
             "checkout_saga.runtime": {"checkout_saga.dev.demo"}, "checkout_saga.dev.demo": set()}
    assert cycles(package_graph(graph)) == [["checkout_saga", "checkout_saga.dev"]]
