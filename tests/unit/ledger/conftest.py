"""Real ledgers written through the library, and ways to tamper with them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from jhansi.ledger.store import Ledger
from jhansi.paths import Paths
from tests.unit.cli.conftest import cli  # noqa: F401 - the in-process CLI, for test_cli.py

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def paths() -> Paths:
    """The isolated JHANSI_HOME's directories (the autouse fixture sets it)."""
    return Paths.from_environment()


@pytest.fixture
def ledger_dir(tmp_path: Path) -> Path:
    """Where the test's ledger lives."""
    return tmp_path / "ledger"


@pytest.fixture
def open_ledger(ledger_dir: Path, paths: Paths) -> Callable[..., Ledger]:
    """Open (a new handle on) the test's ledger."""

    def make(directory: Path | None = None, **kwargs: object) -> Ledger:
        return Ledger.open(directory or ledger_dir, paths=paths, **kwargs)  # type: ignore[arg-type]

    return make


def record_run(ledger: Ledger, n: int, *, checkpoint: bool = True, end: bool = True) -> str:
    """One run as the runner records it: blobs, exec.start, exec.end, checkpoint."""
    run_id = f"{1_700_000_000_000 + n:013x}-{n:016x}"
    code = ledger.put_blob(f"print({n})\n".encode())
    prompt = ledger.put_blob(f"print the number {n}".encode())
    ledger.append(
        "exec.start",
        {
            "run_id": run_id,
            "sandbox": "default" if n % 2 else "other",
            "script": {"path": f"script_{n}.py", "blob": code, "bytes": 9},
            "prompt": {"blob": prompt},
        },
    )
    if end:
        out = ledger.put_blob(f"{n}\n".encode())
        ledger.append(
            "exec.end",
            {
                "run_id": run_id,
                "result": {
                    "status": "succeeded",
                    "exit_code": 0,
                    "signal": None,
                    "duration_ms": 10 * n,
                },
                "stdout": {"blob": out, "bytes": 2, "truncated": False},
            },
        )
    if checkpoint:
        ledger.checkpoint()
    return run_id


@pytest.fixture
def populated(open_ledger: Callable[..., Ledger], ledger_dir: Path) -> Path:
    """Five complete runs, each followed by a checkpoint record (interval 1) and head."""
    with open_ledger(checkpoint_interval=1) as ledger:
        for n in range(5):
            record_run(ledger, n)
    return ledger_dir


def lines(directory: Path) -> list[bytes]:
    """The ledger's lines, each with its newline."""
    return (directory / "ledger.jsonl").read_bytes().splitlines(keepends=True)


def write_lines(directory: Path, new: list[bytes]) -> None:
    """Replace the ledger's content."""
    (directory / "ledger.jsonl").write_bytes(b"".join(new))


def run_python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a fresh interpreter, with this test's environment."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=60,
        check=False,
    )
