"""Each option of ``jhansi run`` reaches the runner from the CLI, the Python API and MCP.

The options are enumerated from the command Typer builds, so a new option fails
here until it has a case: how each interface passes it, and what the runner then
receives, or why an interface does not offer it (a sentence in the table below).

The one stand-in is at the runner's boundary: :class:`RecordingRunner`, a real
subclass of :class:`~jhansi.runner.Runner` whose ``run`` records the request it
is given (with the settings and reporter it was made with) and stops there, before
the ledger or a sandbox. Everything in front of it is real: Click's parsing and the
fast path's, ``jhansi.run``'s keywords, the MCP SDK's tool binding and argument
validation, the settings' layering.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import typer
from mcp.server.mcpserver.exceptions import UnexpectedToolError

import jhansi
import jhansi.runner
from jhansi.cli._fastpath import parse_run, run_fast
from jhansi.cli._state import CliState
from jhansi.cli.app import app
from jhansi.config import load_settings
from jhansi.mcp_server import AgentTools, build_server
from jhansi.paths import Paths
from jhansi.request import RunRequest
from jhansi.runner import Runner

#: What one interface passes: its arguments, and the values (by dotted path on
#: :class:`Seen`: ``request.…``, ``settings.…``, ``reporter.…``) the runner gets.
Given = tuple[Any, dict[str, object]]


@dataclass(frozen=True)
class Case:
    """One option of ``jhansi run`` through the three interfaces; a ``str`` is why an
    interface does not offer it."""

    cli: Given
    api: Given | str
    mcp: Given | str


class Reached(Exception):
    """Raised by :class:`RecordingRunner` in place of a run: the request got there."""


@dataclass
class Seen:
    """What the runner was made with and given."""

    request: RunRequest
    settings: Any
    reporter: Any


@dataclass
class Recorder:
    """The runs that reached the runner, in order."""

    seen: list[Seen] = field(default_factory=list)

    def last(self) -> Seen:
        assert self.seen, "nothing reached the runner"
        return self.seen[-1]


def _overridden(value: str, setting: str, parsed: object, api: object = None) -> Case:
    """A settings override (``--NAME VALUE``) the API offers too, as ``NAME=api``; MCP
    leaves it to the server's settings."""
    name = setting.rsplit(".", 1)[1]
    api = value if api is None else api
    return Case(
        cli=(
            [f"--{name.replace('_', '-')}", value],
            {f"request.overrides.{name}": value, f"settings.{setting}": parsed},
        ),
        api=({name: api}, {f"request.overrides.{name}": api, f"settings.{setting}": parsed}),
        mcp=SERVER_SETTING,
    )


SERVER_SETTING = (
    "the server's, for every call: `jhansi mcp --backend/--image` or the configuration, "
    "never the agent's to choose"
)
HOST_PATH = "names a file or directory on the host: an agent gets no say over the host's files"
LIMIT = "a limit is the user's (configuration), not the agent's to raise; only timeout is"
NOT_IN_API = "jhansi.run does not offer it"
PRESENTATION = "the terminal's: nothing is printed, the result is data"
AUDIT_MCP = "the tool call carries the code only; the client says nothing of where it came from"

