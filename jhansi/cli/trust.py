"""``jhansi trust``: trust a project configuration file's exact content, list, revoke."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState


def trust(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            metavar="[FILE]",
            help="A jhansi.toml, or a pyproject.toml with a tool.jhansi table (default: the "
            "project configuration found from the current directory).",
        ),
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List the trusted files: path, BLAKE3, when.")
    ] = False,
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Stop trusting FILE (its values need trust again).")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Trust a project configuration file, after reviewing it.

    A project file may tighten any setting; to choose host executables or widen
    access (sandbox.python, sandbox.bwrap, engine, image, network, secrets, ledger,
    policy data) its exact content must be trusted. Any later change to the file
    makes it untrusted again.
    """
    from jhansi import trust_store as store
    from jhansi.cli._output import print_json
    from jhansi.errors import UsageError
    from jhansi.trust import project_file
    from jhansi.trust import trust as trust_file

    ctx.ensure_object(CliState).json = json_output
    if list_ and (revoke or file is not None):
        raise UsageError("--list takes no FILE and no --revoke", hint="jhansi trust --list")
    if list_:
        entries = store.entries()
        if json_output:
            print_json({"status": "ok", "trusted": [e.as_dict() for e in entries]})
        elif not entries:
            typer.echo("no trusted configuration files")
        else:
            for e in entries:
                typer.echo(f"{e.path}\tblake3:{e.blake3}\t{e.trusted_at}")
        return
    target = file if file is not None else project_file(Path.cwd())
    if revoke:
        removed = store.revoke(target)
        if json_output:
            print_json(
                {
                    "status": "ok",
                    "revoked": removed.as_dict() if removed else None,
                }
            )
        elif removed is None:
            typer.echo(f"{store.real_path(target)} was not trusted")
        else:
            typer.echo(f"no longer trusted: {removed.path}")
        return
    done = trust_file(target)
    if json_output:
        print_json(
            {
                "status": "ok",
                "trusted": done.entry.as_dict(),
                "needs_trust": list(done.needs_trust),
                "tighten_only": list(done.tighten_only),
            }
        )
        return
    typer.echo(f"trusted {done.entry.path} (blake3:{done.entry.blake3})")
    if done.needs_trust:
        typer.echo("it sets keys that need trust: " + ", ".join(done.needs_trust))
    else:
        typer.echo("it sets no key that needs trust")
    if done.tighten_only:
        typer.echo(
            "and tighten-only keys, now also allowed to loosen: " + ", ".join(done.tighten_only)
        )
