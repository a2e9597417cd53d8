"""The library's import graph, read from the source: no cycles, and the shared
modules import no stage.

Every ``import`` and ``from ... import`` counts, at module level and inside
functions alike (an import deferred into a function is still a dependency);
relative imports are resolved, and ``from mmalign import x`` is an edge to
``mmalign.x`` when ``x`` is a submodule.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mmalign"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    modules = {}
    for file in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(file.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def imported_names(module: str, file: Path) -> set[str]:
    """Every absolute name ``module`` imports, in full (``a.b`` and, for
    ``from a.b import c``, ``a.b.c`` too: ``c`` may be a submodule)."""
    is_package = file.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # level 1 = this package (a package's own name; a module's parent).
                base = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself excluded)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for module, file in modules.items():
        targets = set()
        for name in imported_names(module, file):
            # The longest prefix that is a module of the package: ``mmalign.geometry.figures.x``
            # is an edge to ``mmalign.geometry.figures``.
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    targets.add(candidate)
                    break
        targets.discard(module)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read_from_every_module() -> None:
    graph = import_graph()
    assert {"mmalign.plotting", "mmalign.layout", "mmalign.geometry"} <= set(graph)
    assert "mmalign.geometry.figures" in graph["mmalign.geometry"]
    assert "mmalign.plotting" in graph["mmalign.geometry.figures"]


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_and_package_imports_resolve(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import leaf\nfrom .sub import thing\n")
    (package / "mod.py").write_text("def f():\n    from .leaf import x\n    from pkg import sub\n")
    assert imported_names("pkg", package / "__init__.py") >= {"pkg.leaf", "pkg.sub.thing"}
    assert imported_names("pkg.mod", package / "mod.py") >= {"pkg.leaf", "pkg.sub"}


def test_the_library_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# Modules every stage may use: they hold no stage's science.
SHARED = {"mmalign.io", "mmalign.layout", "mmalign.logs", "mmalign.seeding"}


def test_plotting_imports_no_stage() -> None:
    stages = import_graph()["mmalign.plotting"] - SHARED
    assert not stages, f"mmalign.plotting imports stage module(s) {sorted(stages)}"


@pytest.mark.parametrize("module", ["mmalign.layout"])
def test_layout_imports_only_the_standard_library(module: str) -> None:
    names = imported_names(module, module_files()[module])
    outside = sorted(
        n for n in names if n.split(".")[0] not in sys.stdlib_module_names and n != "__future__"
    )
    # ``from typing import Any`` also yields "typing.Any"; the root decides.
    assert not outside, f"{module} imports {outside}"
