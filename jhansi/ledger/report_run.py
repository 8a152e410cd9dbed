"""``jhansi ledger report``: the section of one run (what ran, why, where, what it did).

Sections, in order: how it ended (or why it was refused); the prompt and model; the
code with line numbers; the requirements with their evidence, the imports and the
lock; the policy's verdict with its findings and the ignored ones with their reasons;
the SBOM's packages, licences and vulnerabilities; the sandbox's settings with how
each limit was enforced; secrets (names and hosts), the egress allowed, every
connection and refusal; the files changed; the output; the configuration files that
applied; and each record with its hash. Values go through
:mod:`jhansi.ledger.report_parts`, which escapes them.
"""

from __future__ import annotations

import json
from typing import Final

from jhansi.ledger.report_data import OUTPUT_LIMIT, TEXT_LIMIT, ReportData, RunView, Text
from jhansi.ledger.report_parts import as_dict as _dict
from jhansi.ledger.report_parts import as_list as _list
from jhansi.ledger.report_parts import class_token, duration, h, h1, kv, size, table


def _text_note(text: Text, limit: int) -> str:
    notes = [f"blob {text.digest}", size(text.size)]
    if text.omitted_chars:
        notes.append(
            f"cut at {limit:,} characters: {text.omitted_chars:,} more not shown "
            "(`jhansi ledger show` prints it all)"
        )
    if text.problem:
        notes.append(text.problem)
    return f'<p class="note">{h1(", ".join(n for n in notes if n))}</p>'


def code_block(text: Text) -> str:
    """The code with line numbers (an ordered list: the numbers are not copied with it)."""
    if text.text is None:
        return _text_note(text, TEXT_LIMIT)
    body = text.text[:-1] if text.text.endswith("\n") else text.text
    lines = "".join(f"<li>{h(line)}</li>" for line in body.split("\n"))
    return f'<ol class="code">{lines}</ol>{_text_note(text, TEXT_LIMIT)}'


def text_block(text: Text, limit: int) -> str:
    """A recorded text, escaped, and its notes."""
    if text.text is None:
        return _text_note(text, limit)
    return f"<pre>{h(text.text)}</pre>{_text_note(text, limit)}"


def _texts(run: RunView, label: str) -> list[Text]:
    return [t for t in run.texts if t.label == label]


def run_head(run: RunView) -> str:
    """What ran, who ran it, how it ended (or why it was refused)."""
    s, main = run.summary, run.main
    result = _dict(run.end.get("result"))
    reason = _dict(run.denied.get("reason"))
    return kv(
        (
            ("run id", s.run_id),
            ("time", s.time),
            ("actor", run.actor),
            ("status", s.status),
            ("exit code", s.exit_code),
            ("signal", result.get("signal")),
            ("duration", duration(s.duration_ms)),
            ("error", result.get("error")),
            ("refused because", reason.get("message")),
            ("refusal", f"{reason.get('kind')}, exit {reason.get('exit_code')}" if reason else ""),
            ("hint", reason.get("hint")),
            ("arguments", main.get("argv")),
            ("jhansi", main.get("jhansi")),
            ("host python", main.get("host_python")),
            ("interactive", main.get("interactive")),
            ("record fallback", run.end.get("fallback")),
        )
    )


def dependencies(run: RunView) -> str:
    """Requirements with their evidence, imports, the lock."""
    deps = _dict(run.main.get("dependencies"))
    if not deps:
        return '<p class="note">no dependencies recorded</p>'
    lock = _dict(deps.get("lock"))
    out = kv(
        (
            ("mode", deps.get("mode")),
            ("target", deps.get("target")),
            ("lock", f"{lock.get('path')} (blob {lock.get('blob')})" if lock else "no lock"),
            ("environment", deps.get("environment")),
        )
    )
    requirements = [
        (r.get("name"), r.get("spec"), r.get("source"), r.get("evidence"), r.get("imports"))
        for r in map(_dict, _list(deps.get("requirements")))
    ]
    out += "<h3>Requirements and their evidence</h3>" + table(
        ("name", "spec", "source", "evidence", "imports"), requirements, "no requirements"
    )
    imports = [
        (i.get("import"), i.get("kind"), i.get("requirement"))
        for i in map(_dict, _list(deps.get("imports")))
    ]
    out += "<h3>Imports</h3>" + table(("import", "kind", "requirement"), imports, "no imports")
    unresolved = [
        (u.get("import"), u.get("lines")) for u in map(_dict, _list(run.denied.get("unresolved")))
    ]
    if unresolved:
        out += "<h3>Unresolved imports</h3>" + table(("import", "lines"), unresolved)
    locked = [(p.get("name"), p.get("version")) for p in map(_dict, _list(deps.get("locked")))]
    out += "<h3>Locked packages</h3>" + table(("name", "version"), locked, "nothing locked")
    return out


