"""``jhansi helper``: see and stop the helper processes that make warm runs fast."""

from __future__ import annotations

import json

import typer

from jhansi.cli._options import JsonFlag

app = typer.Typer(
    help="See or stop the helper process that makes warm runs start fast.",
    no_args_is_help=True,
)


@app.command()
def status(json_output: JsonFlag = False) -> None:
    """List this user's helpers and whether they are running."""
    from jhansi.cli._helper_client import enabled, helper_dir
    from jhansi.helper import list_helpers

    helpers = list_helpers()
    if json_output:
        document = {
            "enabled": enabled(),
            "directory": helper_dir(),
            "helpers": [h.as_dict() for h in helpers],
        }
        print(json.dumps(document, indent=2))
        return
    print(f"helper: {'enabled' if enabled() else 'disabled'} (JHANSI_HELPER); in {helper_dir()}")
    if not helpers:
        print("no helper running")
    for helper in helpers:
        print(f"{helper.name}: running, pid {helper.pid}, {helper.served} run(s) served")


@app.command()
def stop(json_output: JsonFlag = False) -> None:
    """Stop this user's helpers (runs already in progress finish)."""
    from jhansi.helper import stop_helpers

    stopped = stop_helpers()
    if json_output:
        print(json.dumps({"stopped": [h.as_dict() for h in stopped]}, indent=2))
        return
    print(f"stopped {len(stopped)} helper(s)")
