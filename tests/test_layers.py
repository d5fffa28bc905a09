"""The package's import graph: no cycles, and the functional layer stands on nothing above it.

The modules are parsed with ``ast``, not imported. Every ``import`` and ``from ... import`` counts,
at a module's top or inside a function: a lazy import still makes the two modules depend on each
other. Importing a package counts as importing its ``__init__``; ``from package import name`` counts
as importing the submodule ``name`` where there is one.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = "stain_transforms"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
# What the functional layer may import from the package, besides itself.
FUNCTIONAL_MAY_IMPORT = (f"{PACKAGE}._kernels",)


def module_name(path: Path) -> str:
    parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py")) if "_weights" not in path.parts}


def imports(name: str) -> list[tuple[str, int]]:
    """The package modules that module ``name`` imports, as dotted names, with the line of each import."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule if submodule in MODULES else source, node.lineno))
    return [(target, line) for target, line in found if target == PACKAGE or target.startswith(PACKAGE + ".")]


def known_module(dotted: str) -> str:
    """The module a dotted import name loads last: itself, or the longest package or module it starts with."""
    while dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module: line of the import}."""
    graph: dict[str, dict[str, int]] = {}
    for name in MODULES:
        edges = graph.setdefault(name, {})
        for target, line in imports(name):
            target = known_module(target)
            if target != name:
                edges.setdefault(target, line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as a path ``[a, b, ..., a]``, or ``None``."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in graph[node]:
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in graph:
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_the_graph_sees_the_imports() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.transform" in graph[PACKAGE]  # from .transform import StainTransform
    assert f"{PACKAGE}.normalizers.normalizer" in graph[f"{PACKAGE}.normalizers.reinhard"]  # a relative import
    assert f"{PACKAGE}.registry" in graph[f"{PACKAGE}.cli"]


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} imports {b} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
        raise AssertionError("import cycle:\n  " + "\n  ".join(steps))


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def imports_from_outside(layer: str, allowed: tuple[str, ...]) -> list[str]:
    """Imports by the modules of ``layer`` of package modules outside ``layer`` and ``allowed``."""
    inside = lambda name, prefix: name == prefix or name.startswith(prefix + ".")
    return [
        f"{name} imports {target} (line {line})"
        for name in MODULES
        if inside(name, layer)
        for target, line in imports(name)
        if not any(inside(target, prefix) for prefix in (layer, *allowed))
    ]


def test_functional_imports_nothing_above_it() -> None:
    outside = imports_from_outside(f"{PACKAGE}.functional", FUNCTIONAL_MAY_IMPORT)
    assert not outside, "stain_transforms.functional must import only itself and _kernels:\n  " + "\n  ".join(outside)


def test_kernels_are_the_bottom_layer() -> None:
    outside = imports_from_outside(f"{PACKAGE}._kernels", ())
    assert not outside, "stain_transforms._kernels must import nothing else of the package:\n  " + "\n  ".join(outside)
