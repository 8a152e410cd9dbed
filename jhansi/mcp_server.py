"""``jhansi mcp``: jhansi as a Model Context Protocol server, for AI agents.

Four tools, served over stdio with the official ``mcp`` SDK:

- ``run_python``: run code (with optional requirements) in a named sandbox.
  Every call goes through the same :class:`~jhansi.runner.Runner` as
  ``jhansi run -``, so the dependency checks, the sandbox's hardening and the
  ledger apply unchanged; a refusal is a tool error the model can read.
- ``list_sandboxes``: the named sandboxes and their homes.
- ``read_sandbox_file``: a file from inside one sandbox's home, size-capped,
  never anything outside it (no ``..``, no absolute paths, no symlink that
  leads out, no FIFOs or devices).
- ``verify_ledger``: the ledger's chain, hashes, signatures and blobs.

:class:`AgentTools` holds the logic and raises :class:`~jhansi.errors.JhansiError`;
:func:`build_server` binds it to the SDK, whose import stays inside this
command (start-up time of every other command is a feature). On the stdio
transport stdout carries the protocol only: the runner's reporter drops
everything, and while serving the SDK points file descriptor 1 at stderr, so
that stray output of jhansi or its child processes cannot corrupt the stream.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

# pydantic (which the MCP SDK builds tool schemas with) needs typing_extensions'
# TypedDict below Python 3.12; the SDK depends on typing_extensions itself.
from typing_extensions import TypedDict

from jhansi.errors import InputError, JhansiError, UsageError

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from jhansi.config import Settings
    from jhansi.ledger.store import Ledger
    from jhansi.paths import Paths
    from jhansi.request import RunRequest
    from jhansi.result import RunResult
    from jhansi.runner import Runner
    from jhansi.sandbox.interface import Backend, OutputTail

#: The sandbox ``run_python`` uses when neither the call nor ``--sandbox`` names one.
DEFAULT_SANDBOX = "mcp"
#: How much of each output stream a tool result carries (the tail; the ledger has it all).
TAIL_CHARS = 16_384
#: ``read_sandbox_file`` never returns more than this, whatever ``max_bytes`` asks.
MAX_READ_BYTES = 1 << 20
#: Problems listed by ``verify_ledger`` (the count is always complete).
MAX_PROBLEMS = 20

INSTRUCTIONS = """\
jhansi runs Python code in a hardened sandbox: no network, a non-root user, the \
project at /work (writes land in the sandbox's own copy-on-write layer, never in \
the project), kernel-enforced limits, and a persistent home directory \
(/home/sandbox, $HOME) per named sandbox. Third-party imports are \
detected, locked and installed; an import no known package provides is refused \
until it is declared in `requirements`. Every run and every refusal is recorded in \
a tamper-evident ledger. Write files that must persist under $HOME and read them \
back with read_sandbox_file."""


class FileChanged(TypedDict):
    """One file a run added, modified or deleted."""

    area: str
    path: str
    change: str
    size: int | None
    blake3: str | None


class RunPythonResult(TypedDict):
    """What ``run_python`` returns."""

    status: str
    exit_code: int | None
    stdout_tail: str
    stderr_tail: str
    stdout_truncated: bool
    stderr_truncated: bool
    files_changed: list[FileChanged]
    run_id: str
    duration_ms: int
    ledger_record: str | None
    sandbox: str
    backend: str
    error: str


class SandboxEntry(TypedDict):
    """One named sandbox."""

    name: str
    created: str
    last_used: str
    runs: int
    size: int
    project: str | None


class SandboxList(TypedDict):
    """What ``list_sandboxes`` returns."""

    sandboxes: list[SandboxEntry]


class SandboxFile(TypedDict):
    """What ``read_sandbox_file`` returns: text, or base64 for binary content."""

    sandbox: str
    path: str
    size: int
    truncated: bool
    encoding: str
    content: str


class LedgerVerification(TypedDict):
    """What ``verify_ledger`` returns."""

    ok: bool
    path: str
    exists: bool
    records: int
    runs: int
    denied: int
    last_seq: int | None
    head_seq: int | None
    first_error: str | None
    errors: list[str]
    warnings: list[str]


def _tail(tail: OutputTail) -> tuple[str, bool]:
    text = tail.data.decode("utf-8", "replace")
    if len(text) > TAIL_CHARS:
        return text[-TAIL_CHARS:], True
    return text, tail.truncated


def allowed_hosts_fix(rules: list[str]) -> str:
    """How an agent allows ``rules``: the tool's own argument, not a CLI flag."""
    import json

    return f"allowed_hosts={json.dumps(rules)}"


def run_error(result: RunResult) -> str:
    """The result's ``error``: the sandbox's own, then what code with no network tried to
    reach and how to allow it (the code itself saw only a refusal from the proxy)."""
    if not result.egress:
        return result.error
    from jhansi.egress.attempts import run_hints

    lines = run_hints(
        result.egress,
        allowed_hosts_fix,
        who="the code",
        more="the run's ledger record lists them all",
        dropped=result.egress_dropped,
    )
    return "\n".join(part for part in (result.error, *lines) if part)


def run_result(result: RunResult) -> RunPythonResult:
    """The tool result of one run."""
    stdout, stdout_cut = _tail(result.stdout)
    stderr, stderr_cut = _tail(result.stderr)
    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "stdout_tail": stdout,
        "stderr_tail": stderr,
        "stdout_truncated": stdout_cut,
        "stderr_truncated": stderr_cut,
        "files_changed": [
            {
                "area": c.area,
                "path": c.path,
                "change": c.change,
                "size": c.size,
                "blake3": c.blake3,
            }
            for c in result.files_changed
        ],
        "run_id": result.run_id,
        "duration_ms": result.duration_ms,
        "ledger_record": result.record,
        "sandbox": result.sandbox,
        "backend": result.backend.backend,
        "error": run_error(result),
    }


