"""What a script imports, found from its syntax tree: nothing is ever executed.

Found: ``import a.b``, ``from a import b``, and ``importlib.import_module("x")`` /
``__import__("x")`` with a literal name. Left out: relative imports, and imports
under ``if TYPE_CHECKING:`` (they never run). Imports inside ``try:`` blocks that
catch ``ImportError`` (or ``ModuleNotFoundError``) are marked optional: the script
copes without them, so they are reported but not installed unless declared.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})


@dataclass(frozen=True, slots=True)
class ImportSite:
    """One import in the script."""

    module: str
    """The full dotted name (``google.cloud.storage``)."""
    line: int
    optional: bool
    """Inside a ``try`` that catches ``ImportError``."""
    dynamic: bool
    """Through ``importlib.import_module`` or ``__import__``."""
    names: tuple[str, ...] = ()
    """For ``from module import a, b``: ``a`` and ``b`` (they may be submodules of a
    namespace package, ``from google.cloud import storage``)."""

    @property
    def top(self) -> str:
        """The top-level package name (``google``)."""
        return self.module.split(".", 1)[0]


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kind = handler.type
    if kind is None:
        return True  # a bare except catches it too
    names = kind.elts if isinstance(kind, ast.Tuple) else [kind]
    return any(
        (isinstance(n, ast.Name) and n.id in _IMPORT_ERRORS)
        or (isinstance(n, ast.Attribute) and n.attr in _IMPORT_ERRORS)
        or (isinstance(n, ast.Name) and n.id in ("Exception", "BaseException"))
        for n in names
    )


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
        return node.value
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[ImportSite] = []
        self._optional = 0

    def _add(
        self, module: str, line: int, *, dynamic: bool = False, names: tuple[str, ...] = ()
    ) -> None:
        self.found.append(ImportSite(module, line, self._optional > 0, dynamic, names))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            names = tuple(a.name for a in node.names if a.name != "*")
            self._add(node.module, node.lineno, names=names)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        optional = any(_catches_import_error(h) for h in node.handlers)
        self._optional += optional
        for child in node.body:
            self.visit(child)
        self._optional -= optional
        for handler in node.handlers:
            self.visit(handler)
        for child in [*node.orelse, *node.finalbody]:
            self.visit(child)

    visit_TryStar = visit_Try  # type: ignore[assignment]  # same shape since 3.11

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        is_import_module = (
            isinstance(func, ast.Attribute)
            and func.attr == "import_module"
            and isinstance(func.value, ast.Name)
            and func.value.id == "importlib"
        ) or (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))
        if is_import_module and node.args:
            name = _literal(node.args[0])
            if name and not name.startswith("."):
                self._add(name, node.lineno, dynamic=True)
        self.generic_visit(node)


def scan_imports(source: str, filename: str = "<script>") -> list[ImportSite]:
    """Every import in ``source``, in order (raises :class:`SyntaxError` as ``ast`` does)."""
    scanner = _Scanner()
    scanner.visit(ast.parse(source, filename=filename))
    return scanner.found
