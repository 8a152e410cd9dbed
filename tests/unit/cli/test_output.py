"""Rendering shared by the commands: sizes for people, console widths."""

from __future__ import annotations

import io

import pytest

from jhansi.cli import _output
from jhansi.cli._output import UNWRAPPED_WIDTH, human_size


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12_900_000, "12.3 MiB"),
        ((1 << 20) - 1, "1.0 MiB"),  # not "1024.0 KiB"
        (5 << 30, "5.0 GiB"),
        (3 << 40, "3.0 TiB"),
        (2048 << 40, "2.0 PiB"),
    ],
)
def test_human_size(size: int, shown: str) -> None:
    assert human_size(size) == shown


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_a_terminal_or_columns_bound_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert _output._width(io.StringIO()) == UNWRAPPED_WIDTH
    assert _output._width(_Terminal()) is None  # Rich asks the terminal
    monkeypatch.setenv("COLUMNS", "100")
    assert _output._width(io.StringIO()) is None  # Rich reads COLUMNS
    closed = io.StringIO()
    closed.close()
    assert _output._width(closed) is None
