"""What ``jhansi run`` does once its options are parsed, without importing Typer.

:mod:`jhansi.cli.run` declares the options (Typer); this module carries them out,
so that the fast path in :func:`jhansi.cli.main` can run a script without loading
Typer at all (start-up time is a feature).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from jhansi.errors import ExitCode, JhansiError, UsageError

if TYPE_CHECKING:
    from jhansi.cli._state import CliState
    from jhansi.request import RunRequest
    from jhansi.result import RunResult


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


#: ``jhansi run``'s options that are the terminal's, not the run's: how the outcome is
#: shown. Every other option is a field of :class:`~jhansi.request.RunRequest` or of its
#: :class:`~jhansi.request.SettingsOverrides`, under the same name.
PRESENTATION = ("quiet", "json_output")


def cli_request(values: dict[str, Any]) -> RunRequest:
    """The :class:`~jhansi.request.RunRequest` for ``jhansi run``'s parsed options.

    ``values`` are the parameters of :func:`jhansi.cli.run.run` (as Typer or
    :func:`jhansi.cli._fastpath.parse_run` gives them), less :data:`PRESENTATION`.
    Each is the field of its name; only what the command line spells differently is
    converted here: SCRIPT (``-`` is stdin, whose code is read later), ``--env``
    (``KEY=VALUE``), ``--prompt-file`` (read into ``prompt``) and lists (tuples).
    """
    from dataclasses import fields

    from jhansi.request import RunRequest, SettingsOverrides

    given = dict(values)
    script = given.pop("script")
    given["prompt"] = read_prompt(given["prompt"], given.pop("prompt_file"))
    given["env"] = parse_env(given["env"])
    overrides = SettingsOverrides(
        **{spec.name: given.pop(spec.name, None) for spec in fields(SettingsOverrides)}
    )
    rest: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in given.items()
        if value is not None
    }
    return RunRequest(script=None if script == "-" else Path(script), overrides=overrides, **rest)


def execute_run(state: CliState, **values: Any) -> NoReturn:
    """Run SCRIPT in its sandbox and exit with its exit code (``jhansi run``'s body).

    ``values`` are the parameters of :func:`jhansi.cli.run.run`: see :func:`cli_request`.
    """
    from dataclasses import replace

    from jhansi.cli._reporter import ConsoleReporter
    from jhansi.config import UntrustedConfigError
    from jhansi.overrides import settings_for
    from jhansi.runner import Runner

    quiet, json_output = (bool(values.pop(name)) for name in PRESENTATION)
    state.json = json_output
    request = cli_request(values)
    untrusted: UntrustedConfigError | None = None
    try:
        settings = settings_for(request)
    except UntrustedConfigError as refusal:
        # Refused, and recorded where the user's own settings keep the ledger: the
        # project's values that need trust are left out of these.
        untrusted = refusal
        settings = settings_for(request, strict=False)
    if request.script is None:
        # At most one byte past the limit (the runner refuses it, recorded); bytes that are
        # not UTF-8 survive as surrogates so that the runner's refusal says where.
        raw = sys.stdin.buffer.read(settings.sandbox.max_script_size + 1)
        request = replace(request, code=raw.decode("utf-8", "surrogateescape"))
    reporter = ConsoleReporter(quiet=quiet or json_output, quiet_output=json_output)
    runner = Runner.from_settings(settings, reporter=reporter)
    if untrusted is not None:
        runner.refuse(request, untrusted)
    result = runner.run(request)
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


def _engine_error_hint(error: str) -> str:
    """What to do about an engine error: the runtime's own end gets its own advice."""
    from jhansi.sandbox.docker import RUNTIME_ENDED

    if RUNTIME_ENDED not in error:
        return "Run `jhansi doctor` to check the backend; `--debug` shows more."
    if "gVisor" in error:
        return (
            "gVisor needs host threads for every process the script starts: lower --pids "
            "(or [sandbox] pids) so the script is refused a process before gVisor is, or run "
            "it with runc (--runtime runc) or bwrap (--backend bwrap)."
        )
    return (
        "Something outside the script stopped its container (docker kill or stop, the "
        "engine restarting, the host's OOM killer): check the engine's log, then run it again."
    )


def finish(
    result: RunResult, *, json_output: bool, quiet: bool, timeout: float, memory: int
) -> NoReturn:
    """Print the outcome and exit with the right code."""
    from jhansi.cli._output import print_json, stderr_console
    from jhansi.config import format_size
    from jhansi.result import result_document

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
            hint=_engine_error_hint(result.error),
        )
    elif result.status == "failed" and b"Read-only file system" in result.stderr.data:
        hint = (
            "/work is writable (its writes land in the sandbox's layer), the rest of the "
            f"system is not: write under /work, /tmp or $HOME (kept in sandbox "
            f"{result.sandbox!r})."
            if result.layer
            else f"The project at /work is read-only here{_no_layer(result)}: pass --rw to "
            "allow writes there, or write under $HOME (/home/sandbox), which persists in "
            f"sandbox {result.sandbox!r}."
        )
        problem = JhansiError(
            f"the script exited {code}: it tried to write to a read-only place", hint=hint
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
            f"{result.backend.backend} · {changed} file{'s' if changed != 1 else ''} changed"
            f"{_changed_names(result)}{_rw_summary(result)}\n"
        )
    layered = result.layer and any(c.area == "/work" for c in result.files_changed)
    if problem is None and layered and not quiet and not json_output and not result.ephemeral:
        name = result.sandbox
        sys.stderr.write(
            f"jhansi: /work's changes are in sandbox {name}'s layer, not in the project: "
            f"`jhansi sandbox diff {name}` shows them, `jhansi sandbox apply {name}` "
            "copies them in\n"
        )
    _network_hints(result)
    sys.exit(code)  # like typer.Exit(code), which Typer turns into sys.exit