def policy(run: RunView) -> str:
    """The policy's verdict, its findings, and the ignored ones with their reasons."""
    report = _dict(run.main.get("policy"))
    if not report:
        return '<p class="note">no policy verdict recorded (no dependencies were checked)</p>'
    verdict = "allowed" if report.get("ok") else "refused"
    audit = _dict(report.get("audit"))
    out = kv(
        (
            ("verdict", verdict),
            ("packages checked", report.get("packages")),
            ("denying findings", report.get("denied")),
            ("warnings", report.get("warnings")),
            ("vulnerability data", audit),
        )
    )
    columns = ("rule", "severity", "package", "version", "id", "message", "evidence", "fix")
    findings = [[f.get(c) for c in columns] for f in map(_dict, _list(report.get("findings")))]
    out += "<h3>Findings</h3>" + table(columns, findings, "no findings")
    ignored = [
        [f.get("ignored"), *(f.get(c) for c in columns)]
        for f in map(_dict, _list(report.get("ignored")))
    ]
    out += "<h3>Ignored findings, with the reasons given</h3>" + table(
        ("reason", *columns), ignored, "none ignored"
    )
    return out


def sbom(run: RunView) -> str:
    """The SBOM's packages, licences and vulnerabilities."""
    summary = run.sbom
    if summary is None:
        return '<p class="note">no SBOM recorded</p>'
    out = f'<p class="note">{h1(f"CycloneDX SBOM, blob {summary.digest}")}</p>'
    if summary.problem:
        return out + f'<p class="note">{h1(summary.problem)}</p>'
    out += kv((("runs on", "; ".join(summary.platform)),))
    out += table(("package", "version", "licences"), summary.packages, "no packages")
    out += "<h3>Vulnerabilities in the SBOM</h3>" + table(
        ("id", "affects", "recommendation"), summary.vulnerabilities, "none listed"
    )
    return out


#: (label, ``sandbox.limits`` key, ``exec.end`` ``enforcement`` key saying how it was
#: enforced, how to show the value).
LIMIT_ENFORCEMENT: Final = (
    ("memory", "memory_bytes", "memory", size),
    ("CPU", "millicpus", "cpu", lambda v: f"{v / 1000:g} CPU" if isinstance(v, int) else ""),
    ("processes", "pids", "pids", str),
    ("temporary files", "tmp_bytes", "tmp", size),
    ("timeout", "timeout_ms", "timeout", duration),
    ("output kept", "output_limit_bytes", "output", size),
)


def sandbox(run: RunView) -> str:
    """The sandbox's settings, each limit with how it was enforced, mounts, details."""
    box = _dict(run.start.get("sandbox"))
    if not box:
        return '<p class="note">no sandbox was started</p>'
    limits = _dict(box.get("limits"))
    enforcement = dict(_dict(run.end.get("enforcement")))
    out = kv(
        (
            ("name", box.get("name")),
            ("backend", box.get("backend")),
            ("ephemeral", box.get("ephemeral")),
            ("network", box.get("network")),
            ("uid in the sandbox", box.get("uid")),
            ("environment variables (names)", ", ".join(map(str, _list(box.get("env_names"))))),
        )
    )
    rows = []
    for label, key, fact, show in LIMIT_ENFORCEMENT:
        if key in limits or fact in enforcement:
            value = limits.get(key)
            rows.append(
                (label, show(value) if value is not None else "", enforcement.pop(fact, ""))
            )
    rows += [(k, "", v) for k, v in sorted(enforcement.items())]
    out += "<h3>Limits, and how each was enforced</h3>" + table(
        ("limit", "set to", "how it was enforced"), rows, "no enforcement recorded", nowrap=2
    )
    mounts = [
        (m.get("target"), m.get("kind"), m.get("source"), "ro" if m.get("read_only") else "rw")
        for m in map(_dict, _list(box.get("mounts")))
    ]
    out += "<h3>Mounts</h3>" + table(("target", "kind", "source", "access"), mounts)
    details = sorted(_dict(box.get("details")).items())
    out += "<h3>Backend details</h3>" + table(("fact", "value"), details)
    return out


def network(run: RunView) -> str:
    """Secrets (names and hosts), the egress allowed, every connection and refusal."""
    secrets = [
        (s.get("name"), ", ".join(map(str, _list(s.get("hosts")))))
        for s in map(_dict, _list(run.main.get("secrets")))
    ]
    out = "<h3>Secrets used (names and hosts; values are never recorded)</h3>" + table(
        ("name", "hosts"), secrets, "no secrets"
    )
    allowed = run.start.get("egress")
    out += "<h3>Egress allowed</h3>" + (
        kv(sorted(_dict(allowed).items())) or '<p class="note">no host allowed</p>'
    )
    columns = ("decision", "host", "port", "method", "status", "bytes_up", "bytes_down")
    events = [
        [*(e.get(c) for c in columns), e.get("secrets"), e.get("reason")]
        for e in map(_dict, run.egress)
    ]
    out += "<h3>Connections and refusals</h3>" + table(
        (*columns, "secrets", "reason"), events, "no connection attempted"
    )
    dropped = run.end.get("egress_dropped")
    if dropped:
        out += f'<p class="note">{h1(f"{dropped} more connection(s) past the proxy cap")}</p>'
    return out