def _relative_parts(path: str) -> list[str]:
    """The components of a path relative to a sandbox home; refuses ways out."""
    if "\x00" in path:
        raise UsageError("the path contains a NUL byte", hint="Name a file in the sandbox's home.")
    if path.startswith("~/"):
        path = path[2:]
    elif path.startswith("/home/sandbox/"):
        path = path.removeprefix("/home/sandbox/")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise UsageError(
            f"{path!r} is an absolute path",
            hint="Name the file relative to the sandbox's home, e.g. 'results/out.csv'.",
        )
    parts = [p for p in pure.parts if p != "."]
    if ".." in parts:
        raise UsageError(
            f"{path!r} leads out of the sandbox's home ('..')",
            hint="Only files inside the sandbox's home can be read.",
        )
    if not parts:
        raise UsageError("no file named", hint="Name a file in the sandbox's home.")
    return parts


def read_confined(home: str, parts: Sequence[str], max_bytes: int) -> tuple[bytes, int]:
    """Read at most ``max_bytes`` of the regular file ``home/parts``, never leaving ``home``.

    Each component is opened relative to the directory before it with
    ``O_NOFOLLOW``: a symlink anywhere on the way (which the sandbox could point
    anywhere, or swap in between a check and an open) is refused, not followed.
    ``O_NONBLOCK`` keeps a FIFO the sandbox left from hanging the server. Returns
    the bytes and the file's size.
    """
    shown = "/".join(parts)
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = os.O_RDONLY | nofollow | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                where = "/".join(parts[: index + 1])
                if exc.errno == errno.ENOENT:
                    raise InputError(
                        f"no such file in the sandbox's home: {shown}",
                        hint="See what is there with run_python: os.listdir(os.environ['HOME'])",
                    ) from None
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UsageError(
                        f"{where} is a symlink or not a directory: not followed",
                        hint="Symlinks in a sandbox's home are not followed; read the file itself.",
                    ) from None
                raise InputError(
                    f"cannot open {shown}: {exc.strerror or exc}", hint="Check the path."
                ) from None
            os.close(fd)
            fd = child
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise UsageError(f"{shown} is {kind}", hint="Name a regular file.")
        chunks: list[bytes] = []
        remaining = max_bytes
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), info.st_size
    finally:
        os.close(fd)


def _as_text(data: bytes, truncated: bool) -> str | None:
    """``data`` as text, or ``None`` when it is binary."""
    if b"\x00" in data:
        return None
    for cut in range(4 if truncated else 1):  # a cut may split a UTF-8 sequence
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


