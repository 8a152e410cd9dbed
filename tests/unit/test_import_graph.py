"""No import circle between jhansi's modules (STYLE.md 12: arrows point down).

Every import counts: at module level, inside a function (imported late for start-up
time) and under ``TYPE_CHECKING``. A circle the interpreter never trips over is
still one for the reader, and the next module-level import makes it real.
``from pkg import name`` imports the package ``pkg`` and, when ``name`` is a module,
``pkg.name``; an import counts for the nearest module it names
(``jhansi.cli.run.finish`` is ``jhansi.cli.run``).
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path
from textwrap import dedent

import pytest

import jhansi

#: module -> {module it imports: where (``path:line``, the first such import)}
Graph = dict[str, dict[str, str]]


def _modules(root: Path) -> dict[str, Path]:
    """The modules of the package at ``root``, by dotted name."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _named(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The dotted names an import statement imports (``package``: the one it is in)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = package
        for _ in range(node.level - 1):
            anchor = anchor.rpartition(".")[0]
        base = f"{anchor}.{node.module}" if node.module else anchor
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(root: Path) -> Graph:
    """Which of its own modules each module of the package at ``root`` imports."""
    known = _modules(root)
    graph: Graph = {name: {} for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        where = path.relative_to(root.parent)
        tree = ast.parse(path.read_bytes(), filename=str(path))
        statements = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        for node in sorted(statements, key=lambda n: n.lineno):
            for target in _named(node, package):
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].setdefault(target, f"{where}:{node.lineno}")
    return graph


def _components(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def circles(graph: Graph) -> list[str]:
    """Each circle, as the shortest way round from its first module, with where each
    import is: ``a -> b (a.py:3) -> a (b.py:9)``; several tangled circles are one
    component, shown by one of its circles and the modules it holds."""
    shown = []
    for component in _components(graph):
        start = component[0]
        inside = set(component)
        paths = {target: [start, target] for target in graph[start] if target in inside}
        queue = list(paths)
        while start not in paths:  # breadth first: the shortest way back to start
            node = queue.pop(0)
            for target in graph[node]:
                if target in inside and target not in paths:
                    paths[target] = [*paths[node], target]
                    queue.append(target)
        path = paths[start]
        line = path[0] + "".join(f" -> {b} ({graph[a][b]})" for a, b in pairwise(path))
        shown.append(f"{line}  [{len(component)} modules: {', '.join(component)}]")
    return shown


def test_no_import_circle_between_jhansi_modules() -> None:
    found = circles(import_graph(Path(jhansi.__file__).parent))
    assert not found, (
        "import circles between jhansi's modules; move what both need to the layer that "
        "makes it (types and results down, composition up, STYLE.md 12):\n" + "\n".join(found)
    )


def test_the_walk_counts_late_and_type_checking_imports_in_jhansi() -> None:
    """The test above walks the real package, not an empty graph."""
    graph = import_graph(Path(jhansi.__file__).parent)
    assert len(graph) > 50
    assert "jhansi.records" in graph["jhansi.runner.pipeline"]  # inside a method
    assert "jhansi.result" in graph["jhansi.records"]  # under TYPE_CHECKING
    assert "jhansi.cli._fastpath" in graph["jhansi.cli"]  # the package's own __init__


def _package(root: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``root`` with ``files`` (relative path -> source)."""
    for name, source in {"__init__.py": "", **files}.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(source))
    return root / "pkg"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"a.py": "import pkg.b\n", "b.py": "def f():\n    from pkg.a import g\n"},
            "pkg.a -> pkg.b (pkg/a.py:1) -> pkg.a (pkg/b.py:2)",
            id="inside-a-function",
        ),
        pytest.param(
            {
                "a.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.b import B\n",
                "b.py": "from pkg.a import A\n",
            },
            "pkg.a -> pkg.b (pkg/a.py:3) -> pkg.a (pkg/b.py:1)",
            id="under-type-checking",
        ),
        pytest.param(
            {
                "sub/__init__.py": "",
                "sub/a.py": "from ..b import x\n",
                "b.py": "from .sub import a\n",
            },
            "pkg.b -> pkg.sub.a (pkg/b.py:1) -> pkg.b (pkg/sub/a.py:1)",
            id="relative",
        ),
        pytest.param(
            {"__init__.py": "from pkg.app import main\n", "app.py": "from pkg import util\n"},
            "pkg -> pkg.app (pkg/__init__.py:1) -> pkg (pkg/app.py:1)",
            id="child-imports-its-package",
        ),
    ],
)
def test_a_circle_is_found_and_named(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    found = circles(import_graph(_package(tmp_path, files)))
    assert len(found) == 1, found
    assert found[0].startswith(expected + "  ["), found


def test_tangled_circles_are_one_component(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "import pkg.b\nimport pkg.c\n",
            "b.py": "import pkg.a\n",
            "c.py": "import pkg.a\n",
        },
    )
    assert circles(import_graph(root)) == [
        "pkg.a -> pkg.b (pkg/a.py:1) -> pkg.a (pkg/b.py:1)  [3 modules: pkg.a, pkg.b, pkg.c]"
    ]


def test_imports_that_point_down_are_no_circle(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "from pkg.app import main\n",
            "app.py": "import os\nfrom pkg.types import Result\nimport pkg.store\n",
            "store.py": "from pkg.types import Result\n",
            "types.py": "import json\nfrom jhansi import errors\n",
        },
    )
    graph = import_graph(root)
    assert graph == {
        "pkg": {"pkg.app": "pkg/__init__.py:1"},
        "pkg.app": {"pkg.types": "pkg/app.py:2", "pkg.store": "pkg/app.py:3"},
        "pkg.store": {"pkg.types": "pkg/store.py:1"},
        "pkg.types": {},
    }
    assert circles(graph) == []
