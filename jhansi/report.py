"""How the library tells its caller what is happening, without printing anything itself.

The runner and its steps call a :class:`Reporter` they are handed. The CLI's
reporter draws with Rich (or stays quiet under ``--json``); the MCP server and
the Python API pass their own, or :class:`NullReporter`.
"""

from __future__ import annotations

from typing import Literal, Protocol

Stream = Literal["stdout", "stderr"]


class Reporter(Protocol):
    """Receives progress, warnings and the sandbox's live output."""

    def step(self, name: str, detail: str = "") -> None:
        """A step of the run has started (``detail`` says what it is doing)."""

    def warning(self, message: str) -> None:
        """Something the user should know that does not stop the run."""

    def progress(self, task: str, done: int, total: int | None) -> None:
        """Progress of a slow task (downloads, installs); ``total`` may be unknown."""

    def output(self, stream: Stream, data: bytes) -> None:
        """A chunk the sandboxed script wrote, as it arrives."""


class NullReporter:
    """A reporter that drops everything (library use, tests)."""

    def step(self, name: str, detail: str = "") -> None:
        """Ignored."""

    def warning(self, message: str) -> None:
        """Ignored."""

    def progress(self, task: str, done: int, total: int | None) -> None:
        """Ignored."""

    def output(self, stream: Stream, data: bytes) -> None:
        """Ignored."""
