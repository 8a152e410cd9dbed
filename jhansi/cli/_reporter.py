"""The CLI's reporter: the script's output as it comes, jhansi's own lines on stderr."""

from __future__ import annotations

import sys

from jhansi.report import Stream


def _one_line(text: str) -> str:
    from jhansi.ledger.read import one_line  # not at import: the CLI's start stays light

    return one_line(text)


class ConsoleReporter:
    """Streams the sandbox's output to the terminal; jhansi's lines go to stderr, dimmed.

    Under ``--json`` (``quiet_output``) the script's output is not streamed: stdout
    carries exactly one JSON document, and the output is inside it.
    """

    def __init__(self, *, quiet: bool = False, quiet_output: bool = False) -> None:
        self.quiet = quiet
        self.quiet_output = quiet_output
        self._color = sys.stderr.isatty()

    def _line(self, text: str) -> None:
        text = _one_line(text)  # a name or reason the script chose may hold anything
        if self._color:
            sys.stderr.write(f"\x1b[2mjhansi: {text}\x1b[0m\n")
        else:
            sys.stderr.write(f"jhansi: {text}\n")
        sys.stderr.flush()

    def step(self, name: str, detail: str = "") -> None:
        """One line per step, unless quiet."""
        if not self.quiet:
            self._line(f"{name}: {detail}" if detail else name)

    def warning(self, message: str) -> None:
        """Warnings are shown even when quiet; each is one line, control characters
        (newlines, ESC, BEL, C1, bidirectional overrides) escaped: it may quote a name
        or link target a script chose."""
        message = _one_line(message)
        if self._color:
            sys.stderr.write(f"\x1b[33mjhansi: warning: {message}\x1b[0m\n")
        else:
            sys.stderr.write(f"jhansi: warning: {message}\n")
        sys.stderr.flush()

    def progress(self, task: str, done: int, total: int | None) -> None:
        """A one-line progress indicator on a terminal; nothing otherwise."""
        if self.quiet or not self._color:
            return
        shown = f"{done}/{total}" if total else str(done)
        sys.stderr.write(f"\r\x1b[2mjhansi: {task} {shown}\x1b[0m\x1b[K")
        if total is not None and done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def output(self, stream: Stream, data: bytes) -> None:
        """The script's bytes, unchanged, to the same stream it wrote them to."""
        if self.quiet_output:
            return
        target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        target.write(data)
        target.flush()
