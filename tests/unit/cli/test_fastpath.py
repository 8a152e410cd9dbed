"""``jhansi run`` parsed without Typer: the same options, the same values, or Typer itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jhansi.cli import _execute
from jhansi.cli._fastpath import RUN_OPTIONS, derive_options, parse_run
from jhansi.cli._state import CliState
from tests.unit.cli.conftest import Invoke


class Called(Exception):
    """Raised by the stand-in for the command's body, carrying what it was given."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__("called")
        self.values = values


def _capture(state: CliState, **values: Any) -> None:
    raise Called(values)


def typer_values(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, root: list[str] | None = None
) -> dict[str, Any]:
    """What Typer passes to the body of ``jhansi ROOT run ARGV``."""
    from jhansi.cli.app import app

    monkeypatch.setattr(_execute, "execute_run", _capture)
    with pytest.raises(Called) as called:
        app(args=[*(root or []), "run", *argv], obj=CliState(), standalone_mode=False)
    return called.value.values


def test_the_table_is_what_typer_builds_from_the_declarations() -> None:
    assert derive_options() == RUN_OPTIONS


PARSED = [
    ["s.py"],
    ["-"],
    ["s.py", "a", "--help", "-q", "--json"],
    ["-q", "--json", "--backend", "bwrap", "--sandbox", "n", "s.py", "x"],
    ["-e", "A=1", "--env", "B=2", "--env=C=3", "--with", "requests>=2", "--with=", "s.py"],
    ["--project", "p", "--requirements", "r.txt", "--lock-file", "l.toml", "s.py"],
    ["--prompt-file", "f", "--ledger", "/l", "--model", "m", "--prompt", "p q", "s.py"],
    ["--memory", "-1", "--cpus", "0.5", "--pids", "9", "--tmp-size", "1m", "s.py"],
    ["--timeout", "5m", "--output-limit", "10", "--exclude-newer", "2024-01-01", "s.py"],
    ["--ephemeral", "--rw", "--frozen", "--upgrade", "--image", "i", "s.py"],
    ["--python", "/p", "--runtime", "runsc", "--backend", "docker", "--backend=auto", "s.py"],
    ["--", "s.py", "--json"],
    ["--json", "--", "-", "-q"],
]


@pytest.mark.parametrize("argv", PARSED)
def test_both_paths_give_the_body_the_same_values(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = parse_run(argv)
    assert fast is not None
    assert fast == typer_values(argv, monkeypatch)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["-h"],
        ["--json"],
        ["--memory"],
        ["--"],
        ["--frobnicate", "s.py"],
        ["--mem", "1g", "s.py"],
        ["-qe", "A=1", "s.py"],
        ["-eA=1", "s.py"],
        ["-e=A", "s.py"],
        ["--json=yes", "s.py"],
    ],
)
def test_anything_else_is_left_to_typer(argv: list[str]) -> None:
    assert parse_run(argv) is None


def test_typer_still_answers_what_the_fast_path_leaves(cli: Invoke) -> None:
    assert cli("run", "--help").code == 0
    assert "--with" in cli("run", "--help").stdout
    assert cli("run", "--frobnicate", "s.py").code == 2  # Click's own handling
    assert cli("run").code == 2


def test_a_run_does_not_load_typer(tmp_path: Path) -> None:
    """The real entry point, in a fresh interpreter: refused input, no sandbox needed."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jhansi", "run", "-q", "--json", "nothere.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 6, proc.stderr[-2000:]
    assert '"kind": "InputError"' in proc.stdout
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "jhansi" in imported
    assert "typer" not in imported


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [("3", 3, ""), ("0", 0, ""), ("None", 0, ""), ("'no good'", 1, "no good\n")],
)
def test_exit_now_flushes_and_exits_like_sys_exit(code: str, status: int, stderr: str) -> None:
    """The console script's end: what was written is out, the status is sys.exit's."""
    program = (
        "import sys\nfrom jhansi.cli._fastpath import _exit_now\n"
        "sys.stdout.write('out'); sys.stderr.write('err ')\n"
        f"_exit_now({code})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == status
    assert proc.stdout == "out"
    assert proc.stderr == "err " + stderr
