"""The Typer application: the root command and the command groups registered on it."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from jhansi._version import __version__
from jhansi.cli import check as check_cmd
from jhansi.cli import config as config_cmd
from jhansi.cli import deps as deps_cmd
from jhansi.cli import doctor as doctor_cmd
from jhansi.cli import helper as helper_cmd
from jhansi.cli import ledger as ledger_cmd
from jhansi.cli import mcp as mcp_cmd
from jhansi.cli import run as run_cmd
from jhansi.cli import sandbox as sandbox_cmd
from jhansi.cli import secret as secret_cmd
from jhansi.cli import trust as trust_cmd
from jhansi.cli._state import CliState

app = typer.Typer(
    name="jhansi",
    help="Run AI-generated Python the way an auditor would want it run: "
    "locked, checked, sandboxed and recorded.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"jhansi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs (also JHANSI_DEBUG=1).")
    ] = False,
) -> None:
    state = ctx.ensure_object(CliState)
    if debug:
        state.debug = True
        os.environ["JHANSI_DEBUG"] = "1"  # child processes and later imports see it too
    if state.debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


app.command(
    name="run",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)(run_cmd.run)
app.command(name="deps")(deps_cmd.deps)
app.command(name="lock")(deps_cmd.lock)
app.command(name="check")(check_cmd.check)
app.command(name="sbom")(check_cmd.sbom)
app.add_typer(sandbox_cmd.app, name="sandbox")
app.command(name="doctor")(doctor_cmd.doctor)
app.add_typer(config_cmd.app, name="config")
app.add_typer(ledger_cmd.app, name="ledger")
app.add_typer(secret_cmd.app, name="secret")
app.command(name="trust")(trust_cmd.trust)
app.command(name="mcp")(mcp_cmd.mcp)
app.add_typer(helper_cmd.app, name="helper")
