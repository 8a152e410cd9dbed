"""``jhansi replay RUN_ID``: run a recorded run again from the ledger and compare."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState

if TYPE_CHECKING:
    from jhansi.replay import ReplayReport


def replay(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run to replay (a unique prefix will do).")],
    ledger: Annotated[
        Path | None,
        typer.Option(
            "--ledger",
            metavar="DIR",
            help="The ledger the run is in (default: JHANSI_LEDGER, the ledger.path "
            "setting, else <data dir>/ledger). The replay is recorded in your own ledger.",
        ),
    ] = None,
    allow_different_image: Annotated[
        bool,
        typer.Option(
            "--allow-different-image",
            help="When the recorded image (docker) or interpreter (bwrap) is gone, replay on "
            "today's one of the same name (recorded as such) instead of refusing.",
        ),
    ] = False,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            metavar="NAME=VALUE",
            help="A variable the run was given whose value the ledger does not hold "
            "(or a value to replay with instead of the recorded one). Repeatable.",
        ),
    ] = None,
    advisory_db: Annotated[
        Path | None,
        typer.Option(
            "--advisory-db",
            help="Offline OSV data to check the lock with (default: the recorded data when "
            "it is still there, else the policy.advisory_db setting).",
        ),
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            metavar="KEY",
            help="Trusted signing key of the ledger: hex, PEM, or a file of them (default: "
            "this machine's key). A replay runs only records a trusted key signed; a run "
            "signed by another key is replayed without this machine's secrets and with no "
            "looser limits than your settings. Repeatable.",
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            metavar="HOST",
            help="For a run signed by another key: let the replay reach HOST, one of the "
            "hosts the run was allowed (without it, such a replay reaches none). Repeatable.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the comparison.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Run a recorded run again, from the ledger alone, and compare it with the record.

    The same code, lock (the same wheels, by hash), backend, image or interpreter,
    limits, arguments and variables, in a fresh ephemeral sandbox; the replay is
    recorded like any run, linked to the original (replay_of). Exit 0 when exit
    status, output and files changed all match, 8 when something differs, 9 when the
    run cannot be reproduced as recorded, 5 when the ledger does not verify or no
    signature of a trusted key covers the run.
    """
    from jhansi.cli._reporter import ConsoleReporter
    from jhansi.errors import ExitCode
    from jhansi.paths import Paths
    from jhansi.replay import default_source, parse_env_flags
    from jhansi.replay import replay as replay_run

    ctx.ensure_object(CliState).json = json_output
    paths = Paths.from_environment()
    if ledger is not None:
        from jhansi.ledger.layout import resolve_directory

        source = resolve_directory(None, paths, ledger)
    else:
        source = default_source(paths)
    keys = None
    if key:
        from jhansi.cli.ledger import _trusted_keys

        keys = _trusted_keys(key)
    report = replay_run(
        run_id,
        source=source,
        paths=paths,
        reporter=ConsoleReporter(quiet=quiet or json_output, quiet_output=True),
        env=parse_env_flags(env or []),
        allow_different_image=allow_different_image,
        advisory_db=advisory_db,
        keys=keys,
        allow_hosts=tuple(allow_host or ()),
    )
    if json_output:
        from jhansi.cli._output import print_json

        print_json(report.as_dict())
    else:
        _render(report, quiet=quiet)
    if not report.same:
        raise typer.Exit(int(ExitCode.REPLAY_DIFFERS))


def _render(report: ReplayReport, *, quiet: bool) -> None:
    """The comparison, one line per thing compared, for a person."""
    from rich.markup import escape

    from jhansi.cli._output import stdout_console
    from jhansi.ledger.read import one_line

    def safe(text: str) -> str:
        return escape(one_line(text))

    console = stdout_console()
    what = "refusal" if report.kind == "refusal" else "run"
    console.print(
        f"[bold]replay of {what} {safe(report.run_id)}[/] as run "
        f"{safe(report.replay_id or '(not recorded)')}",
        soft_wrap=True,
    )
    marks = {"same": "[green]same   [/]", "differs": "[bold red]DIFFERS[/]", "allowed": "allowed"}
    for check in report.checks:
        value = _shown(check.recorded)
        if check.status != "same":
            value = f"recorded {value}; replay {_shown(check.replayed)}"
        console.print(f"  {marks[check.status]} {safe(check.what)}: {safe(value)}", soft_wrap=True)
        if check.detail:
            console.print(f"          {safe(check.detail)}", soft_wrap=True)
    deps = report.dependencies
    if deps is not None and not quiet:
        environment = deps["environment"]
        how = {True: "installed again from the lock", False: "reused from the cache"}.get(
            environment["installed"], "not installed"
        )
        console.print(
            f"  dependencies: {len(deps['packages'])} locked package(s), environment {how}",
            soft_wrap=True,
        )
        for package in deps["packages"]:
            console.print(
                f"    {safe(package['name'])} {safe(package['version'])} "
                f"{safe(' '.join(package['hashes']))}",
                soft_wrap=True,
            )
    if not quiet:
        for note in report.notes:
            console.print(f"  note: {safe(note)}", soft_wrap=True)
        console.print("  not restored by a replay:", soft_wrap=True)
        for item in report.not_restored:
            console.print(f"    - {safe(item)}", soft_wrap=True)
    if report.same:
        console.print("[bold green]the replay matches the recorded run[/]", soft_wrap=True)
    else:
        console.print(
            f"[bold red]the replay differs[/]: {safe(', '.join(report.differing))}",
            soft_wrap=True,
        )


def _shown(value: object) -> str:
    """A compared value, short: hashes cut to 16 digits (``--json`` has them whole)."""
    import re

    if value is None:
        return "none"
    if isinstance(value, str):
        return re.sub(r"\b([0-9a-f]{16})[0-9a-f]{48}\b", r"\1…", value)
    if isinstance(value, dict):
        if not value:
            return "none"
        return ", ".join(f"{_shown(k)} {_shown(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value) if value else "none"
    return str(value)
