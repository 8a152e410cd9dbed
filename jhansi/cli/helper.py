"""``jhansi helper``: see and stop the helper processes that make warm runs fast."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jhansi.cli._options import JsonFlag

app = typer.Typer(
    help="See or stop the helper process that makes warm runs start fast.",
    no_args_is_help=True,
)


@app.command()
def status(json_output: JsonFlag = False) -> None:
    """List this user's helpers and whether they are running; mark this jhansi's own."""
    from jhansi.cli._helper_admin import list_helpers, own_helper_name
    from jhansi.cli._helper_client import enabled, helper_dir

    helpers = list_helpers()
    own = own_helper_name()
    if json_output:
        document = {
            "enabled": enabled(),
            "directory": helper_dir(),
            "own": own,
            "helpers": [{**h.as_dict(), "own": h.name == own} for h in helpers],
        }
        print(json.dumps(document, indent=2))
        return
    print(f"helper: {'enabled' if enabled() else 'disabled'} (JHANSI_HELPER); in {helper_dir()}")
    if not helpers:
        print("no helper running")
    for helper in helpers:
        mine = " (this jhansi's)" if helper.name == own else ""
        loading = "" if helper.loaded else ", still loading"
        print(
            f"{helper.name}: running, pid {helper.pid}, {helper.served} run(s) served"
            f"{loading}{mine}"
        )


@app.command()
def stop(
    all_helpers: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Stop every helper of this user: other checkouts', interpreters' and "
            "sessions' too.",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Stop this jhansi's helper (runs already in progress finish)."""
    from jhansi.cli._helper_admin import list_helpers, own_helper_name, stop_helpers

    stopped = stop_helpers(only=None if all_helpers else own_helper_name())
    asked = {h.name for h in stopped}
    others = [h for h in list_helpers() if h.running and h.name not in asked]
    if json_output:
        print(
            json.dumps(
                {
                    "stopped": [h.as_dict() for h in stopped],
                    "left_running": [h.as_dict() for h in others],
                },
                indent=2,
            )
        )
        return
    if all_helpers:
        print(f"stopped {len(stopped)} helper(s)")
        return
    print("stopped this jhansi's helper" if stopped else "this jhansi has no helper running")
    if others:
        print(
            f"{len(others)} other helper(s) left running (other checkouts, interpreters or "
            "sessions): `jhansi helper stop --all` stops them too"
        )
