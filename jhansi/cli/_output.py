"""Rendering shared by the commands: errors, JSON documents, consoles."""

from __future__ import annotations

import json
import sys
import traceback
from typing import TYPE_CHECKING, Any, TextIO

from jhansi.errors import JhansiError

if TYPE_CHECKING:
    from rich.console import Console

    from jhansi.cli._state import CliState
    from jhansi.supply.policy import PolicyReport


#: The width of a console that is not a terminal (a file, a pipe): lines as long as
#: they need to be, so that a log or ``grep`` gets whole lines, not text wrapped at
#: Rich's default of 80 columns. Tables are still as narrow as their content.
UNWRAPPED_WIDTH = 1 << 16


def _width(stream: TextIO) -> int | None:
    """``None`` (Rich decides: the terminal's width, or ``COLUMNS``) unless ``stream``
    is not a terminal and ``COLUMNS`` chooses no width."""
    import os

    if os.environ.get("COLUMNS", "").strip().isdigit():
        return None
    try:
        if stream.isatty():
            return None
    except ValueError:  # closed
        return None
    return UNWRAPPED_WIDTH


def stderr_console() -> Console:
    """The console for progress, warnings and errors (never stdout)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=_width(sys.stderr))


def stdout_console() -> Console:
    """The console for a command's human-readable result."""
    from rich.console import Console

    return Console(highlight=False, width=_width(sys.stdout))


def human_size(size: int) -> str:
    """``size`` bytes for a person to read: ``0 B``, ``512 B``, ``12.3 MiB``.

    Binary units with one decimal (``--json`` keeps the exact bytes).
    """
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} PiB"


def print_json(document: dict[str, Any]) -> None:
    """Print exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def error_fields(exc: JhansiError) -> dict[str, Any]:
    """An error as ``--json`` documents carry it: kind, message, hint, exit code."""
    return {
        "kind": type(exc).__name__,
        "message": exc.message,
        "hint": exc.hint,
        "exit_code": int(exc.exit_code),
    }


def report_error(exc: JhansiError, state: CliState) -> None:
    """Two lines on stderr (what went wrong, what to do); JSON on stdout under ``--json``."""
    if state.debug:
        traceback.print_exception(exc, file=sys.stderr)
    from rich.markup import escape

    console = stderr_console()
    report = getattr(exc, "report", None)
    if report is not None and not state.json:
        print_findings(console, report)
    console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        console.print(f"[bold]hint:[/] {escape(exc.hint)}", soft_wrap=True)
    if state.json:
        print_json(
            {
                "status": "error",
                "error": error_fields(exc),
                **({"policy": report.as_dict()} if report is not None else {}),
            }
        )


def print_findings(console: Any, report: PolicyReport) -> None:
    """The findings as a table on a terminal, else one plain line each (logs, CI)."""
    if console.is_terminal:
        console.print(policy_table(report))
        return
    for finding in (*report.findings, *report.ignored):
        mark = "ignored" if finding.ignored else finding.severity
        package = f" {finding.package} {finding.version}:" if finding.package else ""
        aliases = f" ({', '.join(finding.aliases)})" if finding.aliases else ""
        detail = finding.id + aliases if finding.rule == "vulnerability" else finding.message
        evidence = (
            finding.evidence if len(finding.evidence) <= 120 else finding.evidence[:119] + "…"
        )
        line = f"{mark}:{package} [{finding.rule}] {detail} — {evidence}"
        if finding.ignored:
            line += f" — ignored: {finding.ignored}"
        elif finding.fix:
            line += f" — {finding.fix}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def policy_table(report: PolicyReport) -> Any:
    """A Rich table of the policy's findings: why a run was refused or warned about."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title_justify="left", show_lines=False)
    for column in ("", "package", "rule", "finding", "evidence", "what to do"):
        table.add_column(column, overflow="fold")
    for finding in (*report.findings, *report.ignored):
        mark = (
            "[dim]ignored[/]"
            if finding.ignored
            else ("[bold red]deny[/]" if finding.severity == "deny" else "[yellow]warn[/]")
        )
        package = f"{finding.package} {finding.version}" if finding.package else ""
        evidence = finding.evidence + (f" · ignored: {finding.ignored}" if finding.ignored else "")
        table.add_row(
            mark,
            escape(package),
            finding.rule,
            escape(finding.id if finding.rule == "vulnerability" else finding.message),
            escape(evidence),
            escape(finding.fix),
        )
    return table