class AgentTools:
    """The tools' logic, independent of the protocol; each raises :class:`JhansiError`.

    Runs are serialized (one at a time per server): the backend and the ledger
    are shared between calls, and a run in a named sandbox holds it anyway.
    """

    def __init__(
        self, *, settings: Settings, paths: Paths, default_sandbox: str = DEFAULT_SANDBOX
    ) -> None:
        from jhansi.sandbox.workspace import validate_name

        self.settings = settings
        self.paths = paths
        self.default_sandbox = validate_name(default_sandbox)
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._ledger: Ledger | None = None

    def _runner(self, request: RunRequest) -> Runner:
        from jhansi.overrides import with_overrides
        from jhansi.runner import Runner

        settings = with_overrides(self.settings, request.overrides)
        runner = Runner.from_settings(
            settings, paths=self.paths, backend=self._backend, ledger=self._ledger
        )
        self._ledger = runner.ledger
        return runner

    def run_python(
        self,
        code: str,
        *,
        requirements: Sequence[str] = (),
        sandbox: str | None = None,
        timeout_seconds: float | None = None,
        allowed_hosts: Sequence[str] = (),
        secrets: Sequence[str] = (),
    ) -> RunPythonResult:
        """Run ``code`` in a sandbox through the runner; the script's failure is data."""
        from jhansi.api import make_request

        if timeout_seconds is not None and not timeout_seconds > 0:
            raise UsageError(
                f"timeout_seconds must be positive, not {timeout_seconds}",
                hint="Give a number of seconds, or leave it out for the configured timeout.",
            )
        request = make_request(
            code=code,
            requirements=requirements,
            sandbox=sandbox or self.default_sandbox,
            allowed_hosts=allowed_hosts,
            secrets=secrets,
            timeout=timeout_seconds,
        )
        with self._lock:
            runner = self._runner(request)
            result = runner.run(request)
            self._backend = runner.backend
        return run_result(result)

    def list_sandboxes(self) -> SandboxList:
        """The named sandboxes, most recently used first."""
        from jhansi.sandbox.workspace import Workspace

        entries = Workspace.from_paths(self.paths).entries()
        return {
            "sandboxes": [
                {
                    "name": s.name,
                    "created": s.created,
                    "last_used": s.last_used,
                    "runs": s.runs,
                    "size": s.size,
                    "project": s.project,
                }
                for s in entries
            ]
        }

    def read_sandbox_file(self, sandbox: str, path: str, max_bytes: int = 65536) -> SandboxFile:
        """Up to ``max_bytes`` of a file in the home of ``sandbox``: text, else base64."""
        from jhansi.sandbox.workspace import Workspace, validate_name

        name = validate_name(sandbox)
        workspace = Workspace.from_paths(self.paths)
        if not workspace.exists(name):
            raise UsageError(
                f"no sandbox named {name!r}",
                hint="list_sandboxes shows them; run_python with sandbox=NAME creates one.",
            )
        if max_bytes <= 0:
            raise UsageError("max_bytes must be positive", hint="Ask for at least one byte.")
        cap = min(max_bytes, MAX_READ_BYTES)
        parts = _relative_parts(path)
        data, size = read_confined(str(workspace.home(name)), parts, cap)
        truncated = size > len(data)
        text = _as_text(data, truncated)
        if text is not None:
            truncated = truncated or len(text.encode()) < len(data)
            return {
                "sandbox": name,
                "path": "/".join(parts),
                "size": size,
                "truncated": truncated,
                "encoding": "utf-8",
                "content": text,
            }
        return {
            "sandbox": name,
            "path": "/".join(parts),
            "size": size,
            "truncated": truncated,
            "encoding": "base64",
            "content": base64.b64encode(data).decode("ascii"),
        }

    def verify_ledger(self) -> LedgerVerification:
        """Verify the whole ledger with this machine's signing key, as ``jhansi ledger verify``."""
        from jhansi.ledger.checkpoint import key_path, read_public_key
        from jhansi.ledger.layout import resolve_directory
        from jhansi.ledger.read import exists
        from jhansi.ledger.verify import verify_ledger

        directory = resolve_directory(self.settings, self.paths)
        if not exists(directory):
            return {
                "ok": True,
                "path": str(directory),
                "exists": False,
                "records": 0,
                "runs": 0,
                "denied": 0,
                "last_seq": None,
                "head_seq": None,
                "first_error": None,
                "errors": [],
                "warnings": [],
            }
        local = read_public_key(key_path(self.paths))
        report = verify_ledger(
            directory, trusted_keys=frozenset({local.hex()}) if local is not None else None
        )
        first = report.first_error
        return {
            "ok": report.ok,
            "path": report.path,
            "exists": True,
            "records": report.records,
            "runs": report.runs,
            "denied": report.denied,
            "last_seq": report.last_seq,
            "head_seq": report.head.get("seq") if report.head else None,
            "first_error": first.describe() if first else None,
            "errors": [p.describe() for p in report.errors[:MAX_PROBLEMS]],
            "warnings": [p.describe() for p in report.warnings[:MAX_PROBLEMS]],
        }