#: Every parameter of ``jhansi run`` (by its name in :func:`jhansi.cli.run.run`), as the
#: CLI passes it (the argv before SCRIPT, or SCRIPT and after for the arguments).
CASES: dict[str, Case] = {
    "script": Case(
        cli=(["s.py"], {"request.script": Path("s.py")}),
        api=({"script": "s.py"}, {"request.script": Path("s.py")}),
        mcp="an agent sends code (`code`, as `jhansi run -`), never a path on the host",
    ),
    "args": Case(
        cli=(["s.py", "one", "--two"], {"request.args": ("one", "--two")}),
        api=({"args": ["one", "--two"]}, {"request.args": ("one", "--two")}),
        mcp="code from an agent takes no command line",
    ),
    "backend": _overridden("bwrap", "sandbox.backend", "bwrap"),
    "image": _overridden("example.org/img:1", "sandbox.image", "example.org/img:1"),
    "python": _overridden("python3", "sandbox.python", "python3"),
    "runtime": _overridden("runsc", "sandbox.runtime", "runsc"),
    "sandbox": Case(
        cli=(["--sandbox", "box"], {"request.sandbox": "box"}),
        api=({"sandbox": "box"}, {"request.sandbox": "box"}),
        mcp=({"sandbox": "box"}, {"request.sandbox": "box"}),
    ),
    "ephemeral": Case(
        cli=(["--ephemeral"], {"request.ephemeral": True}),
        api=({"ephemeral": True}, {"request.ephemeral": True}),
        mcp="an agent's sandbox keeps its home, which read_sandbox_file reads back",
    ),
    "project": Case(
        cli=(["--project", "proj"], {"request.project": Path("proj")}),
        api=({"project": "proj"}, {"request.project": Path("proj")}),
        mcp=HOST_PATH + " (the project is the server's working directory)",
    ),
    "rw": Case(
        cli=(["--rw"], {"request.rw": True}),
        api=({"rw": True}, {"request.rw": True}),
        mcp="writing the project itself is the user's decision: an agent's writes stay "
        "in its sandbox's layer",
    ),
    "env": Case(
        cli=(["-e", "A=1", "--env", "B=2=3"], {"request.env": (("A", "1"), ("B", "2=3"))}),
        api=({"env": {"A": "1", "B": "2=3"}}, {"request.env": (("A", "1"), ("B", "2=3"))}),
        mcp="an agent writes its values into its code; keys go through `secrets`",
    ),
    "memory": _overridden("2g", "sandbox.memory", 2 << 30),
    "cpus": _overridden("0.5", "sandbox.cpus", 0.5, api=0.5),
    "pids": _overridden("9", "sandbox.pids", 9, api=9),
    "tmp_size": _overridden("1m", "sandbox.tmp_size", 1 << 20),
    "timeout": Case(
        cli=(
            ["--timeout", "90s"],
            {"request.overrides.timeout": "90s", "settings.sandbox.timeout": 90.0},
        ),
        api=(
            {"timeout": "90s"},
            {"request.overrides.timeout": "90s", "settings.sandbox.timeout": 90.0},
        ),
        mcp=(
            {"timeout_seconds": 90},
            {"request.overrides.timeout": 90, "settings.sandbox.timeout": 90.0},
        ),
    ),
    "output_limit": _overridden("4k", "sandbox.output_limit", 4096),
    "with_requirements": Case(
        cli=(
            ["--with", "requests>=2", "--with", "rich"],
            {"request.with_requirements": ("requests>=2", "rich")},
        ),
        api=(
            {"requirements": ["requests>=2", "rich"]},
            {"request.with_requirements": ("requests>=2", "rich")},
        ),
        mcp=(
            {"requirements": ["requests>=2", "rich"]},
            {"request.with_requirements": ("requests>=2", "rich")},
        ),
    ),
    "requirements_file": Case(
        cli=(["--requirements", "req.txt"], {"request.requirements_file": Path("req.txt")}),
        api=({"requirements_file": "req.txt"}, {"request.requirements_file": Path("req.txt")}),
        mcp=HOST_PATH + " (an agent declares packages in `requirements`)",
    ),
    "lock_file": Case(
        cli=(["--lock-file", "l.toml"], {"request.lock_file": Path("l.toml")}),
        api=NOT_IN_API + ": the lock goes to its default place, beside the script",
        mcp=HOST_PATH,
    ),
    "frozen": Case(
        cli=(["--frozen"], {"request.frozen": True}),
        api=({"frozen": True}, {"request.frozen": True}),
        mcp="freezing locks is CI's, on the user's scripts; an agent's code has none",
    ),
    "upgrade": Case(
        cli=(["--upgrade"], {"request.upgrade": True}),
        api=NOT_IN_API + ": a lock is re-resolved when the requirements change",
        mcp="how dependencies resolve is the user's, not the agent's",
    ),
    "exclude_newer": Case(
        cli=(["--exclude-newer", "2024-01-01"], {"request.exclude_newer": "2024-01-01"}),
        api=NOT_IN_API + ": the newest releases are resolved",
        mcp="how dependencies resolve is the user's, not the agent's",
    ),
    "prompt": Case(
        cli=(["--prompt", "add two numbers"], {"request.prompt": "add two numbers"}),
        api=({"prompt": "add two numbers"}, {"request.prompt": "add two numbers"}),
        mcp=AUDIT_MCP,
    ),
    "prompt_file": Case(
        cli=(["--prompt-file", "prompt.txt"], {"request.prompt": "from a file\n"}),
        api="a caller passes the text itself, as prompt=",
        mcp=AUDIT_MCP,
    ),
    "model": Case(
        cli=(["--model", "m-1"], {"request.model": "m-1"}),
        api=({"model": "m-1"}, {"request.model": "m-1"}),
        mcp=AUDIT_MCP,
    ),
    "ledger": Case(
        cli=(
            ["--ledger", "led"],
            {"request.overrides.ledger": Path("led"), "settings.ledger.path": "<cwd>/led"},
        ),
        api=(
            {"ledger": "led"},
            {"request.overrides.ledger": "led", "settings.ledger.path": "<cwd>/led"},
        ),
        mcp="one ledger per server: `jhansi mcp --ledger`",
    ),
    "secrets": Case(
        cli=(["--secret", "KEY@api.example.com"], {"request.secrets": ("KEY@api.example.com",)}),
        api=({"secrets": ["KEY@api.example.com"]}, {"request.secrets": ("KEY@api.example.com",)}),
        mcp=({"secrets": ["KEY@api.example.com"]}, {"request.secrets": ("KEY@api.example.com",)}),
    ),
    "allow_hosts": Case(
        cli=(["--allow-host", "api.example.com"], {"request.allow_hosts": ("api.example.com",)}),
        api=({"allowed_hosts": ["api.example.com"]}, {"request.allow_hosts": ("api.example.com",)}),
        mcp=({"allowed_hosts": ["api.example.com"]}, {"request.allow_hosts": ("api.example.com",)}),
    ),
    "advisory_db": Case(
        cli=(
            ["--advisory-db", "osv"],
            {
                "request.overrides.advisory_db": Path("osv"),
                "settings.policy.advisory_db": "<cwd>/osv",
            },
        ),
        api=NOT_IN_API + ": the configuration's policy.advisory_db applies",
        mcp=HOST_PATH + " (the configuration's policy.advisory_db applies)",
    ),
    "sbom": Case(
        cli=(["--sbom", "bom.json"], {"request.sbom": Path("bom.json")}),
        api=NOT_IN_API + ": the SBOM is recorded in the ledger (Runner.sbom returns it)",
        mcp=HOST_PATH,
    ),
    "quiet": Case(
        cli=(["-q"], {"reporter.quiet": True, "reporter.quiet_output": False}),
        api=PRESENTATION + " (progress goes to the caller's reporter=)",
        mcp=PRESENTATION + " (the server's reporter drops everything)",
    ),
    "json_output": Case(
        cli=(["--json"], {"reporter.quiet": True, "reporter.quiet_output": True}),
        api=PRESENTATION + " (a RunResult)",
        mcp=PRESENTATION + " (the tool's structured result)",
    ),
}

