"""The ``jhansi`` command: a thin Typer layer over the library.

Every command parses its options, calls one library function and renders the
result. :func:`main` is the only place that catches
:class:`~jhansi.errors.JhansiError`: it prints what went wrong and what to do,
as two lines, and exits with the error's code. Tracebacks are for bugs (or
``--debug`` / ``JHANSI_DEBUG=1``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from jhansi._version import __version__
from jhansi.cli import config as config_cmd
from jhansi.cli import doctor as doctor_cmd
from jhansi.cli._state import CliState
from jhansi.errors import ExitCode, JhansiError

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


app.command(name="doctor")(doctor_cmd.doctor)
app.add_typer(config_cmd.app, name="config")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``jhansi`` console script."""
    state = CliState(debug=os.environ.get("JHANSI_DEBUG", "") not in ("", "0"))
    try:
        app(args=list(argv) if argv is not None else None, obj=state, prog_name="jhansi")
    except JhansiError as exc:
        from jhansi.cli._output import report_error

        report_error(exc, state)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        print("jhansi: interrupted", file=sys.stderr)
        sys.exit(int(ExitCode.INTERRUPTED))
