"""Hostile inputs never crash jhansi: two lines, a documented exit code, a denial record.

Each input below once gave a Python traceback and exit 1 with nothing recorded, or
ran the host's parser for minutes at gigabytes. Through real ``jhansi run``
subprocesses: every one must be refused before any sandbox starts, with exit 6
(input) or 7 (dependencies), no traceback, an ``exec.denied`` record, and in
bounded time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_jhansi

CASES = {
    "unary-chain": (b"x = " + b"-" * 200_000 + b"1\n", 6, "nests too deeply"),
    "binary-chain": (b"x = 1" + b" + 1" * 50_000 + b"\n", 6, "nests too deeply"),
    "long-valid-chain": (b"import os\nx = 1" + b" + 1" * 1_500 + b"\nprint(x)\n", 0, ""),
    "toml-brackets": (
        b"# /// script\n# dependencies = " + b"[" * 100_000 + b"\n# ///\nprint(1)\n",
        6,
        "PEP 723 block refused",
    ),
    "nul-in-marker": (
        b"# /// script\n"
        b"# dependencies = [\"requests; python_version > '3.8\\u0000'\"]\n"
        b"# ///\nimport requests\n",
        6,
        "control character",
    ),
    "huge-script": (b"x = 1\n" * 4_000_000, 6, "are refused unparsed"),
}


def _records(ledger: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (ledger / "ledger.jsonl").read_bytes().splitlines()]


@pytest.mark.bwrap
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_script_is_refused_cleanly_and_recorded(
    case: str, bwrap_path: Path, tmp_path: Path, shared_dir: Path
) -> None:
    content, code, fragment = CASES[case]
    script = shared_dir / "hostile.py"  # readable by the sandbox's uid (never root)
    script.write_bytes(content)
    ledger = tmp_path / "ledger"
    env = {"JHANSI_LEDGER": str(ledger), "JHANSI_SANDBOX_BACKEND": "bwrap"}
    started = time.monotonic()
    proc = run_jhansi("run", "--ephemeral", str(script), env=env, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 30, f"{case} took {elapsed:.1f} s of host time"
    kinds = [r["kind"] for r in _records(ledger)]
    if code == 0:
        assert "exec.end" in kinds
        return
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, proc.stderr
    assert fragment in lines[0]
    assert kinds.count("exec.denied") == 1
    assert "exec.start" not in kinds
    denied = next(r for r in _records(ledger) if r["kind"] == "exec.denied")
    assert denied["body"]["reason"]["exit_code"] == code  # type: ignore[index]
    verified = run_jhansi("ledger", "verify", "--ledger", str(ledger))
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.bwrap
@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"print(1)\n" + b"#" * (2 << 20), "are refused unparsed"),
        (b"print('\xff\xfe')\n", "not UTF-8"),
    ],
    ids=["too-large", "not-utf8"],
)
def test_hostile_stdin_is_refused_cleanly_and_recorded(
    data: bytes, fragment: str, bwrap_path: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    env = {**os.environ, "JHANSI_LEDGER": str(ledger), "JHANSI_SANDBOX_BACKEND": "bwrap"}
    proc = subprocess.run(
        [sys.executable, "-m", "jhansi", "run", "--ephemeral", "-"],
        input=data,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 6, stderr
    assert "Traceback" not in stderr
    assert fragment in stderr
    assert [r["kind"] for r in _records(ledger)].count("exec.denied") == 1


@pytest.mark.bwrap
def test_the_size_cap_is_a_setting(bwrap_path: Path, shared_dir: Path) -> None:
    script = shared_dir / "big.py"
    script.write_text("x = 1\n" * 50_000 + "print('ran')\n")  # 300 kB, under the default
    env = {"JHANSI_SANDBOX_BACKEND": "bwrap", "JHANSI_SANDBOX_MAX_SCRIPT_SIZE": "256k"}
    refused = run_jhansi("run", "--ephemeral", str(script), env=env)
    assert refused.returncode == 6
    assert "over 256k" in refused.stderr
    env["JHANSI_SANDBOX_MAX_SCRIPT_SIZE"] = "1m"
    ran = run_jhansi("run", "--ephemeral", "-q", str(script), env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "ran\n"
