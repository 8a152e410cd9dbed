"""``jhansi run``: run a script in its sandbox and exit with the script's exit code.

The options are declared here, once, each parameter named after the field of
:class:`~jhansi.request.RunRequest` (or of its
:class:`~jhansi.request.SettingsOverrides`) it sets;
:func:`jhansi.cli._execute.cli_request` builds the request from them, and
:mod:`jhansi.cli._fastpath` parses them without Typer when it can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jhansi.cli._execute import (
    exit_code_of,
    finish,
    parse_env,
    read_prompt,
    sandbox_flags,
)
from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState

__all__ = [
    "exit_code_of",
    "finish",
    "parse_env",
    "read_prompt",
    "run",
    "sandbox_flags",
]

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
        "--rw",
        help="Write straight through to the project (without it, /work's writes land in the "
        "sandbox's layer: `jhansi sandbox diff/apply`).",
        rich_help_panel=SANDBOX,
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
        help="The ledger directory (also JHANSI_LEDGER, the ledger.path setting).",
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
        help="Offline OSV data: a directory of OSV records or an all.zip (policy.advisory_db).",
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
    with_requirements: With = None,
    requirements_file: RequirementsFile = None,
    lock_file: LockFile = None,
    frozen: Frozen = False,
    upgrade: Upgrade = False,
    exclude_newer: ExcludeNewer = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    model: Model = None,
    ledger: LedgerDir = None,
    secrets: Secret = None,
    allow_hosts: AllowHost = None,
    advisory_db: AdvisoryDb = None,
    sbom: SbomFile = None,
    quiet: Quiet = False,
    json_output: JsonFlag = False,
) -> None:
    """Run SCRIPT in a hardened sandbox and exit with its exit code.

    Everything after SCRIPT is passed to the script. No network (unless --allow-host
    or --secret open a way out through jhansi's egress proxy), the project at /work
    (writes land in the sandbox's copy-on-write layer, never in the project), a
    persistent home at /home/sandbox, and limits on memory, CPU, processes and time.
    """
    # The parameters are the declaration: each is handed on under its own name (the
    # field of RunRequest it sets), so that adding an option touches nothing here.
    values = dict(locals())
    from jhansi.cli._execute import execute_run

    execute_run(values.pop("ctx").ensure_object(CliState), **values)
