"""The CLI run in-process through :func:`jhansi.cli.main`, as the console script runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from jhansi.cli import main


@dataclass(frozen=True)
class CliResult:
    """What one invocation printed and exited with."""

    code: int
    stdout: str
    stderr: str


Invoke = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Invoke:
    """Call ``jhansi ARGS`` in-process; return its exit code and captured output."""

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            code = 0
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return invoke
