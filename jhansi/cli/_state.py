"""What the root command and :func:`jhansi.cli.main` share about one invocation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CliState:
    """Mutable on purpose: commands record here how their errors must be rendered."""

    debug: bool = False
    json: bool = False
