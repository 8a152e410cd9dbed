"""``jhansi run``: run a script in its sandbox and exit with the script's exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState
from jhansi.errors import ExitCode, JhansiError, UsageError

if TYPE_CHECKING:
    from jhansi.runner import Dependencies, RunResult

SANDBOX = "Sandbox"
LIMITS = "Limits"

Backend = Annotated[
    str | None,
    typer.Option("--backend", help="auto, docker or bwrap.", rich_help_panel=SANDBOX),
]
Image = Annotated[
    str | None,
    typer.Option("--image", help="Container image (docker backend).", rich_help_panel=SANDBOX),
]
Python = Annotated[
    str | None,
    typer.Option("--python", help="Interpreter (bwrap backend).", rich_help_panel=SANDBOX),
]
Runtime = Annotated[
    str | None,
    typer.Option("--runtime", help="OCI runtime, such as runsc (gVisor).", rich_help_panel=SANDBOX),
]
SandboxName = Annotated[
    str | None,
    typer.Option(
        "--sandbox", help="Named sandbox (default: the project's own).", rich_help_panel=SANDBOX
    ),
]
Ephemeral = Annotated[
    bool,
    typer.Option("--ephemeral", help="Use a throwaway home.", rich_help_panel=SANDBOX),
]
Project = Annotated[
    Path | None,
    typer.Option(
        "--project",
        help="Directory mounted at /work (default: nearest with pyproject.toml or .git).",
        rich_help_panel=SANDBOX,
    ),
]
ReadWrite = Annotated[
    bool,
    typer.Option(
        "--rw", help="Let the script write to /work (the project).", rich_help_panel=SANDBOX
    ),
]
Env = Annotated[
    list[str] | None,
    typer.Option(
        "--env", "-e", help="KEY=VALUE for the sandbox (repeatable).", rich_help_panel=SANDBOX
    ),
]
Memory = Annotated[
    str | None, typer.Option("--memory", help="e.g. 512m, 2g.", rich_help_panel=LIMITS)
]
Cpus = Annotated[str | None, typer.Option("--cpus", help="e.g. 1, 0.5.", rich_help_panel=LIMITS)]
Pids = Annotated[str | None, typer.Option("--pids", help="Max processes.", rich_help_panel=LIMITS)]
TmpSize = Annotated[
    str | None, typer.Option("--tmp-size", help="Size of /tmp.", rich_help_panel=LIMITS)
]
Timeout = Annotated[
    str | None, typer.Option("--timeout", help="Seconds, or 30s, 5m.", rich_help_panel=LIMITS)
]
OutputLimit = Annotated[
    str | None,
    typer.Option("--output-limit", help="Bytes kept of each stream.", rich_help_panel=LIMITS),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only the script's output.")]
AUDIT = "Audit"
Prompt = Annotated[
    str | None,
    typer.Option(
        "--prompt",
        help="The prompt that produced the code (also JHANSI_PROMPT).",
        rich_help_panel=AUDIT,
    ),
]
PromptFile = Annotated[
    Path | None,
    typer.Option("--prompt-file", help="Read the prompt from a file.", rich_help_panel=AUDIT),
]
Model = Annotated[
    str | None,
    typer.Option("--model", help="The model that wrote the code.", rich_help_panel=AUDIT),
]
LedgerDir = Annotated[
    Path | None,
    typer.Option(
        "--ledger",
        help="The ledger directory (also JHANSI_LEDGER, [ledger] path).",
        rich_help_panel=AUDIT,
    ),
]
DEPS = "Dependencies"
With = Annotated[
    list[str] | None,
    typer.Option(
        "--with",
        help="Add a requirement, e.g. 'requests>=2.32' (repeatable).",
        rich_help_panel=DEPS,
    ),
]
RequirementsFile = Annotated[
    Path | None,
    typer.Option(
        "--requirements",
        help="requirements.txt or pyproject.toml: replaces import detection.",
        rich_help_panel=DEPS,
    ),
]
LockFile = Annotated[
    Path | None,
    typer.Option(
        "--lock-file",
        help="Where the lock goes (default: pylock.<script>.toml).",
        rich_help_panel=DEPS,
    ),
]
Frozen = Annotated[
    bool,
    typer.Option("--frozen", help="Refuse to create or change a lock (CI).", rich_help_panel=DEPS),
]
Upgrade = Annotated[
    bool, typer.Option("--upgrade", help="Re-resolve to the newest versions.", rich_help_panel=DEPS)
]
ExcludeNewer = Annotated[
    str | None,
    typer.Option(
        "--exclude-newer",
        help="Ignore releases after this date (YYYY-MM-DD).",
        rich_help_panel=DEPS,
    ),
]


NETWORK = "Network"
Secret = Annotated[
    list[str] | None,
    typer.Option(
        "--secret",
        help="NAME@HOST[,HOST...]: the sandbox gets a placeholder in $NAME that the egress "
        "proxy swaps for the real value only on HTTPS requests to those hosts (repeatable).",
        rich_help_panel=NETWORK,
    ),
]
AllowHost = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-host",
        help="HOST[:PORT] the sandbox may reach through the egress proxy, untouched "
        "(443 unless a port is given; http://HOST for plain HTTP) (repeatable).",
        rich_help_panel=NETWORK,
    ),
]
POLICY = "Policy"
AdvisoryDb = Annotated[
    Path | None,
    typer.Option(
        "--advisory-db",
        help="Offline OSV data: a directory of OSV records or an all.zip ([policy] advisory_db).",
        rich_help_panel=POLICY,
    ),
]
SbomFile = Annotated[
    Path | None,
    typer.Option(
        "--sbom",
        help="Also write the run's CycloneDX SBOM to this file.",
        rich_help_panel=AUDIT,
    ),
]


def sandbox_flags(**values: Any) -> dict[tuple[str, str], object]:
    """Command-line values as settings overrides (``None`` = not given)."""
    return {("sandbox", key): value for key, value in values.items()}


def parse_env(pairs: list[str] | None) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` strings from ``--env``."""
    out = []
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(
                f"--env {pair!r} is not KEY=VALUE",
                hint="Write it as --env NAME=value (the host's environment is never passed on).",
            )
        out.append((key, value))
    return tuple(out)


