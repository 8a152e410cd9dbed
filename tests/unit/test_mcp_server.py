"""The MCP tools' logic without the protocol: confinement of reads to a sandbox's home.

A home here is a real directory holding what a hostile script could have left
in it (symlinks out, a FIFO, a binary file); the SDK and real runs are in
tests/integration/test_mcp.py.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from jhansi.config import load_settings
from jhansi.errors import InputError, JhansiError, UsageError
from jhansi.mcp_server import (
    MAX_READ_BYTES,
    AgentTools,
    _as_text,
    _relative_parts,
    read_confined,
)
from jhansi.paths import Paths


@pytest.fixture
def tools(jhansi_home: Path) -> AgentTools:
    paths = Paths.from_environment()
    return AgentTools(settings=load_settings(paths=paths), paths=paths)


@pytest.fixture
def home(jhansi_home: Path, tmp_path: Path) -> Path:
    """The home of a sandbox named ``box``, filled the way a hostile script could."""
    home = jhansi_home / "data" / "sandboxes" / "box" / "home"
    (home / "out").mkdir(parents=True)
    (home / "out" / "result.txt").write_text("forty-two\n")
    (home / "notes.txt").write_text("héllo wörld\n")
    (home / "blob.bin").write_bytes(bytes(range(256)))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret\n")
    (home / "to-secret").symlink_to(outside / "secret.txt")
    (home / "to-outside").symlink_to(outside)
    (home / "inside-link").symlink_to("out/result.txt")
    os.mkfifo(home / "pipe")
    return home


def test_relative_parts_refuse_ways_out() -> None:
    assert _relative_parts("out/result.txt") == ["out", "result.txt"]
    assert _relative_parts("./out//result.txt") == ["out", "result.txt"]
    assert _relative_parts("~/out/result.txt") == ["out", "result.txt"]
    assert _relative_parts("/home/sandbox/out/result.txt") == ["out", "result.txt"]
    for path in ("../x", "out/../../x", "/etc/passwd", "/home/sandbox/../x", "", ".", "a\x00b"):
        with pytest.raises(UsageError):
            _relative_parts(path)


def test_reads_text_binary_and_caps(tools: AgentTools, home: Path) -> None:
    text = tools.read_sandbox_file("box", "out/result.txt")
    assert text == {
        "sandbox": "box",
        "path": "out/result.txt",
        "size": 10,
        "truncated": False,
        "encoding": "utf-8",
        "content": "forty-two\n",
    }
    binary = tools.read_sandbox_file("box", "blob.bin", max_bytes=16)
    assert binary["encoding"] == "base64"
    assert base64.b64decode(binary["content"]) == bytes(range(16))
    assert binary["truncated"] is True
    assert binary["size"] == 256
    # a cap that cuts a UTF-8 sequence in two still gives text, one character shorter
    cut = tools.read_sandbox_file("box", "notes.txt", max_bytes=2)
    assert cut["encoding"] == "utf-8"
    assert cut["content"] == "h"
    assert cut["truncated"] is True


def test_refuses_every_way_out(tools: AgentTools, home: Path) -> None:
    refusals = {
        "to-secret": "symlink",
        "to-outside/secret.txt": "symlink",
        "inside-link": "symlink",  # not followed even when it stays inside
        "pipe": "not a regular file",
        "out": "a directory",
        "missing": "no such file",
        "out/result.txt/x": "not a directory",
    }
    for path, why in refusals.items():
        with pytest.raises(JhansiError) as caught:
            tools.read_sandbox_file("box", path)
        assert why in caught.value.message, (path, caught.value.message)
        assert "host secret" not in caught.value.message
    with pytest.raises(UsageError, match="no sandbox named 'other'"):
        tools.read_sandbox_file("other", "x")
    with pytest.raises(UsageError, match="invalid sandbox name"):
        tools.read_sandbox_file("../box", "out/result.txt")
    with pytest.raises(UsageError, match="max_bytes"):
        tools.read_sandbox_file("box", "out/result.txt", max_bytes=0)


def test_read_confined_never_reads_more_than_asked(home: Path) -> None:
    big = home / "big.txt"
    big.write_bytes(b"x" * (MAX_READ_BYTES + 10))
    data, size = read_confined(str(home), ["big.txt"], 100)
    assert data == b"x" * 100
    assert size == MAX_READ_BYTES + 10
    with pytest.raises(InputError, match="no such file"):
        read_confined(str(home), ["nothing"], 10)


def test_text_detection() -> None:
    assert _as_text(b"plain\n", truncated=False) == "plain\n"
    assert _as_text(b"nul\x00byte", truncated=False) is None
    assert _as_text(b"\xff\xfe", truncated=False) is None
    assert _as_text("é".encode()[:1], truncated=True) == ""


def test_verify_before_any_ledger_and_empty_list(tools: AgentTools) -> None:
    assert tools.list_sandboxes() == {"sandboxes": []}
    verified = tools.verify_ledger()
    assert verified["ok"] is True
    assert verified["exists"] is False


def test_run_python_checks_its_arguments_before_running(tools: AgentTools) -> None:
    with pytest.raises(UsageError, match="timeout_seconds"):
        tools.run_python("print(1)", timeout_seconds=0)
    with pytest.raises(UsageError, match="sequences of strings"):
        tools.run_python("print(1)", allowed_hosts="api.example.com")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="invalid sandbox name"):
        AgentTools(settings=tools.settings, paths=tools.paths, default_sandbox="Bad Name")
