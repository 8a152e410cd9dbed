"""``jhansi sandbox``: list, remove, prune, open a shell in named sandboxes, and bring
their results out (``diff``, ``apply``, ``cp``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState

if TYPE_CHECKING:
    from jhansi.config import Settings
    from jhansi.sandbox.overlay_plan import Planned
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
    rw: Annotated[
        bool, typer.Option("--rw", help="Let it write the project itself (a copy, applied).")
    ] = False,
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
    from jhansi.request import RunRequest
    from jhansi.runner import Runner

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


ProjectOption = Annotated[
    Path | None,
    typer.Option(
        "--project",
        help="The project whose layer (default: the sandbox's only one, else the working "
        "directory's project).",
    ),
]
NameArgument = Annotated[
    str | None, typer.Argument(help="The sandbox (default: the working directory's project's).")
]
#: Text files up to this size get a line diff in ``sandbox diff``.
_TEXT_DIFF_LIMIT = 64 << 10
_TEXT_DIFF_LINES = 400


def _settings(project: Path | None) -> Settings:
    from jhansi.config import load_settings

    # Masks from the project's configuration tighten, and are kept; what would need
    # trust (a ledger elsewhere ...) is left out, as for any untrusted checkout. The
    # layer's own project's masks (and those its runs recorded) are added by
    # jhansi.layers, wherever this is started from.
    return load_settings(start=project, strict=False)


def _text_diff(item: Planned, layer: Path, project: Path) -> str | None:
    """A unified diff of a small text file the layer added or modified, else ``None``."""
    import difflib

    from jhansi.ledger.read import one_line
    from jhansi.sandbox.changes import shown_name
    from jhansi.sandbox.overlay_read import read_small

    change = item.change
    if change.new is None or change.new.kind != "file":
        return None
    new = read_small(layer, change.path, _TEXT_DIFF_LIMIT)
    old = b""
    if item.current is not None:
        if item.current.kind != "file":
            return None
        found = read_small(project, change.path, _TEXT_DIFF_LIMIT)
        if found is None:
            return None
        old = found
    if new is None or b"\0" in new or b"\0" in old:
        return None
    try:
        before, after = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Lines without their endings: a CSV's CRLF is a line ending, not text to escape.
    lines = list(
        difflib.unified_diff(
            before.splitlines(),
            after.splitlines(),
            fromfile=f"project/{one_line(shown_name(change.path))}"
            if item.current is not None
            else "/dev/null",
            tofile=f"/work/{one_line(shown_name(change.path))}",
            lineterm="",
        )
    )
    if len(lines) > _TEXT_DIFF_LINES:
        lines = [*lines[:_TEXT_DIFF_LINES], f"… {len(lines) - _TEXT_DIFF_LINES} more lines"]
    return "".join(line + "\n" for line in lines)


@app.command("diff")
def diff_command(
    ctx: typer.Context,
    name: NameArgument = None,
    project: ProjectOption = None,
    json_output: JsonFlag = False,
) -> None:
    """What a sandbox's runs changed in /work, against the project as it is now.

    Runs write /work into the sandbox's copy-on-write layer, never into the project:
    this lists what `jhansi sandbox apply` would copy in (added, modified, deleted), with
    a line diff of small text files, and what it would refuse or find in conflict.
    """
    from rich.markup import escape

    from jhansi.cli._output import print_json, stdout_console
    from jhansi.layers import diff
    from jhansi.ledger.read import one_line, terminal_safe
    from jhansi.paths import Paths
    from jhansi.sandbox.changes import name_fields, shown_name

    ctx.ensure_object(CliState).json = json_output
    found = diff(_settings(project), Paths.from_environment(), name, project)
    patches = {
        item.change.path: _text_diff(item, found.dirs.upper, found.dirs.project)
        for item in found.items
        if not found.hides(item.change.path)  # a masked file's host content stays unshown
    }
    if json_output:
        changes = []
        for item in found.items:
            change = item.change
            entry: dict[str, object] = {
                **name_fields("path", change.path),
                "change": change.action,
                "kind": next(
                    (e.kind for e in (change.new, change.old, item.current) if e is not None),
                    None,
                ),
                "size": change.new.size if change.new and change.new.kind == "file" else None,
            }
            if change.path in found.refused:
                entry["refused"] = found.refused[change.path]
            if item.conflict:
                entry["conflict"] = item.conflict
            if patches.get(change.path):
                entry["diff"] = patches[change.path]
            changes.append(entry)
        print_json(
            {
                "status": "ok",
                "sandbox": found.sandbox,
                "project": str(found.dirs.project),
                "layer": str(found.dirs.upper),
                "changes": changes,
                "incomplete": found.plan.incomplete,
            }
        )
        return
    console = stdout_console()
    count = len(found.items)
    console.print(
        escape(
            f"sandbox {found.sandbox} · layer over {one_line(str(found.dirs.project))} · "
            f"{count} change{'s' if count != 1 else ''}"
        ),
        soft_wrap=True,
    )
    marks = {"added": "A", "modified": "M", "deleted": "D", "mode": "m"}
    for item in found.items:
        change = item.change
        note = ""
        if change.path in found.refused:
            note = f"  (never applied: {found.refused[change.path]})"
        elif item.conflict:
            note = f"  (conflict: {item.conflict})"
        shown = shown_name(change.path)
        if change.new is not None and change.new.kind == "dir":
            shown += "/"
        # One line each, whatever the names and link targets in it hold.
        console.print(escape(one_line(f"{marks[change.action]} {shown}{note}")), soft_wrap=True)
    if found.plan.incomplete:
        console.print(escape(one_line(f"(incomplete: {found.plan.incomplete})")), soft_wrap=True)
    for item in found.items:
        patch = patches.get(item.change.path)
        if patch:
            console.print(escape(terminal_safe(patch)), end="", soft_wrap=True)


def _valid(name: str) -> bool:
    from jhansi.sandbox.workspace import NAME_PATTERN

    return NAME_PATTERN.match(name) is not None


@app.command("apply")
def apply_command(
    ctx: typer.Context,
    name: NameArgument = None,
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Paths to apply (relative to the project or /work/...; a directory takes "
            "everything below it). Default: every change."
        ),
    ] = None,
    project: ProjectOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Copy a sandbox's changes to /work into the project, recorded in the ledger.

    The same protections as --rw. Never written: configuration, locks, version files,
    .git; what the host runs by itself (a module `python -m jhansi` would import: at
    the top, NAME.py/.so or a link NAME, or module files below a directory NAME, for
    jhansi, the standard library and what is installed beside jhansi; *.pyc and
    __pycache__; .pre-commit-config.yaml, .envrc, .gitlab-ci.yml, .github/, .vscode/,
    .idea/, .devcontainer/); masked paths (the project's and the run's); files the
    sandbox could not read. Links only if their target stays inside the project by its
    text and passes through no other link. A path you changed in the project since the
    sandbox changed it is a conflict (left in the layer), also below a directory it
    deleted. `jhansi sandbox cp` takes what is refused, once you have read it. Exits 1
    when some changes were not applied. When NAME is no sandbox's name, it is the first
    PATH (in the working directory's project's sandbox).
    """
    from rich.markup import escape

    from jhansi.cli._output import print_json, stderr_console, stdout_console
    from jhansi.layers import apply
    from jhansi.ledger.read import one_line
    from jhansi.paths import Paths
    from jhansi.sandbox.changes import shown_name

    ctx.ensure_object(CliState).json = json_output
    wanted = tuple(paths or ())
    environment = Paths.from_environment()
    if name is not None and not (_valid(name) and _workspace().exists(name)):
        # Not a sandbox: the first path, in the working directory's project's sandbox.
        wanted = (name, *wanted)
        name = None
    done = apply(_settings(project), environment, name, wanted, project=project)
    report = done.report
    missed = report.by("refused") + report.by("conflict")
    if json_output:
        applied = []
        for outcome in report.by("applied"):
            item: dict[str, object] = dict(outcome.as_dict())
            if outcome.path in done.hashes:
                item["blake3"] = done.hashes[outcome.path]
            applied.append(item)
        print_json(
            {
                "status": "ok" if not missed and not report.error else "partial",
                "sandbox": done.sandbox,
                "project": str(done.dirs.project),
                **{k: v for k, v in report.as_dict().items() if k != "applied"},
                "applied": applied,
                "record": done.record,
            }
        )
    else:
        out, err = stdout_console(), stderr_console()
        for outcome in report.by("applied"):
            out.print(escape(one_line(f"applied {shown_name(outcome.path)}")), soft_wrap=True)
        for outcome in missed:
            kind = "refused" if outcome.result == "refused" else "conflict"
            err.print(
                escape(
                    one_line(f"not applied ({kind}): {shown_name(outcome.path)}: {outcome.reason}")
                ),
                soft_wrap=True,
            )
        if report.error:
            err.print(escape(one_line(f"applying stopped: {report.error}")), soft_wrap=True)
        out.print(
            escape(
                f"{len(report.by('applied'))} applied to {one_line(str(done.dirs.project))}"
                f", {len(missed)} not applied · recorded in the ledger"
            ),
            soft_wrap=True,
        )
    if missed or report.error:
        raise typer.Exit(1)


