"""The root command: version, help, and what start-up must not import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jhansi import __version__
from tests.unit.cli.conftest import Invoke

HEAVY = ("docker", "cyclonedx", "keyring", "cryptography", "pip_audit")


def test_version(cli: Invoke) -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.stdout.strip() == f"jhansi {__version__}"


def test_help_lists_commands(cli: Invoke) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("doctor", "config"):
        assert command in result.stdout


def test_unknown_command_is_a_usage_error(cli: Invoke) -> None:
    assert cli("frobnicate").code == 2


@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], ["doctor", "--help"], ["config", "show"]]
)
def test_startup_imports_no_heavy_module(argv: list[str]) -> None:
    """Checked in a fresh interpreter through ``-X importtime``, the real entry path."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jhansi", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "jhansi" in imported  # the check itself works
    assert not imported.intersection(HEAVY), sorted(imported.intersection(HEAVY))