def _network_hints(result: RunResult) -> None:
    """:func:`~jhansi.result.network_hints`, last on stderr whatever the output mode."""
    from jhansi.result import network_hints

    lines = network_hints(result)
    for line in lines:
        sys.stderr.write(f"jhansi: {line}\n")
    if lines:
        sys.stderr.flush()


def _no_layer(result: RunResult) -> str:
    """`` (no copy-on-write layer: why)`` when the backend could not give /work one."""
    from jhansi.runner.spec import READ_ONLY_WORK

    work = result.enforcement.get("work", "")
    if not work.startswith(READ_ONLY_WORK):
        return ""
    return f" (no copy-on-write layer: {work[len(READ_ONLY_WORK) :].removesuffix(')')})"


#: Files the summary line names; the rest are counted.
_NAMED = 3


def _changed_names(result: RunResult) -> str:
    """``: /work/a.csv, ~/model.bin (+3 more)``: the first changed files, by name."""
    from jhansi.ledger.read import one_line
    from jhansi.sandbox.changes import shown_name

    if not result.files_changed:
        return ""
    names = []
    for change in result.files_changed[:_NAMED]:
        where = "~" if change.area == "/home/sandbox" else change.area
        mark = " (deleted)" if change.change == "deleted" else ""
        names.append(one_line(f"{where}/{shown_name(change.path)}{mark}"))  # a name: one line
    more = len(result.files_changed) - _NAMED
    return ": " + ", ".join(names) + (f" (+{more} more)" if more > 0 else "")


def _rw_summary(result: RunResult) -> str:
    """`` · --rw: 3 applied, 1 refused, 1 conflict`` for a ``--rw`` run, else ``""``."""
    if result.rw is None:
        return ""
    parts = [f"{len(result.rw.by('applied'))} applied"]
    refused = len(result.rw.by("refused"))
    conflicts = len(result.rw.by("conflict"))
    if refused:
        parts.append(f"{refused} refused")
    if conflicts:
        parts.append(f"{conflicts} conflict{'s' if conflicts != 1 else ''}")
    if result.rw.error:
        parts.append("apply failed")
    return " · --rw: " + ", ".join(parts)