#: ``jhansi.run``'s keywords that are no option of ``jhansi run``, and why.
API_ONLY: dict[str, Given | str] = {
    "code": ({"code": "print(2)"}, {"request.code": "print(2)", "request.script": None}),
    "engine_url": (
        {"engine_url": "unix:///run/engine.sock"},
        {
            "request.overrides.engine_url": "unix:///run/engine.sock",
            "settings.sandbox.engine_url": "unix:///run/engine.sock",
        },
    ),
    "reporter": "where progress goes: the caller's, not the run's",
    "start": "where the configuration is looked for (default: the project, else the script's "
    "directory): how settings are loaded, not what the run is",
}
#: ``run_python``'s arguments that are no option of ``jhansi run``.
MCP_ONLY: dict[str, Given] = {
    "code": ({"code": "print(3)"}, {"request.code": "print(3)"}),
}


def declared() -> list[str]:
    """The parameters of ``jhansi run`` as Typer builds the command (not the root's)."""
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    return [
        param.name
        for param in command.params
        if param.name != "help" and param.expose_value  # --debug is the root's
    ]


def _value(seen: Seen, path: str) -> object:
    value: object = seen
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _expected(value: object, cwd: Path) -> object:
    return value.replace("<cwd>", str(cwd)) if isinstance(value, str) else value


def _check(recorder: Recorder, expect: dict[str, object], cwd: Path) -> None:
    """The last run got ``expect``, which the one before (without the option) did not."""
    assert len(recorder.seen) == 2
    without, seen = recorder.seen
    for path, value in expect.items():
        assert _value(seen, path) == _expected(value, cwd), path
        if not path.startswith("reporter.") or value:
            assert _value(without, path) != _value(seen, path), f"{path}: the default"


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Recorder:
    """The runner boundary replaced by a recording subclass; a clean working directory."""
    record = Recorder()

    class RecordingRunner(Runner):
        """A real Runner whose run records what it was given and goes no further."""

        def run(self, request: RunRequest) -> jhansi.RunResult:
            record.seen.append(Seen(request, self.settings, self.reporter))
            raise Reached

    monkeypatch.setattr(jhansi.runner, "Runner", RecordingRunner)
    monkeypatch.delenv("JHANSI_PROMPT", raising=False)
    work = tmp_path / "work"
    (work / "proj").mkdir(parents=True)
    (work / "prompt.txt").write_text("from a file\n")
    monkeypatch.chdir(work)
    return record


def _cli_argv(name: str, argv: list[str]) -> list[str]:
    return argv if name in ("script", "args") else [*argv, "s.py"]


def test_every_option_of_jhansi_run_has_a_case() -> None:
    assert sorted(declared()) == sorted(CASES)


