"""``jhansi sandbox``: list, remove, prune and open a shell in named sandboxes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState

if TYPE_CHECKING:
    from jhansi.sandbox.workspace import Workspace

app = typer.Typer(help="Manage named sandboxes and their persistent homes.", no_args_is_help=True)


def _workspace() -> Workspace:
    from jhansi.paths import Paths
    from jhansi.sandbox.workspace import Workspace

    return Workspace.from_paths(Paths.from_environment())


@app.command("ls")
def list_sandboxes(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """List named sandboxes: size of the home (--json: in bytes), runs, last use."""
    from jhansi.cli._output import human_size, print_json, stdout_console

    ctx.ensure_object(CliState).json = json_output
    sandboxes = _workspace().entries()
    if json_output:
        print_json(
            {
                "status": "ok",
                "sandboxes": [
                    {
                        "name": s.name,
                        "home": str(s.home),
                        "created": s.created,
                        "last_used": s.last_used,
                        "runs": s.runs,
                        "size": s.size,
                        "project": s.project,
                    }
                    for s in sandboxes
                ],
            }
        )
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="sandboxes", title_justify="left")
    table.add_column("name", overflow="fold")
    table.add_column("runs", justify="right")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("last used", overflow="fold")
    table.add_column("project", overflow="fold")
    for s in sandboxes:
        table.add_row(
            escape(s.name),
            str(s.runs),
            human_size(s.size),
            s.last_used[:19].replace("T", " "),
            escape(s.project or ""),
        )
    stdout_console().print(table if sandboxes else "no sandboxes yet")


@app.command("rm")
def remove(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Sandboxes to delete, with their homes.")],
    json_output: JsonFlag = False,
) -> None:
    """Delete named sandboxes and everything in their homes."""
    from jhansi.cli._output import print_json

    ctx.ensure_object(CliState).json = json_output
    workspace = _workspace()
    for name in names:
        workspace.remove(name)
    if json_output:
        print_json({"status": "ok", "removed": names})
    else:
        for name in names:
            typer.echo(f"removed {name}")


@app.command("prune")
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age since last use, e.g. 30d, 12h.")
    ] = "30d",
    json_output: JsonFlag = False,
) -> None:
    """Delete sandboxes unused for a while, and containers that crashed runs left behind."""
    from jhansi.cli._output import print_json
    from jhansi.config import load_settings, parse_duration
    from jhansi.errors import ConfigError, JhansiError

    ctx.ensure_object(CliState).json = json_output
    try:
        age = parse_duration(older_than)
    except ValueError:
        raise ConfigError(
            f"--older-than {older_than!r} is not a duration",
            hint="Use a duration such as 30d, 12h or 90m.",
        ) from None
    removed = _workspace().prune(older_than=age)
    containers = 0
    settings = load_settings()
    if settings.sandbox.backend in ("auto", "docker"):
        try:
            from jhansi.sandbox.docker import DockerBackend

            containers = DockerBackend.from_settings(settings.sandbox.engine_url).prune()
        except JhansiError:
            containers = 0  # no engine: nothing of ours can be left in it
    if json_output:
        print_json({"status": "ok", "removed": removed, "containers_removed": containers})
    else:
        for name in removed:
            typer.echo(f"removed {name}")
        typer.echo(f"{len(removed)} sandbox(es) and {containers} leftover container(s) removed")


@app.command("shell")
def shell(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="The sandbox (default: the project's).")
    ] = None,
    project: Annotated[
        Path | None, typer.Option("--project", help="Directory mounted at /work.")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="auto, docker or bwrap.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Container image.")] = None,
    rw: Annotated[bool, typer.Option("--rw", help="Let it write to /work.")] = False,
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="Seconds before the shell is killed.")
    ] = None,
) -> None:
    """An interactive Python in a sandbox, with the same limits as a run.

    Reads commands from stdin, so it can be fed by a pipe as well as typed at.
    """
    from jhansi.cli._reporter import ConsoleReporter
    from jhansi.cli.run import finish, sandbox_flags
    from jhansi.config import load_settings
    from jhansi.runner import Runner, RunRequest

    ctx.ensure_object(CliState)
    settings = load_settings(
        start=project, flags=sandbox_flags(backend=backend, image=image, timeout=timeout)
    )
    reporter = ConsoleReporter(quiet=True)
    request = RunRequest(script=None, project=project, sandbox=name, rw=rw, interactive=True)
    result = Runner.from_settings(settings, reporter=reporter).run(request)
    finish(
        result,
        json_output=False,
        quiet=True,
        timeout=settings.sandbox.timeout,
        memory=settings.sandbox.memory,
    )
