"""The project's packages import each other downward only and in no circle.

Every import statement counts, wherever it stands: at module level, inside a function, under
``if TYPE_CHECKING``. Layers, top to bottom: tools -> export -> calibration -> runtime.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("tools", "export", "calibration", "runtime")  # a package may import those after it


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the layered packages (a package is its __init__)."""
    modules = {}
    for package in LAYERS:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> list[str]:
    """Every name ``module`` imports, absolute (``from .x import y`` gives ``pkg.x.y``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from pkg import name`` counts as importing ``pkg``
    unless ``pkg.name`` is a module)."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in imported_names(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


def test_no_import_cycle(graph):
    assert len(graph) > 40, sorted(graph)  # the walk found the packages
    assert cycles(graph) == []


def test_imports_go_downward_only(graph):
    rank = {package: i for i, package in enumerate(LAYERS)}
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if rank[t.split(".")[0]] < rank[m.split(".")[0]])
    assert upward == []


def test_the_check_sees_every_kind_of_import(tmp_path):
    """A circle through a TYPE_CHECKING import, one through a function-level relative import, and
    a parent package that imports its submodule which imports it back are all found."""
    files = {
        "runtime/__init__.py": "",
        "runtime/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from runtime.b import B\n",
        "runtime/b.py": "import runtime.a\nB = 1\n",
        "runtime/c.py": "def f():\n    from .d import g\n",
        "runtime/d.py": "from runtime import c\n",
        "runtime/pkg/__init__.py": "def opener():\n    from runtime.pkg.leaf import x\n",
        "runtime/pkg/leaf.py": "from runtime.pkg import helper\nx = 1\n",
        "runtime/e.py": "import numpy\nfrom runtime.pkg import leaf\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for package in LAYERS[:-1]:
        (tmp_path / package).mkdir()
    found = cycles(import_graph(project_modules(tmp_path)))
    assert found == [["runtime.a", "runtime.b"], ["runtime.c", "runtime.d"], ["runtime.pkg", "runtime.pkg.leaf"]]