def _tool_error(exc: JhansiError) -> Exception:
    """A refusal as the SDK's anticipated tool error: the model reads message and hint."""
    from mcp.server.mcpserver.exceptions import ToolError

    text = f"{type(exc).__name__} (exit {int(exc.exit_code)}): {exc.message}"
    if exc.hint:
        text += f"\nhint: {exc.hint}"
    return ToolError(text)


def build_server(tools: AgentTools) -> MCPServer[Any]:
    """The SDK's ``MCPServer`` with the four tools bound to ``tools``."""
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ToolAnnotations

    from jhansi._version import __version__

    server: MCPServer[Any] = MCPServer(
        name="jhansi", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )

    @server.tool(
        annotations=ToolAnnotations(
            title="Run Python in a sandbox", destructive_hint=False, open_world_hint=False
        )
    )
    def run_python(
        code: str,
        requirements: Sequence[str] = (),
        sandbox: str | None = None,
        timeout_seconds: float | None = None,
        allowed_hosts: Sequence[str] = (),
        secrets: Sequence[str] = (),
    ) -> RunPythonResult:
        """Run Python code in a hardened jhansi sandbox and return how it ended.

        No network unless asked for; $HOME (/home/sandbox) persists per named sandbox (default
        "mcp"); third-party imports are detected and installed, and
        `requirements` (e.g. ["requests>=2.32"]) declares packages explicitly. A
        script's failure is a result (status "failed", its exit code, stderr);
        a refusal (unresolved import, syntax error, policy) is a tool error.
        `allowed_hosts` (e.g. ["api.example.com"]) may be reached over HTTPS
        through jhansi's egress proxy (code that tries the network without them
        fails, and `error` names each host it tried and the `allowed_hosts` value
        that allows it); `secrets` (e.g. ["API_KEY@api.example.com"],
        or names bound in the user's configuration) appear in the sandbox as
        placeholders that the proxy replaces with the real key only on requests
        to their hosts: the code never sees a key.
        """
        try:
            return tools.run_python(
                code,
                requirements=list(requirements),
                sandbox=sandbox,
                timeout_seconds=timeout_seconds,
                allowed_hosts=list(allowed_hosts),
                secrets=list(secrets),
            )
        except JhansiError as exc:
            raise _tool_error(exc) from None

    @server.tool(annotations=ToolAnnotations(title="List sandboxes", read_only_hint=True))
    def list_sandboxes() -> SandboxList:
        """List the named sandboxes: runs, size of the home, created, last used."""
        try:
            return tools.list_sandboxes()
        except JhansiError as exc:
            raise _tool_error(exc) from None

    @server.tool(annotations=ToolAnnotations(title="Read a sandbox file", read_only_hint=True))
    def read_sandbox_file(sandbox: str, path: str, max_bytes: int = 65536) -> SandboxFile:
        """Read a file from a sandbox's home, relative to it (e.g. "out/result.json").

        Only files inside that home; symlinks are not followed. Returns UTF-8
        text, or base64 for binary content, and at most `max_bytes` (up to 1 MiB).
        """
        try:
            return tools.read_sandbox_file(sandbox, path, max_bytes)
        except JhansiError as exc:
            raise _tool_error(exc) from None

    @server.tool(annotations=ToolAnnotations(title="Verify the ledger", read_only_hint=True))
    def verify_ledger() -> LedgerVerification:
        """Verify the execution ledger: hash chain, signatures, signed head and blobs."""
        try:
            return tools.verify_ledger()
        except JhansiError as exc:
            raise _tool_error(exc) from None

    return server


def serve(tools: AgentTools) -> None:
    """Serve the tools over stdio until the client closes the stream."""
    build_server(tools).run("stdio")
