"""``jhansi config``: the effective settings and where each came from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState

app = typer.Typer(help="Inspect jhansi's configuration.", no_args_is_help=True)


@app.command()
def show(
    ctx: typer.Context,
    project: Annotated[
        Path | None,
        typer.Option(
            "--project",
            help="Read the project configuration for this directory (default: the current one).",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Print the effective settings and, for each, where its value came from."""
    from jhansi.cli._output import print_json, stdout_console
    from jhansi.config import display, format_size, load_settings

    ctx.ensure_object(CliState).json = json_output
    # An untrusted project file is shown, not refused: what it sets that needs trust
    # is listed as left out, with why, and the effective values are those without it.
    settings = load_settings(start=project, strict=False)
    values = settings.as_dict()
    refused = [{"file": str(r.file), "key": r.key, "reason": r.reason} for r in settings.refused]
    if json_output:
        print_json(
            {
                "status": "ok",
                "settings": settings.as_json(),
                "sources": dict(settings.sources),
                "files": [str(f) for f in settings.files],
                "config": [f.as_record() for f in settings.provenance],
                "refused": refused,
            }
        )
        return
    from rich.markup import escape
    from rich.table import Table

    size_keys = {"memory", "tmp_size", "output_limit"}
    table = Table(title="effective settings", title_justify="left")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold")
    for section, keys in values.items():
        for key, value in keys.items():
            if key in size_keys and isinstance(value, int):
                shown = format_size(value)
            else:
                shown = display(value)
            table.add_row(
                f"{section}.{key}", escape(shown), escape(settings.sources[f"{section}.{key}"])
            )
    console = stdout_console()
    console.print(table)
    if settings.refused:
        console.print("[bold]not applied (the project file is not trusted):[/]")
        for r in settings.refused:
            console.print(f"  {escape(r.key)} from {escape(str(r.file))}: {escape(r.reason)}")
        real = {str(r.file) for r in settings.refused}
        for name in sorted(real):
            console.print(
                f"[bold]hint:[/] review {escape(name)}, then: jhansi trust {escape(name)}"
            )