def files(run: RunView) -> str:
    """The files the run changed."""
    columns = ("change", "area", "path", "size", "blake3")
    rows = [[f.get(c) for c in columns] for f in map(_dict, run.files_changed)]
    out = table(columns, rows, "no files changed" if run.end else "the run did not end")
    extra = kv(
        (
            ("incomplete", run.end.get("files_incomplete")),
            ("layer", run.end.get("layer")),
            ("--rw", run.end.get("rw")),
        )
    )
    return out + extra


def output(run: RunView, data: ReportData) -> str:
    """stdout and stderr (cut at :data:`OUTPUT_LIMIT`), or why they are not here."""
    if not run.end:
        return '<p class="note">no output recorded</p>'
    parts = []
    for label in ("stdout", "stderr"):
        ref = _dict(run.end.get(label))
        recorded = (
            f"{size(ref.get('bytes'))} written"
            + (", only the tail kept by the run" if ref.get("truncated") else "")
            if ref
            else ""
        )
        parts.append(f"<h3>{label}</h3>" + (f'<p class="note">{h1(recorded)}</p>'))
        parts.extend(text_block(t, OUTPUT_LIMIT) for t in _texts(run, label))
    if not data.include_output:
        parts.insert(0, '<p class="note">outputs left out (--no-output is the default)</p>')
    return "".join(parts)


def records(run: RunView) -> str:
    """Each record of the run: seq, kind, time, hash, prev; and the bodies as recorded."""
    rows = [(r.seq, r.kind, r.time, r.hash, r.prev) for r in run.records]
    bodies = "".join(
        f"<h3>{h(r.kind)} (seq {r.seq})</h3><pre>"
        + h(json.dumps(r.body, indent=1, ensure_ascii=False, sort_keys=True))
        + "</pre>"
        for r in run.records
    )
    return (
        table(("seq", "kind", "time", "hash", "prev"), rows)
        + f"<details><summary>the records as stored</summary>{bodies}</details>"
    )


#: Beside the status of a run some of whose records no signature covers.
UNSIGNED_CHIP: Final = ' <span class="chip unsigned">unsigned</span>'


def unsigned_warning(run: RunView) -> str:
    """What to make of a run some of whose records no signature covers ("" if none)."""
    if not run.unsigned:
        return ""
    seqs = ", ".join(map(str, run.unsigned))
    return (
        '<p class="unsigned">'
        + h1(
            f"No signature covers this run's record(s) at seq {seqs}: they were appended "
            "by someone without the signing key, or the run crashed before its checkpoint. "
            "Nothing below is vouched for; do not rely on it."
        )
        + "</p>"
    )


def run_section(run: RunView, data: ReportData) -> str:
    """Everything about one run, as one ``<section>``."""
    s = run.summary
    prompt = _dict(run.main.get("prompt"))
    parts = [
        f'<section class="run" id="run-{run.index}">',
        f"<h2>Run {run.index}: {h1(s.script)} — "
        f'<span class="chip st-{class_token(s.status)}">{h1(s.status)}</span>'
        + (UNSIGNED_CHIP if run.unsigned else "")
        + "</h2>",
        unsigned_warning(run),
        run_head(run),
        "<h3>Prompt and model</h3>",
        kv((("model", prompt.get("model")),)),
    ]
    prompts = _texts(run, "prompt")
    parts.extend(text_block(t, TEXT_LIMIT) for t in prompts)
    if not prompts and not prompt.get("model"):
        parts.append('<p class="note">no prompt or model recorded</p>')
    parts.append(f"<h3>Code: {h1(s.script)}</h3>")
    parts.extend(code_block(t) for t in _texts(run, "code"))
    parts += ["<h3>Dependencies</h3>", dependencies(run), "<h3>Policy verdict</h3>", policy(run)]
    parts += ["<h3>SBOM</h3>", sbom(run), "<h3>Sandbox</h3>", sandbox(run)]
    parts += ["<h3>Network</h3>", network(run), "<h3>Files changed</h3>", files(run)]
    parts += [output(run, data)]
    config = [
        (c.get("path"), c.get("layer"), c.get("trusted"), c.get("blake3"))
        for c in map(_dict, _list(run.main.get("config")))
    ]
    parts.append("<h3>Configuration files that applied</h3>")
    parts.append(table(("path", "layer", "trusted", "blake3"), config, "none"))
    parts.extend(f'<p class="note">{h1(p)}</p>' for p in run.list_problems)
    parts += ["<h3>Records</h3>", records(run), "</section>"]
    return "".join(parts)


__all__ = ["LIMIT_ENFORCEMENT", "UNSIGNED_CHIP", "run_section", "unsigned_warning"]