def run(
    ctx: typer.Context,
    script: Annotated[str, typer.Argument(help="The script, or - to read code from stdin.")],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for the script.")] = None,
    backend: Backend = None,
    image: Image = None,
    python: Python = None,
    runtime: Runtime = None,
    sandbox: SandboxName = None,
    ephemeral: Ephemeral = False,
    project: Project = None,
    rw: ReadWrite = False,
    env: Env = None,
    memory: Memory = None,
    cpus: Cpus = None,
    pids: Pids = None,
    tmp_size: TmpSize = None,
    timeout: Timeout = None,
    output_limit: OutputLimit = None,
    with_: With = None,
    requirements: RequirementsFile = None,
    lock_file: LockFile = None,
    frozen: Frozen = False,
    upgrade: Upgrade = False,
    exclude_newer: ExcludeNewer = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    model: Model = None,
    ledger: LedgerDir = None,
    secret: Secret = None,
    allow_host: AllowHost = None,
    advisory_db: AdvisoryDb = None,
    sbom: SbomFile = None,
    quiet: Quiet = False,
    json_output: JsonFlag = False,
) -> None:
    """Run SCRIPT in a hardened sandbox and exit with its exit code.

    Everything after SCRIPT is passed to the script. No network (unless --allow-host
    or --secret open a way out through jhansi's egress proxy), a read-only project
    at /work, a persistent home at /home/sandbox, and limits on memory, CPU,
    processes and time.
    """
    from jhansi.cli._reporter import ConsoleReporter
    from jhansi.config import load_settings
    from jhansi.runner import Runner, RunRequest

    ctx.ensure_object(CliState).json = json_output
    script_path = None if script == "-" else Path(script)
    code = sys.stdin.read() if script_path is None else None
    start = project or (script_path.absolute().parent if script_path else None)
    settings = load_settings(
        start=start,
        flags=sandbox_flags(
            backend=backend,
            image=image,
            python=python,
            runtime=runtime,
            memory=memory,
            cpus=cpus,
            pids=pids,
            tmp_size=tmp_size,
            timeout=timeout,
            output_limit=output_limit,
        )
        | {("ledger", "path"): str(ledger) if ledger else None}
        | {("policy", "advisory_db"): str(advisory_db) if advisory_db else None},
    )
    reporter = ConsoleReporter(quiet=quiet or json_output, quiet_output=json_output)
    request = RunRequest(
        script=script_path,
        code=code,
        args=tuple(args or ()),
        project=project,
        sandbox=sandbox,
        ephemeral=ephemeral,
        rw=rw,
        env=parse_env(env),
        with_requirements=tuple(with_ or ()),
        requirements_file=requirements,
        lock_file=lock_file,
        frozen=frozen,
        upgrade=upgrade,
        exclude_newer=exclude_newer,
        prompt=read_prompt(prompt, prompt_file),
        model=model,
        sbom=sbom,
        secrets=tuple(secret or ()),
        allow_hosts=tuple(allow_host or ()),
    )
    result = Runner.from_settings(settings, reporter=reporter).run(request)
    finish(
        result,
        json_output=json_output,
        quiet=quiet,
        timeout=settings.sandbox.timeout,
        memory=settings.sandbox.memory,
    )


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str | None:
    """The prompt from ``--prompt``, ``--prompt-file`` or ``JHANSI_PROMPT``."""
    import os

    if prompt is not None and prompt_file is not None:
        raise UsageError(
            "--prompt and --prompt-file both given", hint="Pass the prompt one way only."
        )
    if prompt_file is not None:
        try:
            return prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"cannot read --prompt-file {prompt_file}: {exc}",
                hint="Name a readable UTF-8 text file.",
            ) from None
    return prompt if prompt is not None else os.environ.get("JHANSI_PROMPT")


