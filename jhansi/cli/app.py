"""The Typer application: the root command and the command groups registered on it."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

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

DEBUG_HELP = "Show tracebacks and debug logs (also JHANSI_DEBUG=1)."


def enable_debug(state: CliState) -> None:
    """Turn on tracebacks and debug logs for this invocation (``--debug``)."""
    state.debug = True
    os.environ["JHANSI_DEBUG"] = "1"  # child processes and later imports see it too
    import logging

    logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


def _debug_after_command(ctx: typer.Context, _param: typer.CallbackParam, value: bool) -> None:
    if value:
        enable_debug(ctx.ensure_object(CliState))


def _accept_root_options(command: TyperCommand | TyperGroup) -> None:
    """Let ``command`` (and the commands of a group) take the root's ``--debug`` too.

    ``jhansi run --debug x.py`` means ``jhansi --debug run x.py``: a user types the
    flag where the other options are. It is an option wherever the command takes
    options: never after ``--``, and for ``run`` only before SCRIPT (what follows
    SCRIPT is the script's own).
    """
    if not any("--debug" in param.opts for param in command.params):
        command.params.append(
            TyperOption(
                param_decls=["--debug"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_debug_after_command,
                help=DEBUG_HELP,
            )
        )
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            if isinstance(sub, TyperCommand | TyperGroup):
                _accept_root_options(sub)


class _RootGroup(TyperGroup):
    """The ``jhansi`` group: its root options are accepted after every command as well."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            if isinstance(command, TyperCommand | TyperGroup):
                _accept_root_options(command)


app = typer.Typer(
    name="jhansi",
    cls=_RootGroup,
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
    debug: Annotated[bool, typer.Option("--debug", help=DEBUG_HELP)] = False,
) -> None:
    state = ctx.ensure_object(CliState)
    if debug or state.debug:
        enable_debug(state)


# Options end at SCRIPT (what follows is the script's), and an unknown option before
# it is a usage error, never taken for the script's name (`jhansi run -- -x.py` runs
# a script whose name starts with a dash).
app.command(name="run", context_settings={"allow_interspersed_args": False})(run_cmd.run)
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
