"""What the root command and :func:`jhansi.cli.main` share about one invocation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")
]
"""The ``--json`` option, the same on every command."""


@dataclass(slots=True)
class CliState:
    """Mutable on purpose: commands record here how their errors must be rendered."""

    debug: bool = False
    json: bool = False
