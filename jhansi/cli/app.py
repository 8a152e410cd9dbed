"""The Typer application: the root command and the command groups registered on it."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from jhansi._version import __version__
from jhansi.cli._state import CliState
from jhansi.cli.check import check, sbom
from jhansi.cli.config import app as config_app
from jhansi.cli.deps import deps, lock
from jhansi.cli.doctor import doctor
from jhansi.cli.helper import app as helper_app
from jhansi.cli.ledger import app as ledger_app
from jhansi.cli.mcp import mcp
from jhansi.cli.replay import replay
from jhansi.cli.run import run
from jhansi.cli.sandbox import app as sandbox_app
from jhansi.cli.secret import app as secret_app
from jhansi.cli.trust import trust

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
app.command(name="run", context_settings={"allow_interspersed_args": False})(run)
app.command(name="deps")(deps)
app.command(name="lock")(lock)
app.command(name="check")(check)
app.command(name="sbom")(sbom)
app.add_typer(sandbox_app, name="sandbox")
app.command(name="doctor")(doctor)
app.add_typer(config_app, name="config")
app.add_typer(ledger_app, name="ledger")
app.add_typer(secret_app, name="secret")
app.command(name="trust")(trust)
app.command(name="replay")(replay)
app.command(name="mcp")(mcp)
app.add_typer(helper_app, name="helper")