def test_every_keyword_of_jhansi_run_in_python_has_a_case() -> None:
    keywords = set(inspect.signature(jhansi.run).parameters)
    offered = {
        name for case in CASES.values() if not isinstance(case.api, str) for name in case.api[0]
    }
    assert keywords == offered | set(API_ONLY)


def test_every_argument_of_run_python_has_a_case() -> None:
    paths = Paths.from_environment()
    server = build_server(AgentTools(settings=load_settings(paths=paths), paths=paths))
    tools = {tool.name: tool for tool in anyio.run(server.list_tools)}
    arguments = set(tools["run_python"].input_schema["properties"])
    offered = {
        name for case in CASES.values() if not isinstance(case.mcp, str) for name in case.mcp[0]
    }
    assert arguments == offered | set(MCP_ONLY)


@pytest.mark.parametrize("parser", ["typer", "fast path"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_cli_option_reaches_the_runner(name: str, parser: str, recorder: Recorder) -> None:
    argv, expect = CASES[name].cli
    base = ["other.py"] if name in ("script", "args") else ["s.py"]
    for line in (base, _cli_argv(name, argv)):
        if parser == "typer":
            with pytest.raises(Reached):
                app(args=["run", *line], obj=CliState(), standalone_mode=False)
        else:
            assert parse_run(line) is not None  # this path, not Typer's
            with pytest.raises(Reached):
                run_fast(line, CliState())
    _check(recorder, expect, Path.cwd())


@pytest.mark.parametrize(
    "name",
    sorted(
        [n for n, c in CASES.items() if not isinstance(c.api, str)]
        + [n for n, given in API_ONLY.items() if not isinstance(given, str)]
    ),
)
def test_the_api_keyword_reaches_the_runner(name: str, recorder: Recorder) -> None:
    given = API_ONLY[name] if name in API_ONLY else CASES[name].api
    assert not isinstance(given, str)
    kwargs, expect = given
    base: dict[str, Any] = {} if {"script", "code"} & set(kwargs) else {"code": "print(1)"}
    for call in (base or {"script": "other.py"}, {**base, **kwargs}):
        with pytest.raises(Reached):
            jhansi.run(**call)
    _check(recorder, expect, Path.cwd())


@pytest.mark.parametrize(
    "name", sorted([n for n, c in CASES.items() if not isinstance(c.mcp, str)] + list(MCP_ONLY))
)
def test_the_mcp_argument_reaches_the_runner(name: str, recorder: Recorder) -> None:
    given = MCP_ONLY[name] if name in MCP_ONLY else CASES[name].mcp
    assert not isinstance(given, str)
    arguments, expect = given
    paths = Paths.from_environment()
    server = build_server(AgentTools(settings=load_settings(paths=paths), paths=paths))

    for call in ({"code": "print(1)"}, {"code": "print(1)", **arguments}):
        with pytest.raises(UnexpectedToolError) as stopped:  # the SDK wraps the tool's error
            anyio.run(server.call_tool, "run_python", call)
        assert isinstance(stopped.value.__cause__, Reached), stopped.value
    _check(recorder, expect, Path.cwd())
    if name != "sandbox":
        assert recorder.last().request.sandbox == "mcp"  # the server's default


def test_what_an_interface_leaves_out_says_why() -> None:
    for name, case in CASES.items():
        for reason in (case.api, case.mcp):
            if isinstance(reason, str):
                assert len(reason.split()) >= 4, name


def test_overrides_on_loaded_settings_are_the_overrides_loaded_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MCP lays a call's overrides over the server's settings; the CLI and the API load
    them as the top layer: both give the same settings, each key from the command line."""
    from dataclasses import fields

    from jhansi.overrides import with_overrides
    from jhansi.request import SettingsOverrides

    monkeypatch.chdir(tmp_path)
    given: dict[str, Any] = {
        "backend": "bwrap",
        "image": "example.org/img:1",
        "python": "python3",
        "runtime": "runsc",
        "engine_url": "unix:///run/engine.sock",
        "memory": "2g",
        "cpus": 0.5,
        "pids": 9,
        "tmp_size": "1m",
        "timeout": 30.0,
        "output_limit": "4k",
        "ledger": Path("led"),
        "advisory_db": "osv",
    }
    assert set(given) == {spec.name for spec in fields(SettingsOverrides)}
    overrides = SettingsOverrides(**given)
    layered = with_overrides(load_settings(), overrides)
    loaded = load_settings(flags=overrides.flags())
    assert layered == loaded
    assert layered.ledger.path == str(tmp_path / "led")
    assert {k: v for k, v in layered.sources.items() if v == "command line"}.keys() == {
        ".".join(key) for key in overrides.flags()
    }
    assert with_overrides(loaded, SettingsOverrides()) is loaded
