"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")
]
"""The ``--json`` option, the same on every command."""
