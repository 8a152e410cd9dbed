"""``jhansi doctor``."""

from __future__ import annotations

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState
from jhansi.errors import ExitCode


def doctor(
    ctx: typer.Context,
    json_output: JsonFlag = False,
) -> None:
    """Show what jhansi can use here and how to fix what it cannot.

    Checks the sandbox backends (bubblewrap, a Docker or Podman engine), uv and the
    data directory. Exits 4 when no sandbox backend is usable.
    """
    from jhansi.cli._output import print_json, stdout_console
    from jhansi.config import load_settings
    from jhansi.doctor import diagnose

    ctx.ensure_object(CliState).json = json_output
    report = diagnose(load_settings())
    if json_output:
        print_json(
            {
                "status": "ok" if report.ok else "unusable",
                "usable_backends": list(report.usable_backends),
                "checks": [
                    {
                        "name": c.name,
                        "ok": c.ok,
                        "detail": c.detail,
                        "hint": c.hint,
                        "backend": c.backend,
                    }
                    for c in report.checks
                ],
            }
        )
    else:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="jhansi doctor", title_justify="left")
        table.add_column("check")
        table.add_column("")
        table.add_column("details", overflow="fold")
        table.add_column("fix", overflow="fold")
        for c in report.checks:
            mark = "[green]ok[/]" if c.ok else "[red]no[/]"
            table.add_row(c.name, mark, escape(c.detail), escape(c.hint))
        console = stdout_console()
        console.print(table)
        if report.ok:
            console.print("usable sandbox backends: " + ", ".join(report.usable_backends))
        else:
            console.print("[red]no sandbox backend is usable[/]: follow a fix above.")
    if not report.ok:
        raise typer.Exit(int(ExitCode.SANDBOX))
