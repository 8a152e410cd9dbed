"""``jhansi mcp`` driven by the official MCP SDK's client over stdio, on bubblewrap.

Nothing is mocked: the server is ``python -m jhansi mcp`` as a subprocess, the
client is ``mcp.client.stdio.stdio_client`` with a ``ClientSession``, and every
``run_python`` goes through the real runner, sandbox and ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import backend_env, require_backend

pytestmark = pytest.mark.bwrap

WRITE_AND_PRINT = """\
import os
home = os.environ["HOME"]
os.makedirs(os.path.join(home, "out"), exist_ok=True)
with open(os.path.join(home, "out", "result.txt"), "w") as handle:
    handle.write("forty-two\\n")
with open(os.path.join(home, "blob.bin"), "wb") as handle:
    handle.write(bytes(range(256)))
os.symlink("/etc/passwd", os.path.join(home, "escape"))
os.symlink("/etc", os.path.join(home, "etcdir"))
print("hello from the agent's code")
"""

Session = Any


def _serve(project: Path, body: Callable[[Session], Awaitable[None]], *extra: str) -> None:
    """Start ``jhansi mcp --backend bwrap`` in ``project`` and run ``body`` with a session."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "jhansi", "mcp", "--backend", "bwrap", *extra],
        env={**os.environ, **backend_env("bwrap")},
        cwd=project,
    )

    async def main() -> None:
        with anyio.fail_after(240):
            async with (
                stdio_client(params) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                await body(session)

    anyio.run(main)


def _structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data = result.structured_content
    assert isinstance(data, dict)
    # the text content carries the same document, for clients without structured output
    assert json.loads(result.content[0].text) == data
    return data


def _error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return "\n".join(block.text for block in result.content)


@pytest.fixture
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    require_backend(request, "bwrap")
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "agent-project"\n')
    return root


def test_tools_run_list_read_verify(project: Path, jhansi_home: Path) -> None:
    async def body(session: Session) -> None:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == {"run_python", "list_sandboxes", "read_sandbox_file", "verify_ledger"}
        parameters = tools["run_python"].input_schema["properties"]
        assert {
            "code",
            "requirements",
            "sandbox",
            "timeout_seconds",
            "allowed_hosts",
            "secrets",
        } <= set(parameters)
        assert tools["run_python"].output_schema is not None

        ran = _structured(
            await session.call_tool("run_python", {"code": WRITE_AND_PRINT, "sandbox": "agent"})
        )
        assert ran["status"] == "succeeded", ran
        assert ran["exit_code"] == 0
        assert ran["stdout_tail"] == "hello from the agent's code\n"
        assert ran["sandbox"] == "agent"
        assert ran["backend"] == "bwrap"
        assert ran["duration_ms"] >= 0
        assert len(ran["ledger_record"]) == 64
        changed = {(c["path"], c["change"]) for c in ran["files_changed"]}
        assert ("out/result.txt", "added") in changed
        assert ("blob.bin", "added") in changed

        failed = _structured(
            await session.call_tool(
                "run_python", {"code": "import sys\nsys.exit('no luck')", "sandbox": "agent"}
            )
        )
        assert failed["status"] == "failed"
        assert failed["exit_code"] == 1
        assert "no luck" in failed["stderr_tail"]

        listed = _structured(await session.call_tool("list_sandboxes", {}))
        entry = {s["name"]: s for s in listed["sandboxes"]}["agent"]
        assert entry["runs"] == 2
        assert entry["size"] > 256

        text = _structured(
            await session.call_tool(
                "read_sandbox_file", {"sandbox": "agent", "path": "out/result.txt"}
            )
        )
        assert text["encoding"] == "utf-8"
        assert text["content"] == "forty-two\n"
        assert text["truncated"] is False
        # the path the sandbox itself sees works too
        same = _structured(
            await session.call_tool(
                "read_sandbox_file", {"sandbox": "agent", "path": "/home/sandbox/out/result.txt"}
            )
        )
        assert same["content"] == "forty-two\n"

        binary = _structured(
            await session.call_tool(
                "read_sandbox_file", {"sandbox": "agent", "path": "blob.bin", "max_bytes": 100}
            )
        )
        import base64

        assert binary["encoding"] == "base64"
        assert base64.b64decode(binary["content"]) == bytes(range(100))
        assert binary["size"] == 256
        assert binary["truncated"] is True

        # ways out of the home are refused, and say why
        escapes = {
            "../meta.json": "leads out",
            "out/../../meta.json": "leads out",
            "/etc/passwd": "absolute",
            "escape": "symlink",
            "etcdir/passwd": "symlink",
            "out": "directory",
            "missing.txt": "no such file",
        }
        for path, why in escapes.items():
            refused = await session.call_tool(
                "read_sandbox_file", {"sandbox": "agent", "path": path}
            )
            message = _error_text(refused)
            assert why in message, (path, message)
            assert "root:" not in message
        unknown = await session.call_tool("read_sandbox_file", {"sandbox": "nobody", "path": "x"})
        assert "no sandbox named 'nobody'" in _error_text(unknown)
        bad_name = await session.call_tool(
            "read_sandbox_file", {"sandbox": "../agent", "path": "out/result.txt"}
        )
        assert "invalid sandbox name" in _error_text(bad_name)

        verified = _structured(await session.call_tool("verify_ledger", {}))
        assert verified["ok"] is True, verified
        assert verified["exists"] is True
        assert verified["runs"] == 2
        assert verified["errors"] == []
        assert verified["head_seq"] == verified["last_seq"]

    _serve(project, body)
    # the runs are the ledger's, as `jhansi ledger log` shows them
    log = subprocess.run(
        [sys.executable, "-m", "jhansi", "ledger", "log", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    runs = json.loads(log.stdout)["runs"]
    assert [run["status"] for run in runs] == ["succeeded", "failed"]
    assert {run["sandbox"] for run in runs} == {"agent"}


def test_refusals_are_tool_errors_and_recorded(project: Path) -> None:
    async def body(session: Session) -> None:
        unresolved = await session.call_tool(
            "run_python", {"code": "import quantumflux_helpers\nprint(1)\n"}
        )
        text = _error_text(unresolved)
        assert "DependencyError (exit 7)" in text
        assert "quantumflux_helpers" in text
        assert "hint:" in text

        syntax = await session.call_tool("run_python", {"code": "print('unclosed'\n"})
        assert "InputError (exit 6)" in _error_text(syntax)

        egress = await session.call_tool(
            "run_python",
            {"code": "print(1)", "allowed_hosts": ["api.example.com"], "secrets": ["API_KEY"]},
        )
        # API_KEY is bound to no host here (no [secrets.API_KEY]): refused, nothing runs
        assert "API_KEY" in _error_text(egress)
        assert "no hosts are bound" in _error_text(egress)

        timeout = _structured(
            await session.call_tool(
                "run_python", {"code": "import time\ntime.sleep(60)", "timeout_seconds": 1}
            )
        )
        assert timeout["status"] == "timed_out"
        # the sandbox a call names none of is the one --sandbox gave
        assert timeout["sandbox"] == "from-flag"

        verified = _structured(await session.call_tool("verify_ledger", {}))
        assert verified["ok"] is True
        # the unresolved import, the syntax error and the unbound secret
        assert verified["denied"] == 3
        assert verified["runs"] == 1

    _serve(project, body, "--sandbox", "from-flag")


def test_code_with_no_network_is_told_to_use_allowed_hosts(project: Path) -> None:
    """The tool's words for the fix are its own argument, not the CLI's flag."""
    code = (
        "import urllib.request\n"
        "print(urllib.request.urlopen('https://api.github.com/zen', timeout=10).read())\n"
    )

    async def body(session: Session) -> None:
        ran = _structured(await session.call_tool("run_python", {"code": code}))
        assert ran["status"] == "failed"
        assert ran["exit_code"] == 1
        assert ran["error"] == (
            "the code tried to reach api.github.com:443 (refused: no network); "
            'allow it with allowed_hosts=["api.github.com"]'
        )
        assert "403 Forbidden (jhansi: no network)" in ran["stderr_tail"]

    _serve(project, body)


def test_verify_before_any_run(project: Path) -> None:
    async def body(session: Session) -> None:
        verified = _structured(await session.call_tool("verify_ledger", {}))
        assert verified == {
            **verified,
            "ok": True,
            "exists": False,
            "records": 0,
            "runs": 0,
        }
        listed = _structured(await session.call_tool("list_sandboxes", {}))
        assert listed == {"sandboxes": []}

    _serve(project, body)


def test_stdout_carries_only_the_protocol(project: Path) -> None:
    """Speak JSON-RPC by hand: every line jhansi writes on stdout must be a protocol message.

    The code run writes to its stdout and stderr; none of it may reach the wire
    except inside the tool's result.
    """
    plain = project.parent / "plain"
    plain.mkdir()
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-test", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "run_python",
                "arguments": {
                    "code": "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n"
                },
            },
        },
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jhansi", "mcp", "--backend", "bwrap"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=plain,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    replies: dict[int, dict[str, Any]] = {}
    try:
        for message in messages:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            if "id" not in message:
                continue
            while message["id"] not in replies:
                line = proc.stdout.readline()
                assert line, "the server closed stdout"
                document = json.loads(line)  # anything but JSON fails here
                assert document["jsonrpc"] == "2.0"
                if "id" in document:
                    replies[document["id"]] = document
        rest, errors = proc.communicate(timeout=60)  # closes stdin: the server ends
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    result = replies[2]["result"]
    assert result.get("isError") is not True, result
    assert result["structuredContent"]["stdout_tail"] == "to stdout\n"
    assert result["structuredContent"]["stderr_tail"] == "to stderr\n"
    assert "to stdout" not in errors
    assert proc.returncode == 0, errors
