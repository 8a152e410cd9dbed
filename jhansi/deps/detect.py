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


def _import_module_name(node: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module("x")`` / ``__import__("x")``."""
    func = node.func
    is_import_module = (
        isinstance(func, ast.Attribute)
        and func.attr == "import_module"
        and isinstance(func.value, ast.Name)
        and func.value.id == "importlib"
    ) or (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))
    if not (is_import_module and node.args):
        return None
    name = _literal(node.args[0])
    return name if name and not name.startswith(".") else None


def _walk(tree: ast.AST) -> list[ImportSite]:
    """The imports under ``tree`` in source order, with an explicit stack.

    Not a recursive :class:`ast.NodeVisitor`: a valid script whose expressions nest
    a few hundred deep (``x = 1 + 1 + ... + 1``) would exhaust Python's recursion
    limit in the host process. Here depth costs list entries, not stack frames.
    """
    found: list[ImportSite] = []
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, optional = stack.pop()
        children: list[tuple[ast.AST, bool]]
        if isinstance(node, ast.Import):
            found += [ImportSite(a.name, node.lineno, optional, False) for a in node.names]
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names = tuple(a.name for a in node.names if a.name != "*")
                found.append(ImportSite(node.module, node.lineno, optional, False, names))
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = [(child, optional) for child in node.orelse]
        elif isinstance(node, ast.Try | ast.TryStar):
            catches = optional or any(_catches_import_error(h) for h in node.handlers)
            children = [(child, catches) for child in node.body]
            children += [(h, optional) for h in node.handlers]
            children += [(child, optional) for child in [*node.orelse, *node.finalbody]]
        else:
            if isinstance(node, ast.Call):
                name = _import_module_name(node)
                if name:
                    found.append(ImportSite(name, node.lineno, optional, True))
            children = [(child, optional) for child in ast.iter_child_nodes(node)]
        stack.extend(reversed(children))
    return found


def scan_imports(source: str, filename: str = "<script>") -> list[ImportSite]:
    """Every import in ``source``, in order (raises :class:`SyntaxError` as ``ast`` does)."""
    return _walk(ast.parse(source, filename=filename))