def result_document(result: RunResult) -> dict[str, Any]:
    """The ``--json`` document of a run."""

    def tail(t: Any) -> dict[str, Any]:
        return {
            "text": t.data.decode("utf-8", "replace"),
            "bytes": t.total,
            "truncated": t.truncated,
        }

    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "duration_ms": result.duration_ms,
        "run_id": result.run_id,
        "script": result.script,
        "project": result.project,
        "sandbox": result.sandbox,
        "ephemeral": result.ephemeral,
        "home": result.home,
        "backend": result.backend.backend,
        "backend_details": dict(result.backend.details),
        "enforcement": dict(result.enforcement),
        "stdout": tail(result.stdout),
        "stderr": tail(result.stderr),
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
        "error": result.error,
        "dependencies": dependencies_document(result.dependencies),
        "policy": (
            result.dependencies.supply.report.as_dict()
            if result.dependencies and result.dependencies.supply
            else None
        ),
        "egress": [dict(e) for e in result.egress],
        "ledger": result.ledger,
        "record": result.record,
    }


def dependencies_document(deps: Dependencies | None) -> dict[str, Any] | None:
    """The dependency part of ``--json`` documents (``run``, ``deps``, ``lock``)."""
    if deps is None:
        return None
    plan = deps.plan
    return {
        "mode": plan.mode,
        "python": deps.target.python_version,
        "target": deps.target.describe(),
        "platform": deps.target.uv_platform,
        "requires_python": plan.requires_python,
        "requirements": [
            {
                "name": r.name,
                "spec": r.spec,
                "source": r.source,
                "evidence": r.evidence,
                "imports": list(r.imports),
            }
            for r in plan.requirements
        ],
        "imports": [
            {
                "import": d.name,
                "kind": d.kind,
                "lines": list(d.lines),
                "requirement": d.requirement,
                "evidence": d.evidence,
                "alternatives": list(d.alternatives),
            }
            for d in plan.imports
        ],
        "unresolved": [
            {"import": d.name, "lines": list(d.lines), "reason": d.evidence}
            for d in plan.unresolved
        ],
        "lock_file": str(deps.lock.path) if deps.lock else None,
        "lock_reused": deps.lock.reused if deps.lock else None,
        "locked": [
            {"name": p.name, "version": p.version}
            for p in (deps.lock.packages if deps.lock else ())
        ],
        "environment": deps.environment.key if deps.environment else None,
        "environment_reused": deps.environment.reused if deps.environment else None,
    }


def exit_code_of(result: RunResult) -> int:
    """What ``jhansi run`` exits with: the script's code, or jhansi's for its own outcomes."""
    if result.status == "succeeded":
        return 0
    if result.status == "timed_out":
        return int(ExitCode.TIMED_OUT)
    if result.status == "killed_oom":
        return int(ExitCode.KILLED_OOM)
    if result.status == "engine_error":
        return int(ExitCode.SANDBOX)
    if result.exit_code is not None:
        return result.exit_code
    return 128 + (result.signal or 9)


def finish(
    result: RunResult, *, json_output: bool, quiet: bool, timeout: float, memory: int
) -> None:
    """Print the outcome and exit with the right code."""
    from jhansi.cli._output import print_json, stderr_console
    from jhansi.config import format_size

    code = exit_code_of(result)
    if json_output:
        print_json(result_document(result))
    problem: JhansiError | None = None
    if result.status == "timed_out":
        problem = JhansiError(
            f"timed out after {timeout:g} s: the sandbox was killed",
            hint="Raise it with --timeout (or [sandbox] timeout) if the script needs longer.",
        )
    elif result.status == "killed_oom":
        problem = JhansiError(
            f"killed: the script exceeded its memory limit ({format_size(memory)})",
            hint="Raise the limit with --memory (or [sandbox] memory), e.g. --memory 2g.",
        )
    elif result.status == "engine_error":
        problem = JhansiError(
            f"the sandbox failed: {result.error or 'unknown engine error'}",
            hint="Run `jhansi doctor` to check the backend; `--debug` shows more.",
        )
    elif result.status == "failed" and b"Read-only file system" in result.stderr.data:
        problem = JhansiError(
            f"the script exited {code}: it tried to write to a read-only place",
            hint="The project at /work is read-only: pass --rw to allow writes there, or write "
            f"under $HOME (/home/sandbox), which persists in sandbox {result.sandbox!r}.",
        )
    if problem is not None:
        from rich.markup import escape

        console = stderr_console()
        console.print(f"[bold red]error:[/] {escape(problem.message)}", soft_wrap=True)
        console.print(f"[bold]hint:[/] {escape(problem.hint)}", soft_wrap=True)
    elif not quiet and not json_output:
        changed = len(result.files_changed)
        sys.stderr.write(
            f"jhansi: {result.status} (exit {result.exit_code}) in "
            f"{result.duration_ms / 1000:.2f} s · sandbox {result.sandbox} · "
            f"{result.backend.backend} · {changed} file{'s' if changed != 1 else ''} changed\n"
        )
    raise typer.Exit(code)
