"""``jhansi config show`` and how the CLI reports a bad configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.cli.conftest import Invoke


def test_show_prints_values_and_sources(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jhansi.toml").write_text('[sandbox]\nmemory = "512m"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JHANSI_SANDBOX_PIDS", "64")
    result = cli("config", "show", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "ok"
    assert doc["settings"]["sandbox"]["memory"] == 512 << 20
    assert doc["settings"]["sandbox"]["pids"] == 64
    assert doc["sources"]["sandbox.memory"].startswith("project config (")
    assert doc["sources"]["sandbox.pids"] == "environment (JHANSI_SANDBOX_PIDS)"
    assert doc["files"] == [str(tmp_path / "jhansi.toml")]

    table = cli("config", "show")
    assert table.code == 0
    assert "512m" in table.stdout
    assert "sandbox.pids" in table.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[sandbox]\nmemroy = '1g'\n", "unknown key [sandbox] memroy"),
        ("[sandbox]\ntimeout = 'soon'\n", "expected a duration such as 300, 30s or 5m"),
        ("[sandbox]\nmemory = \n", "is not valid TOML"),
    ],
)
def test_malformed_config_exits_2_with_two_lines(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    (tmp_path / "jhansi.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    result = cli("config", "show")
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: ")
    assert str(tmp_path / "jhansi.toml") in lines[0]
    assert expected in lines[0]
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stderr


def test_error_under_json_is_a_json_document(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jhansi.toml").write_text("[sandbox]\npids = 0\n")
    monkeypatch.chdir(tmp_path)
    result = cli("config", "show", "--json")
    assert result.code == 2
    doc = json.loads(result.stdout)
    assert doc["status"] == "error"
    assert doc["error"]["exit_code"] == 2
    assert "[sandbox] pids" in doc["error"]["message"]


def test_debug_shows_the_traceback(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jhansi.toml").write_text("[sandbox]\npids = 0\n")
    monkeypatch.chdir(tmp_path)
    result = cli("--debug", "config", "show")
    assert result.code == 2
    assert "Traceback" in result.stderr
