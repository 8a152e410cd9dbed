"""The GitHub Action's logic: job summary, annotations and outputs from jhansi's JSON.

``action.yml`` runs ``jhansi run --json`` and hands the document it printed to
``python -m jhansi.ci.github summarize``, which

- appends a Markdown job summary to ``$GITHUB_STEP_SUMMARY`` (status, duration,
  locked dependencies, policy findings, files changed, the signed ledger head);
- prints one workflow command per policy finding (``::error file=…,line=…::``),
  pointing at the line of the script's PEP 723 block that names the package,
  else at its import, else at line 1;
- writes the step outputs ``exit-code``, ``run-id``, ``ledger-head`` (and ``sbom``)
  to ``$GITHUB_OUTPUT`` in the multi-line-safe ``name<<DELIMITER`` form.

Everything shown comes from the script and the packages it pulls in, so it is
untrusted: workflow commands are escaped as the runner expects, Markdown is
escaped so that a file name or an advisory cannot inject links or HTML, and
outputs use a random delimiter that the value is checked not to contain.

The other subcommands serve the action's shell steps: ``split-args`` splits the
``args`` input like a shell would, without a shell evaluating it, and
``install-policy`` puts the ``policy-file`` input where jhansi reads its user
configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from jhansi.errors import ConfigError, ExitCode, JhansiError, UsageError

#: The reference regular expression of PEP 723 for an inline metadata block.
_BLOCK: Final = re.compile(
    r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$"
)
_QUOTED: Final = re.compile(r"""(?P<q>["'])(?P<text>.*?)(?P=q)""")
#: Rows shown per table before "and N more" (a step summary is capped at 1 MiB).
MAX_ROWS: Final = 100
#: Characters of a script's output tail printed to the log.
MAX_TAIL: Final = 20_000
POLICY_KINDS: Final = frozenset({"PolicyError", "PolicyDenied"})


# -- workflow commands -------------------------------------------------------------


def escape_data(text: str) -> str:
    """``text`` as the message of a workflow command (``%``, CR and LF encoded)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """``text`` as a property value of a workflow command (also ``:`` and ``,``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


@dataclass(frozen=True, slots=True)
class Annotation:
    """One ``::error``/``::warning``/``::notice`` workflow command."""

    level: str
    """``error``, ``warning`` or ``notice``."""
    message: str
    file: str | None = None
    line: int | None = None
    title: str | None = None

    def command(self) -> str:
        """The line the runner reads from stdout, escaped."""
        props = []
        if self.file is not None:
            props.append(f"file={escape_property(self.file)}")
        if self.line is not None:
            props.append(f"line={self.line}")
        if self.title is not None:
            props.append(f"title={escape_property(self.title)}")
        joined = (" " + ",".join(props)) if props else ""
        return f"::{self.level}{joined}::{escape_data(self.message)}"


# -- where a package is named in a script ----------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(text: str) -> str | None:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return _canonical(Requirement(text).name)
    except InvalidRequirement:
        return None


def declared_lines(source: str) -> dict[str, int]:
    """For each package named in the ``# /// script`` block, the first line naming it."""
    lines: dict[str, int] = {}
    for match in _BLOCK.finditer(source):
        if match.group("type") != "script":
            continue
        first = source.count("\n", 0, match.start("content")) + 1
        for offset, text in enumerate(match.group("content").splitlines()):
            for quoted in _QUOTED.finditer(text):
                name = _requirement_name(quoted.group("text"))
                if name is not None:
                    lines.setdefault(name, first + offset)
    return lines


def import_lines(source: str, known: Iterable[Mapping[str, Any]] = ()) -> dict[str, int]:
    """For each distribution the script imports, the first line importing it.

    ``known`` is the ``dependencies.imports`` list of a ``run --json`` document
    (jhansi's own decisions); imports it does not cover are mapped with the
    bundled import map, else by their own name.
    """
    from jhansi.deps.detect import scan_imports
    from jhansi.deps.mapping import resolve

    decided = {
        str(item.get("import")): _canonical(str(item["requirement"]))
        for item in known
        if item.get("requirement")
    }
    try:
        sites = scan_imports(source)
    except (SyntaxError, ValueError):
        return {}
    lines: dict[str, int] = {}
    for site in sites:
        distribution = decided.get(site.module) or decided.get(site.top)
        if distribution is None:
            mapping = resolve(site.module)
            distribution = _canonical(mapping.distribution if mapping else site.top)
        lines.setdefault(distribution, site.line)
    return lines


@dataclass(frozen=True, slots=True)
class ScriptSource:
    """A script as the annotations refer to it: its path for GitHub and its text."""

    path: str
    """Relative to the workspace when inside it (what GitHub matches files by)."""
    text: str

    @classmethod
    def read(cls, script: str, workspace: Path | None) -> ScriptSource:
        """Read ``script`` (a missing or unreadable file has no text)."""
        path = Path(script)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        shown = script
        if workspace is not None:
            try:
                shown = path.absolute().relative_to(workspace.absolute()).as_posix()
            except ValueError:
                shown = script
        return cls(shown, text)

    def line_of(self, package: str, imports: Iterable[Mapping[str, Any]] = ()) -> int:
        """The PEP 723 line naming ``package``, else its import line, else 1."""
        name = _canonical(package)
        declared = declared_lines(self.text)
        if name in declared:
            return declared[name]
        return import_lines(self.text, imports).get(name, 1)


# -- reading documents -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One script's result as the action presents it, from any jhansi document."""

    script: str
    status: str
    """``succeeded``, ``failed``, … for runs; ``ok``/``denied``/``error`` otherwise."""
    document: Mapping[str, Any]
    """The run document, the ``check`` entry, or the error document."""

    @property
    def policy(self) -> Mapping[str, Any] | None:
        """The policy report, if the policy ran."""
        policy = self.document.get("policy")
        return policy if isinstance(policy, Mapping) else None

    @property
    def error(self) -> Mapping[str, Any] | None:
        """jhansi's error (kind, message, hint, exit_code), when it refused or failed."""
        error = self.document.get("error")
        return error if isinstance(error, Mapping) else None

    @property
    def locked(self) -> list[Mapping[str, Any]]:
        """The locked packages (name, version)."""
        deps = self.document.get("dependencies")
        if isinstance(deps, Mapping) and isinstance(deps.get("locked"), list):
            return list(deps["locked"])
        locked = self.document.get("locked")
        return list(locked) if isinstance(locked, list) else []

    @property
    def imports(self) -> list[Mapping[str, Any]]:
        """jhansi's import decisions, when the document has them."""
        deps = self.document.get("dependencies")
        if isinstance(deps, Mapping) and isinstance(deps.get("imports"), list):
            return list(deps["imports"])
        return []


def outcomes(document: Mapping[str, Any] | None, script: str) -> list[Outcome]:
    """The per-script outcomes in a ``run --json`` or ``check --json`` document."""
    if document is None:
        return [Outcome(script, "error", {"error": _no_document_error()})]
    scripts = document.get("scripts")
    if isinstance(scripts, list):
        return [
            Outcome(str(entry.get("script", script)), str(entry.get("status", "error")), entry)
            for entry in scripts
            if isinstance(entry, Mapping)
        ]
    status = str(document.get("status", "error"))
    if status == "error" and isinstance(document.get("error"), Mapping):
        kind = str(document["error"].get("kind", ""))
        if kind in POLICY_KINDS:
            status = "denied"
    return [Outcome(script, status, document)]


def _no_document_error() -> dict[str, Any]:
    return {
        "kind": "NoResult",
        "message": "jhansi printed no JSON result",
        "hint": "Read the step's log above: jhansi failed before it could report.",
    }


def load_document(path: Path) -> dict[str, Any] | None:
    """The JSON document jhansi printed, or ``None`` if there is none (it crashed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


# -- annotations -------------------------------------------------------------------


def finding_annotation(
    finding: Mapping[str, Any], source: ScriptSource, imports: Any
) -> Annotation:
    """The workflow command for one policy finding."""
    package = str(finding.get("package") or "")
    version = str(finding.get("version") or "")
    ident = str(finding.get("id") or finding.get("rule") or "policy")
    aliases = [str(a) for a in finding.get("aliases") or []]
    label = f"{ident} ({', '.join(aliases)})" if aliases else ident
    parts = [f"{package} {version}: {label}" if package else label]
    for key in ("message", "evidence"):
        if finding.get(key):
            parts.append(str(finding[key]))
    if finding.get("fix"):
        parts.append(f"Fix: {finding['fix']}")
    level = "error" if finding.get("severity") == "deny" else "warning"
    rule = str(finding.get("rule") or "policy")
    return Annotation(
        level=level,
        message="\n".join(parts),
        file=source.path,
        line=source.line_of(package, imports) if package else 1,
        title=f"jhansi policy: {rule} ({'denied' if level == 'error' else 'warning'})",
    )


def annotations_for(outcome: Outcome, source: ScriptSource) -> list[Annotation]:
    """Workflow commands for one outcome: each finding, and jhansi's own errors."""
    found: list[Annotation] = []
    policy = outcome.policy
    if policy is not None:
        for finding in policy.get("findings") or []:
            if isinstance(finding, Mapping):
                found.append(finding_annotation(finding, source, outcome.imports))
    error = outcome.error
    if error is not None and str(error.get("kind", "")) not in POLICY_KINDS:
        text = str(error.get("message", "jhansi failed"))
        if error.get("hint"):
            text += f"\n{error['hint']}"
        found.append(Annotation("error", text, file=source.path, title="jhansi"))
    elif error is None and outcome.status not in ("succeeded", "ok", "denied"):
        code = outcome.document.get("exit_code")
        found.append(
            Annotation(
                "error",
                f"{source.path}: {outcome.status}"
                + (f" (exit {code})" if code is not None else ""),
                file=source.path,
                title="jhansi run",
            )
        )
    return found


# -- Markdown ----------------------------------------------------------------------

_MD_SPECIAL: Final = frozenset("\\`*_{}[]()#+-.!|~>")


def md(text: object) -> str:
    """Untrusted text as inert Markdown on one line (no links, HTML or table breaks)."""
    out = []
    for char in str(text):
        if char == "&":
            out.append("&amp;")
        elif char == "<":
            out.append("&lt;")
        elif char in "\r\n":
            out.append(" ")
        elif char in _MD_SPECIAL:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def code(text: object) -> str:
    """Untrusted text as inline code (a backtick fence longer than any run inside)."""
    value = str(text).replace("\r", " ").replace("\n", " ").replace("|", "¦")
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def duration(ms: object) -> str:
    """Milliseconds as ``850 ms``, ``2.31 s`` or ``3 min 05 s``."""
    if not isinstance(ms, int | float):
        return "?"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)} min {int(ms % 60_000 // 1000):02d} s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows[:MAX_ROWS]:
        lines.append("| " + " | ".join(row) + " |")
    if len(rows) > MAX_ROWS:
        lines.append("")
        lines.append(f"… and {len(rows) - MAX_ROWS} more.")
    return lines


_VERDICT: Final = {
    "succeeded": "succeeded",
    "ok": "passed the policy",
    "denied": "refused by policy",
    "failed": "failed",
    "timed_out": "timed out",
    "killed_oom": "killed (out of memory)",
    "engine_error": "sandbox failed",
    "error": "error",
}


def render_summary(
    outcome: Outcome,
    *,
    source: ScriptSource,
    exit_code: int | None,
    head: Mapping[str, Any] | None,
    sbom: str | None = None,
) -> str:
    """The job summary (Markdown) of one script's run, check or refusal."""
    doc = outcome.document
    verdict = _VERDICT.get(outcome.status, outcome.status)
    lines = [f"## jhansi: {code(source.path)} {md(verdict)}", ""]
    facts: list[tuple[str, str]] = [("Status", md(outcome.status))]
    if exit_code is not None:
        facts.append(("Exit code", str(exit_code)))
    if "duration_ms" in doc:
        facts.append(("Duration", duration(doc.get("duration_ms"))))
    if doc.get("run_id"):
        facts.append(("Run id", code(doc["run_id"])))
    if doc.get("sandbox"):
        where = md(doc["sandbox"])
        if doc.get("backend"):
            where += f" on {md(doc['backend'])}"
        facts.append(("Sandbox", where))
    deps = doc.get("dependencies")
    lock_file = doc.get("lock_file") or (
        deps.get("lock_file") if isinstance(deps, Mapping) else None
    )
    if lock_file:
        facts.append(("Lock", code(lock_file)))
    if sbom:
        facts.append(("SBOM", code(sbom)))
    lines += _table(("", ""), [(f"**{k}**", v) for k, v in facts])

    error = outcome.error
    if error is not None:
        lines += ["", f"**{md(error.get('kind', 'Error'))}**: {md(error.get('message', ''))}"]
        if error.get("hint"):
            lines += ["", f"Hint: {md(error['hint'])}"]

    locked = outcome.locked
    lines += ["", f"### Dependencies ({len(locked)} locked)", ""]
    if locked:
        packages = [(code(p.get("name", "?")), code(p.get("version", "?"))) for p in locked]
        lines += _table(("Package", "Version"), packages)
    else:
        lines.append("None: the script needs only the standard library.")

    lines += ["", "### Policy", ""]
    lines += _policy_section(outcome.policy, source, outcome.imports)

    if "files_changed" in doc:
        changes = [c for c in doc.get("files_changed") or [] if isinstance(c, Mapping)]
        lines += ["", f"### Files changed ({len(changes)})", ""]
        if changes:
            rows = [
                (
                    md(c.get("change", "")),
                    md(c.get("area", "")),
                    code(c.get("path", "")),
                    md(c.get("size", "")) if c.get("size") is not None else "",
                )
                for c in changes
            ]
            lines += _table(("Change", "Where", "Path", "Bytes"), rows)
        else:
            lines.append("None.")

    lines += ["", "### Ledger", ""]
    lines += _ledger_section(head, doc.get("ledger"))
    return "\n".join(lines) + "\n"


def _policy_section(
    policy: Mapping[str, Any] | None, source: ScriptSource, imports: Any
) -> list[str]:
    if policy is None:
        return ["Not checked (nothing to lock, or jhansi stopped before the policy step)."]
    findings = [f for f in policy.get("findings") or [] if isinstance(f, Mapping)]
    ignored = [f for f in policy.get("ignored") or [] if isinstance(f, Mapping)]
    audit = policy.get("audit") if isinstance(policy.get("audit"), Mapping) else {}
    denied = sum(1 for f in findings if f.get("severity") == "deny")
    head = (
        f"**{'Refused' if denied else 'Passed'}**: {denied} denied, "
        f"{len(findings) - denied} warning(s), {len(ignored)} ignored"
    )
    if audit:
        head += f"; vulnerability data: {md(audit.get('source') or audit.get('status') or '?')}"
    lines = [head]
    everything = [*findings, *ignored]
    if everything:
        rows = []
        for f in everything:
            package = str(f.get("package") or "")
            mark = "ignored" if f.get("ignored") else str(f.get("severity", ""))
            where = f"line {source.line_of(package, imports)}" if package else ""
            aliases = ", ".join(str(a) for a in f.get("aliases") or [])
            ident = md(f.get("id", "")) + (f" ({md(aliases)})" if aliases else "")
            detail = md(f.get("message", ""))
            if f.get("ignored"):
                detail += f" (ignored: {md(f['ignored'])})"
            rows.append(
                (
                    md(mark),
                    code(f"{package} {f.get('version') or ''}".strip()) if package else "",
                    md(f.get("rule", "")),
                    ident,
                    detail,
                    md(f.get("fix", "")),
                    where,
                )
            )
        lines += ["", *_table(("", "Package", "Rule", "Id", "Finding", "Fix", "Script"), rows)]
    return lines


def _ledger_section(head: Mapping[str, Any] | None, directory: object) -> list[str]:
    if head is None or head.get("status") not in (None, "ok") or not head.get("anchor"):
        reason = ""
        if head is not None and isinstance(head.get("error"), Mapping):
            reason = f": {md(head['error'].get('message', ''))}"
        return [f"No signed head{reason}."]
    lines = [
        f"Signed head {code(head['anchor'])} ({md(head.get('alg', '?'))}, "
        f"key {code(head.get('key', '?'))}).",
        "",
        "Keep it elsewhere; later, `jhansi ledger verify --anchor "
        f"{head['anchor']}` proves the ledger still holds this record.",
    ]
    if directory:
        lines += ["", f"Ledger directory: {code(directory)}"]
    return lines


# -- outputs -----------------------------------------------------------------------


def format_output(name: str, value: str) -> str:
    """``name<<DELIMITER`` … ``DELIMITER``: safe for any value, newlines included."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise UsageError(f"invalid output name {name!r}", hint="Use letters, digits, - and _.")
    delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
    while delimiter in value:  # pragma: no cover - 128 random bits
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def write_outputs(outputs: Mapping[str, str], path: str | None) -> None:
    """Append ``outputs`` to ``$GITHUB_OUTPUT`` (ignored when there is none)."""
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as handle:
        for name, value in outputs.items():
            handle.write(format_output(name, value))


def append_summary(text: str, path: str | None) -> None:
    """Append ``text`` to ``$GITHUB_STEP_SUMMARY`` (ignored when there is none)."""
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(text)


# -- the ledger head ---------------------------------------------------------------


def ledger_head(
    ledger: str | None, python: str = sys.executable, timeout: float = 60
) -> dict[str, Any] | None:
    """``jhansi ledger head --json`` (with ``--ledger`` when given), parsed."""
    argv = [python, "-m", "jhansi", "ledger", "head", "--json"]
    if ledger:
        argv += ["--ledger", ledger]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        document = json.loads(proc.stdout)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


# -- commands ----------------------------------------------------------------------


def _group(title: str, text: str, out: TextIO) -> None:
    if not text:
        return
    if len(text) > MAX_TAIL:
        text = "…" + text[-MAX_TAIL:]
    # The script's output must not issue workflow commands of its own.
    token = secrets.token_hex(16)
    out.write(f"::group::{escape_data(title)}\n::stop-commands::{token}\n")
    out.write(text if text.endswith("\n") else text + "\n")
    out.write(f"::{token}::\n::endgroup::\n")


def summarize(
    *,
    result: Path,
    script: str,
    exit_code: int | None,
    sbom: str | None,
    workspace: Path | None,
    head: Mapping[str, Any] | None,
    environ: Mapping[str, str],
    out: TextIO,
) -> int:
    """Summary, annotations and outputs for the document in ``result``; return 0."""
    document = load_document(result)
    sbom_written = sbom if sbom and Path(sbom).is_file() else None
    summary: list[str] = []
    for outcome in outcomes(document, script):
        source = ScriptSource.read(outcome.script, workspace)
        for stream in ("stdout", "stderr"):
            tail = outcome.document.get(stream)
            if isinstance(tail, Mapping) and tail.get("text"):
                _group(f"{source.path}: {stream}", str(tail["text"]), out)
        for annotation in annotations_for(outcome, source):
            out.write(annotation.command() + "\n")
        summary.append(
            render_summary(
                outcome, source=source, exit_code=exit_code, head=head, sbom=sbom_written
            )
        )
    out.flush()
    append_summary("\n".join(summary), environ.get("GITHUB_STEP_SUMMARY"))
    run_id = str(document.get("run_id") or "") if document else ""
    anchor = str(head.get("anchor") or "") if head and head.get("status") == "ok" else ""
    write_outputs(
        {
            "exit-code": "" if exit_code is None else str(exit_code),
            "run-id": run_id,
            "ledger-head": anchor,
            "sbom": sbom_written or "",
        },
        environ.get("GITHUB_OUTPUT"),
    )
    return 0


def install_policy(policy_file: Path, config_home: Path, environ: Mapping[str, str]) -> Path:
    """Put ``policy_file`` where jhansi reads its user configuration; return that path.

    jhansi has no ``--config`` flag: the action points ``XDG_CONFIG_HOME`` at
    ``config_home`` for its own steps, so that the file is the user
    configuration layer (a project's ``jhansi.toml`` still overrides the keys it
    sets). Under ``JHANSI_HOME`` that variable is not read, so the file goes to
    ``$JHANSI_HOME/config/config.toml`` instead, unless one is already there.
    The file is validated first: a typo fails here, not as a silently ignored
    policy.
    """
    from jhansi.config import file_layer, resolve

    if not policy_file.is_file():
        raise ConfigError(
            f"policy-file {policy_file} does not exist",
            hint="Give the path of a jhansi configuration file (TOML with a [policy] table), "
            "relative to the workspace.",
        )
    resolve([file_layer(policy_file, source="policy-file")])
    text = policy_file.read_bytes()
    destination = user_config_file({**environ, "XDG_CONFIG_HOME": str(config_home.absolute())})
    if destination.exists() and destination.read_bytes() != text:
        raise ConfigError(
            f"policy-file: {destination} already exists (JHANSI_HOME is set)",
            hint="Unset JHANSI_HOME for this step, or put the policy in that file yourself.",
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(text)
    return destination


def user_config_file(environ: Mapping[str, str]) -> Path:
    """Where jhansi, started with ``environ``, reads its user configuration.

    Asked of a fresh interpreter: platformdirs reads the process environment,
    and the answer must be the one the run step's jhansi will find.
    """
    code = "from jhansi.paths import Paths; print(Paths.from_environment().user_config_file)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ConfigError(
            "cannot tell where jhansi reads its user configuration",
            hint=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "",
        )
    return Path(proc.stdout.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jhansi.ci.github", description="The jhansi GitHub Action's helpers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="Job summary, annotations and outputs of a result.")
    s.add_argument("--result", type=Path, required=True, help="The `jhansi ... --json` output.")
    s.add_argument("--script", required=True, help="The script that was run or checked.")
    s.add_argument("--exit-code", default="", help="What jhansi exited with.")
    s.add_argument("--ledger", default="", help="The ledger directory given to jhansi, if any.")
    s.add_argument("--sbom", default="", help="Where jhansi was asked to write the SBOM.")
    s.add_argument("--workspace", default=None, help="Default: $GITHUB_WORKSPACE.")
    s.add_argument(
        "--ledger-head", type=Path, default=None, help="A saved `jhansi ledger head --json`."
    )
    a = sub.add_parser("split-args", help="Split ARGS like a shell; print them NUL-terminated.")
    a.add_argument("args", nargs="?", default="")
    p = sub.add_parser("install-policy", help="Install a policy file as the user configuration.")
    p.add_argument("policy_file", type=Path)
    p.add_argument("--config-home", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The command line; returns the exit code."""
    env = dict(os.environ if environ is None else environ)
    options = _parser().parse_args(argv)
    try:
        if options.command == "split-args":
            try:
                parts = shlex.split(options.args)
            except ValueError as exc:
                raise UsageError(
                    f"args input: {exc}", hint="Quote arguments as in a POSIX shell."
                ) from None
            sys.stdout.write("".join(part + "\0" for part in parts))
            return 0
        if options.command == "install-policy":
            destination = install_policy(options.policy_file, options.config_home, env)
            write_outputs({"config-home": str(options.config_home)}, env.get("GITHUB_OUTPUT"))
            print(f"jhansi: policy {options.policy_file} installed as {destination}")
            return 0
        exit_code = int(options.exit_code) if options.exit_code.strip() else None
        workspace = options.workspace or env.get("GITHUB_WORKSPACE")
        if options.ledger_head is not None:
            head = load_document(options.ledger_head)
        else:
            document = load_document(options.result) or {}
            head = ledger_head(options.ledger or str(document.get("ledger") or "") or None)
        return summarize(
            result=options.result,
            script=options.script,
            exit_code=exit_code,
            sbom=options.sbom or None,
            workspace=Path(workspace) if workspace else None,
            head=head,
            environ=env,
            out=sys.stdout,
        )
    except JhansiError as exc:
        print(Annotation("error", exc.diagnostics(), title="jhansi action").command())
        return int(exc.exit_code)
    except ValueError as exc:
        print(Annotation("error", str(exc), title="jhansi action").command())
        return int(ExitCode.USAGE)


if __name__ == "__main__":
    raise SystemExit(main())
