"""jhansi: run AI-generated Python locked, checked, sandboxed and recorded.

The public API::

    import jhansi

    result = jhansi.run("script.py", sandbox="demo")      # or jhansi.run(code="...")
    result.status, result.exit_code, result.stdout.data

:func:`run` (see :mod:`jhansi.api`), the request and result types
:class:`RunRequest` and :class:`RunResult`, the :class:`Runner` they go
through, :class:`JhansiError` (the root of everything jhansi refuses, with
``message``, ``hint`` and ``exit_code``) and ``__version__``.

Importing this package is cheap on purpose: the names above are loaded on first
use (``jhansi --version`` and the start of ``jhansi run`` must not pay for the
runner, Typer or Rich), and heavy dependencies (the docker SDK, cyclonedx,
keyring, cryptography, pip-audit, mcp) only on the code paths that need them.
"""

from __future__ import annotations

from jhansi._version import __version__

# Not ``typing.TYPE_CHECKING``: importing typing costs ``jhansi --version`` a few ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from jhansi.api import run
    from jhansi.errors import JhansiError
    from jhansi.request import RunRequest
    from jhansi.result import RunResult
    from jhansi.runner import Runner

__all__ = ["JhansiError", "RunRequest", "RunResult", "Runner", "__version__", "run"]

_LAZY = {
    "run": "jhansi.api",
    "RunRequest": "jhansi.request",
    "RunResult": "jhansi.result",
    "Runner": "jhansi.runner",
    "JhansiError": "jhansi.errors",
}


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jhansi' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