@app.command("cp")
def copy_command(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="NAME:PATH: /work/... (the sandbox's layer), ~/... or /home/sandbox/... (its "
            "home); an empty NAME is the working directory's project's sandbox."
        ),
    ],
    dest: Annotated[Path, typer.Argument(help="Where to copy it on the host.")],
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it exists.")] = False,
    project: ProjectOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Copy a file (or directory) out of a sandbox's home or layer.

    No link is followed, at PATH or on the way to it; inside a copied directory, links
    and special files are skipped. An existing DEST is never replaced without --force.
    """
    from rich.markup import escape

    from jhansi.cli._output import print_json, stderr_console
    from jhansi.layers import copy_out
    from jhansi.ledger.read import one_line
    from jhansi.paths import Paths

    ctx.ensure_object(CliState).json = json_output
    done = copy_out(Paths.from_environment(), source, dest, force=force, project=project)
    if json_output:
        print_json(
            {
                "status": "ok",
                "source": done.source,
                "dest": str(done.dest),
                "files": done.files,
                "bytes": done.bytes,
                "skipped": list(done.skipped),
            }
        )
        return
    console = stderr_console()
    console.print(
        escape(
            f"copied {one_line(done.source)} to {one_line(str(done.dest))} "
            f"({done.files} file{'s' if done.files != 1 else ''}, {done.bytes} bytes)"
        ),
        soft_wrap=True,
    )
    if done.skipped:
        console.print(
            escape(f"skipped {len(done.skipped)} link(s) or special file(s)"), soft_wrap=True
        )
