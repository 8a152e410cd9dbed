"""``jhansi deps`` and ``jhansi lock``: what a script needs, and its lock, without running it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState
from jhansi.cli.run import (
    Backend,
    ExcludeNewer,
    Frozen,
    Image,
    LockFile,
    Python,
    RequirementsFile,
    Upgrade,
    With,
    sandbox_flags,
)
from jhansi.errors import ExitCode

if TYPE_CHECKING:
    from jhansi.request import RunRequest
    from jhansi.runner import Runner

Script = Annotated[Path, typer.Argument(help="The script.")]


def _runner_and_request(
    script: Path,
    *,
    backend: str | None,
    image: str | None,
    python: str | None,
    with_: list[str] | None,
    requirements: Path | None,
    lock_file: Path | None,
    frozen: bool,
    upgrade: bool,
    exclude_newer: str | None,
    quiet: bool,
) -> tuple[Runner, RunRequest]:
    from jhansi.cli._reporter import ConsoleReporter
    from jhansi.config import load_settings
    from jhansi.request import RunRequest
    from jhansi.runner import Runner

    settings = load_settings(
        start=script.absolute().parent,
        flags=sandbox_flags(backend=backend, image=image, python=python),
    )
    runner = Runner.from_settings(settings, reporter=ConsoleReporter(quiet=quiet))
    request = RunRequest(
        script=script,
        with_requirements=tuple(with_ or ()),
        requirements_file=requirements,
        lock_file=lock_file,
        frozen=frozen,
        upgrade=upgrade,
        exclude_newer=exclude_newer,
    )
    return runner, request


def deps(
    ctx: typer.Context,
    script: Script,
    backend: Backend = None,
    image: Image = None,
    python: Python = None,
    with_: With = None,
    requirements: RequirementsFile = None,
    lock_file: LockFile = None,
    frozen: Frozen = False,
    upgrade: Upgrade = False,
    exclude_newer: ExcludeNewer = None,
    json_output: JsonFlag = False,
) -> None:
    """Show each import, the requirement it became, why, and the locked version.

    Locks (or reuses the lock) like a run would; exits 7 when an import is unresolved.
    """
    from jhansi.cli._output import print_json, stdout_console
    from jhansi.deps.result import dependencies_document

    ctx.ensure_object(CliState).json = json_output
    runner, request = _runner_and_request(
        script,
        backend=backend,
        image=image,
        python=python,
        with_=with_,
        requirements=requirements,
        lock_file=lock_file,
        frozen=frozen,
        upgrade=upgrade,
        exclude_newer=exclude_newer,
        quiet=json_output,
    )
    result = runner.dependencies(request, refuse_unresolved=False)
    document = dependencies_document(result) or {}
    unresolved = bool(result.plan.unresolved)
    if json_output:
        print_json({"status": "unresolved" if unresolved else "ok", **document})
    else:
        from rich.markup import escape
        from rich.table import Table

        versions = {p.name: p.version for p in (result.lock.packages if result.lock else ())}
        table = Table(title=f"{script} on {result.target.describe()}", title_justify="left")
        for column in ("import", "requirement", "from", "locked"):
            table.add_column(column, overflow="fold")
        for d in result.plan.imports:
            requirement = d.requirement or ""
            name = requirement.split("[")[0].split(";")[0].strip()
            for op in "<>=!~ ":
                name = name.split(op)[0]
            kind = {"unresolved": "[red]unresolved[/]", "optional": "optional"}.get(d.kind, d.kind)
            table.add_row(
                escape(d.name),
                escape(requirement),
                f"{kind}: {escape(d.evidence)}",
                versions.get(name.lower().replace("_", "-"), ""),
            )
        console = stdout_console()
        console.print(table)
        if result.lock:
            console.print(
                f"lock: {result.lock.path} ({len(result.lock.packages)} packages"
                f"{', reused' if result.lock.reused else ''})"
            )
    if unresolved:
        from jhansi.deps.plan import unresolved_error

        error = unresolved_error(result.plan, str(script))
        if not json_output:
            from jhansi.cli._output import stderr_console

            console = stderr_console()
            console.print(f"error: {error.message}", markup=False, soft_wrap=True)
            console.print(f"hint: {error.hint}", markup=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.DEPENDENCIES))


def lock(
    ctx: typer.Context,
    script: Script,
    backend: Backend = None,
    image: Image = None,
    python: Python = None,
    with_: With = None,
    requirements: RequirementsFile = None,
    lock_file: LockFile = None,
    upgrade: Upgrade = False,
    exclude_newer: ExcludeNewer = None,
    json_output: JsonFlag = False,
) -> None:
    """Create or refresh the script's lock (pylock.<script>.toml) without running it."""
    from jhansi.cli._output import print_json
    from jhansi.deps.result import dependencies_document

    ctx.ensure_object(CliState).json = json_output
    runner, request = _runner_and_request(
        script,
        backend=backend,
        image=image,
        python=python,
        with_=with_,
        requirements=requirements,
        lock_file=lock_file,
        frozen=False,
        upgrade=upgrade,
        exclude_newer=exclude_newer,
        quiet=json_output,
    )
    result = runner.dependencies(request)
    if json_output:
        print_json({"status": "ok", **(dependencies_document(result) or {})})
    elif result.lock is None:
        typer.echo(f"{script} needs only the standard library: nothing to lock")
    else:
        state = "up to date" if result.lock.reused else "written"
        typer.echo(f"{result.lock.path}: {state}, {len(result.lock.packages)} packages")
        for package in result.lock.packages:
            typer.echo(f"  {package.name} {package.version}")
