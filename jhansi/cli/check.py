"""``jhansi check`` and ``jhansi sbom``: the policy's verdict and the SBOM, without running."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState
from jhansi.cli.run import (
    AdvisoryDb,
    Backend,
    ExcludeNewer,
    Frozen,
    Image,
    LockFile,
    Python,
    With,
)
from jhansi.errors import ExitCode, JhansiError

if TYPE_CHECKING:
    from jhansi.request import RunRequest
    from jhansi.runner import Runner


def policy_flags(advisory_db: Path | None) -> dict[tuple[str, str], object]:
    """Policy options given on the command line, as settings overrides."""
    return {("policy", "advisory_db"): str(advisory_db) if advisory_db else None}


def _runner_and_request(
    script: Path,
    *,
    flags: dict[tuple[str, str], object],
    quiet: bool,
    **request: Any,
) -> tuple[Runner, RunRequest]:
    from jhansi.cli._reporter import ConsoleReporter
    from jhansi.config import load_settings
    from jhansi.request import RunRequest
    from jhansi.runner import Runner

    settings = load_settings(start=script.absolute().parent, flags=flags)
    runner = Runner.from_settings(settings, reporter=ConsoleReporter(quiet=quiet))
    return runner, RunRequest(script=script, **request)


def check(
    ctx: typer.Context,
    scripts: Annotated[list[Path], typer.Argument(help="The scripts to check.")],
    backend: Backend = None,
    image: Image = None,
    python: Python = None,
    frozen: Frozen = False,
    exclude_newer: ExcludeNewer = None,
    advisory_db: AdvisoryDb = None,
    json_output: JsonFlag = False,
) -> None:
    """Plan, lock and check each script against the policy; run nothing.

    Exits 0 when every script is clean (warnings allowed), 3 when the policy refuses
    one, and with the first error's code when a script cannot be checked (a stale lock
    under --frozen, an unresolved import, a syntax error).
    """
    from jhansi.cli._output import (
        error_fields,
        print_findings,
        print_json,
        stderr_console,
        stdout_console,
    )

    ctx.ensure_object(CliState).json = json_output
    flags = {
        ("sandbox", "backend"): backend,
        ("sandbox", "image"): image,
        ("sandbox", "python"): python,
        **policy_flags(advisory_db),
    }
    documents: list[dict[str, Any]] = []
    exit_code = 0
    for script in scripts:
        try:
            runner, request = _runner_and_request(
                script, flags=flags, quiet=json_output, frozen=frozen, exclude_newer=exclude_newer
            )
            deps = runner.dependencies(request, policy=True)
        except JhansiError as exc:
            documents.append(
                {
                    "script": str(script),
                    "status": "error",
                    "error": error_fields(exc),
                }
            )
            exit_code = exit_code or int(exc.exit_code)
            if not json_output:
                console = stderr_console()
                console.print(f"{script}: error: {exc.message}", markup=False, soft_wrap=True)
                console.print(f"{script}: hint: {exc.hint}", markup=False, soft_wrap=True)
            continue
        report = deps.supply.report if deps.supply else None
        denied = bool(report and report.denied)
        documents.append(
            {
                "script": str(script),
                "status": "denied" if denied else "ok",
                "lock_file": str(deps.lock.path) if deps.lock else None,
                "locked": [
                    {"name": p.name, "version": p.version}
                    for p in (deps.lock.packages if deps.lock else ())
                ],
                "policy": report.as_dict() if report else None,
            }
        )
        if denied:
            exit_code = (
                int(ExitCode.POLICY) if exit_code in (0, int(ExitCode.POLICY)) else exit_code
            )
        if not json_output and report is not None:
            packages = len(deps.lock.packages) if deps.lock else 0
            verdict = "[bold red]denied[/]" if denied else "[green]ok[/]"
            stdout_console().print(
                f"{script}: {verdict} · {packages} package(s) · "
                f"{len(report.denied)} denied, {len(report.warnings)} warning(s), "
                f"{len(report.ignored)} ignored · audit {report.audit.get('status')}"
            )
            if report.findings or report.ignored:
                print_findings(stdout_console(), report)
    if json_output:
        denied_any = any(d["status"] == "denied" for d in documents)
        errors = any(d["status"] == "error" for d in documents)
        status = "error" if errors else ("denied" if denied_any else "ok")
        print_json({"status": status, "scripts": documents})
    raise typer.Exit(exit_code)


def sbom(
    ctx: typer.Context,
    script: Annotated[Path, typer.Argument(help="The script.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the SBOM here (default: stdout)."),
    ] = None,
    backend: Backend = None,
    image: Image = None,
    python: Python = None,
    with_: With = None,
    lock_file: LockFile = None,
    frozen: Frozen = False,
    advisory_db: AdvisoryDb = None,
) -> None:
    """Write the CycloneDX 1.6 SBOM of what SCRIPT would run (locked, with findings)."""
    import sys

    runner, request = _runner_and_request(
        script,
        flags={
            ("sandbox", "backend"): backend,
            ("sandbox", "image"): image,
            ("sandbox", "python"): python,
            **policy_flags(advisory_db),
        },
        quiet=output is None,
        with_requirements=tuple(with_ or ()),
        lock_file=lock_file,
        frozen=frozen,
    )
    document = runner.sbom(request)
    if output is None:
        sys.stdout.buffer.write(document + (b"" if document.endswith(b"\n") else b"\n"))
        sys.stdout.flush()
        return
    from jhansi.runner.script import write_file

    write_file(output, document)
    typer.echo(f"{output}: CycloneDX 1.6 SBOM written", err=True)
