"""The ``jhansi`` command: a thin Typer layer over the library.

Every command parses its options, calls one library function and renders the
result. :func:`main` is the only place that catches
:class:`~jhansi.errors.JhansiError`: it prints what went wrong and what to do,
as two lines, and exits with the error's code. Tracebacks are for bugs (or
``--debug`` / ``JHANSI_DEBUG=1``).

This module imports nothing heavy: ``jhansi --version`` answers before Typer is
even loaded, and so does ``jhansi run`` with the options it usually gets (see
:mod:`jhansi.cli._fastpath`), because start-up time is a feature.
"""

from __future__ import annotations

import os
import sys

from jhansi._version import __version__

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from collections.abc import Sequence

#: Set in a child of the helper (:mod:`jhansi.helper`): it must not hand the run on again.
IN_HELPER = False


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``jhansi`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        print(f"jhansi {__version__}")
        return
    debug = os.environ.get("JHANSI_DEBUG", "") not in ("", "0")
    if args[:1] == ["run"] and not debug and argv is None and not IN_HELPER:
        _try_helper(args)  # first: the helper has everything below loaded already
    import jhansi.housekeeping as housekeeping
    from jhansi.cli._state import CliState
    from jhansi.errors import ExitCode, JhansiError

    housekeeping.defer()  # this process finishes it before it exits

    state = CliState(debug=debug)
    try:
        if args[:1] == ["run"] and not state.debug:
            from jhansi.cli._fastpath import run_fast

            # exits, unless Typer must parse these arguments
            run_fast(args[1:], state, exit_now=argv is None)
        from jhansi.cli.app import app

        app(args=args, obj=state, prog_name="jhansi")
    except JhansiError as exc:
        from jhansi.cli._output import report_error

        report_error(exc, state)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        print("jhansi: interrupted", file=sys.stderr)
        sys.exit(int(ExitCode.INTERRUPTED))


def _try_helper(args: list[str]) -> None:
    """Run ``jhansi ARGS`` in the helper and exit with its status, if one is running
    (:mod:`jhansi.cli._helper_client`); otherwise start one for the next run and return."""
    from jhansi.cli import _helper_client as helper

    if not helper.enabled():
        return
    code = helper.run_in_helper(args)
    if code is None:
        helper.spawn()
        return
    os._exit(code)
