"""``jhansi ledger report``: the ledger as one self-contained HTML file, for an auditor.

The page has no dependency: no network, no external script, style, font or image.
Its Content-Security-Policy (a ``<meta>``, the first element after the charset)
allows nothing (``default-src 'none'``) but the one ``<style>`` and the one
``<script>`` it embeds, each by its SHA-256 hash; an injected element could not
load or run anything even if escaping failed.

Everything recorded is untrusted (a script chose its code, its output, its file
names; a caller chose its prompt): it reaches the page only through :func:`h`, which
escapes ``& < > " '`` in every context (text and attribute values alike) after
making terminal escapes and invisible or bidirectional format characters visible
(:func:`jhansi.ledger.read.terminal_safe`). Recorded text never goes into a script,
a style, a URL or an event handler: the timeline's filter reads ``data-*``
attributes, and the only links are the page's own ``#run-N`` anchors.

Verification comes first: the banner at the top says whether the ledger verifies,
in the words ``jhansi ledger verify`` uses, against which key and anchors. Its
state (``data-state``: ``ok``, ``warn`` or ``fail``) is green only when verification
found neither an error nor a warning.

The timeline filter is plain JavaScript embedded in the page (:data:`SCRIPT`); with
JavaScript off, the filter controls stay hidden and every row is shown. Its initial
state can be given in the address's fragment (``report.html#status=failed&q=six``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Final

from jhansi.ledger.report_data import OUTPUT_LIMIT, ReportData
from jhansi.ledger.report_parts import as_dict as _dict
from jhansi.ledger.report_parts import class_token, duration, h, h1, kv, table, value_text
from jhansi.ledger.report_run import UNSIGNED_CHIP, run_section

STYLE: Final = """
:root{color-scheme:light;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg2:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg)}
main,footer{max-width:1240px;margin:0 auto;padding:0 16px}
.banner{padding:12px 16px;border-bottom:4px solid;max-height:45vh;overflow:auto}
.banner h1{margin:0 0 4px;font-size:22px}
.banner p{margin:2px 0}
.banner dl{display:grid;grid-template-columns:max-content 1fr;gap:1px 12px;margin:6px 0 0}
.state-ok{background:#dafbe1;border-color:#1a7f37}.state-ok h1{color:#116329}
.state-warn{background:#fff8c5;border-color:#9a6700}.state-warn h1{color:#7d4e00}
.state-fail{background:#ffebe9;border-color:#cf222e}.state-fail h1{color:#a40e26}
.verdict{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:600}
h2{margin:24px 0 8px;font-size:19px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{margin:16px 0 6px;font-size:15px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:4px 0}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;margin:4px 0 8px}
th,td{border:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:var(--bg2);font-weight:600}
.nw1 td:first-child,.nw2 td:nth-child(-n+2){white-space:nowrap}
code,pre,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:var(--bg2);border:1px solid var(--line);padding:8px;white-space:pre-wrap;
overflow-wrap:anywhere;margin:4px 0;max-height:480px;overflow:auto}
ol.code{background:var(--bg2);border:1px solid var(--line);margin:4px 0;padding:6px 6px 6px 4.5em;
max-height:560px;overflow:auto;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
ol.code li{white-space:pre-wrap;overflow-wrap:anywhere;min-height:1.35em}
ol.code li::marker{color:var(--muted)}
.note{color:var(--muted);font-style:italic}
.chip{display:inline-block;padding:0 6px;border-radius:8px;border:1px solid var(--line)}
.st-failed,.st-timeout,.st-killed,.st-error,.st-crashed{color:#a40e26;border-color:#cf222e}
.st-denied,.st-refused{color:#7d4e00;border-color:#9a6700}
.unsigned{color:#a40e26;border-color:#cf222e;font-weight:600}
p.unsigned{border:2px solid #cf222e;background:#ffebe9;padding:6px 8px;border-radius:4px}
.run{border-top:3px solid var(--line);margin-top:28px}
.untrusted-ledger .run{border-top-color:#cf222e}
#filters{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:end;margin:6px 0}
#filters label{display:flex;flex-direction:column;font-size:12px;color:var(--muted)}
#filters input,#filters select{font:inherit;padding:2px 4px}
#count{color:var(--muted);margin:2px 0}
footer{color:var(--muted);border-top:1px solid var(--line);margin-top:32px;padding:12px 16px}
"""

SCRIPT: Final = """
(function () {
  "use strict";
  var doc = document;
  doc.documentElement.setAttribute("data-js", "on");
  var bar = doc.getElementById("filters");
  var count = doc.getElementById("count");
  if (!bar || !count) { return; }
  var rows = Array.prototype.slice.call(doc.querySelectorAll("#timeline tbody tr"));
  var names = ["status", "actor", "sandbox", "from", "to", "q"];
  var field = {};
  names.forEach(function (name) { field[name] = doc.getElementById("f-" + name); });
  function apply() {
    var q = field.q.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (row) {
      var d = row.dataset;
      var keep = (!field.status.value || d.status === field.status.value) &&
        (!field.actor.value || d.actor === field.actor.value) &&
        (!field.sandbox.value || d.sandbox === field.sandbox.value) &&
        (!field.from.value || d.date >= field.from.value) &&
        (!field.to.value || d.date <= field.to.value) &&
        (!q || d.search.indexOf(q) !== -1);
      row.hidden = !keep;
      var section = doc.getElementById(d.section || "");
      if (section) { section.hidden = !keep; }
      if (keep) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " shown";
    doc.documentElement.setAttribute("data-shown", String(shown));
  }
  var fragment = location.hash.replace(/^#/, "");
  if (fragment.indexOf("=") !== -1) {
    fragment.split("&").forEach(function (pair) {
      var cut = pair.indexOf("=");
      if (cut < 0) { return; }
      try {
        var key = decodeURIComponent(pair.slice(0, cut));
        var value = decodeURIComponent(pair.slice(cut + 1).replace(/\\+/g, " "));
        if (Object.prototype.hasOwnProperty.call(field, key) && field[key]) {
          field[key].value = value;
        }
      } catch (ignored) { /* a malformed fragment sets nothing */ }
    });
  }
  bar.addEventListener("input", apply);
  bar.addEventListener("change", apply);
  bar.hidden = false;
  apply();
})();
"""


def csp_hash(text: str) -> str:
    """The CSP source expression allowing an inline element whose text is ``text``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


#: The page's Content-Security-Policy: nothing but its own style and script.
CSP: Final = (
    f"default-src 'none'; style-src {csp_hash(STYLE)}; script-src {csp_hash(SCRIPT)}; "
    "img-src 'none'; font-src 'none'; connect-src 'none'; base-uri 'none'; "
    "form-action 'none'"
)


# -- the banner ------------------------------------------------------------------------------


def banner_state(data: ReportData) -> str:
    """``ok`` (green: no error, no warning), ``warn`` (verifies, with warnings) or ``fail``."""
    report = data.verification
    if not report.ok:
        return "fail"
    return "warn" if report.warnings else "ok"


def banner(data: ReportData) -> str:
    """The verification banner: the verdict in ``ledger verify``'s words, key, anchors."""
    report = data.verification
    state = banner_state(data)
    title = {
        "ok": "✓ The ledger verifies",
        "warn": "⚠ The ledger verifies, with warnings",
        "fail": "✗ The ledger does NOT verify: do not rely on this report",
    }[state]
    parts = [f'<header id="verification" class="banner state-{state}" data-state="{state}">']
    parts.append(f"<h1>{h(title)}</h1>")
    if report.ok:
        parts.append(f'<p class="verdict">ledger verifies: {h1(report.path)}</p>')
        parts.extend(
            f'<p class="verdict">anchor matches: {h1(a)} (the ledger still holds that record, '
            "unchanged)</p>"
            for a in report.anchors
        )
    else:
        parts.append(f'<p class="verdict">ledger does NOT verify: {h1(report.path)}</p>')
        first = report.first_error
        if first is not None:
            parts.append(f'<p class="verdict">first failure: {h1(first.describe())}</p>')
        parts.extend(
            f'<p class="verdict">error: {h1(p.describe())}</p>' for p in report.errors[1:5]
        )
        if len(report.errors) > 5 or report.truncated_report:
            parts.append('<p class="note">more errors: listed at the end of this report</p>')
    parts.extend(f"<p>warning: {h1(p.describe())}</p>" for p in report.warnings[:5])
    if len(report.warnings) > 5:
        parts.append('<p class="note">more warnings: listed at the end of this report</p>')
    if data.trusted_keys is not None:
        key = f"pinned ({data.key_source}): " + ", ".join(data.trusted_keys)
    else:
        key = "not pinned: any valid signature was accepted (give --key to pin one)"
    signed = ", ".join(report.keys) or "no signature found"
    anchors = (
        ", ".join(report.anchors)
        if report.anchors
        else "none given (--anchor SEQ:HASH, from `jhansi ledger head` kept elsewhere)"
    )
    head = report.head or {}
    runs = f"{report.runs} run(s)"
    if report.crashed_runs:
        runs += f" ({len(report.crashed_runs)} without an end)"
    parts.append(
        kv(
            (
                ("trusted key", key),
                ("signed by", signed),
                ("anchors", anchors),
                ("signed head", f"seq {head.get('seq')}, hash {head.get('hash')}" if head else ""),
                (
                    "checked",
                    f"{report.records} record(s), last seq {report.last_seq}, {runs}, "
                    f"{report.denied} denied, {report.checkpoints} checkpoint(s), "
                    f"{report.blobs_checked} blob(s)",
                ),
            )
        )
    )
    parts.append("</header>")
    return "".join(parts)


def all_problems(data: ReportData) -> str:
    """Every error and warning of the verification (the banner shows the first few)."""
    report = data.verification
    rows = [("error", p.kind, p.line, p.seq, p.message) for p in report.errors]
    rows += [("warning", p.kind, p.line, p.seq, p.message) for p in report.warnings]
    more = (
        '<p class="note">more problems were found than are listed: '
        "`jhansi ledger verify --json` lists them</p>"
        if report.truncated_report
        else ""
    )
    return (
        '<section id="problems"><h2>Verification problems</h2>'
        + table(("", "kind", "line", "seq", "message"), rows, "none")
        + more
        + "</section>"
    )


# -- the timeline ----------------------------------------------------------------------------


def _options(field: str, label: str, values: Iterable[str]) -> str:
    choices = "".join(f'<option value="{h1(v)}">{h1(v)}</option>' for v in sorted(set(values)))
    return (
        f'<label for="f-{field}">{h(label)}<select id="f-{field}">'
        f'<option value="">all</option>{choices}</select></label>'
    )


def timeline(data: ReportData) -> str:
    """The table of runs and refusals, with its (scripted) filter controls."""
    runs = data.runs
    controls = (
        '<div id="filters" hidden>'
        + _options("status", "status", (r.summary.status for r in runs))
        + _options("actor", "actor", (r.actor for r in runs))
        + _options("sandbox", "sandbox", (r.summary.sandbox or "" for r in runs))
        + '<label for="f-from">from (UTC)<input id="f-from" type="date"></label>'
        + '<label for="f-to">to (UTC)<input id="f-to" type="date"></label>'
        + '<label for="f-q">search<input id="f-q" type="search" '
        'placeholder="script, run id, model, host…"></label></div>'
    )
    headers = (
        "time (UTC)",
        "actor",
        "script",
        "status",
        "exit",
        "duration",
        "sandbox",
        "backend",
        "refused conn.",
    )
    rows = []
    for run in runs:
        s = run.summary
        model = _dict(run.main.get("prompt")).get("model")
        search = " ".join(
            value_text(v)
            for v in (s.run_id, s.script, run.actor, s.sandbox, s.status, run.backend, model)
            if v
        ).lower()
        cells = (
            f'<td class="mono"><a href="#run-{run.index}">{h1(s.time[:19].replace("T", " "))}</a>'
            f"</td><td>{h1(run.actor)}</td><td>{h1(s.script)}</td>"
            f'<td><span class="chip st-{class_token(s.status)}">{h1(s.status)}</span>'
            f"{UNSIGNED_CHIP if run.unsigned else ''}</td>"
            f"<td>{h1('' if s.exit_code is None else s.exit_code)}</td>"
            f"<td>{h1(duration(s.duration_ms))}</td><td>{h1(s.sandbox)}</td>"
            f"<td>{h1(run.backend)}</td><td>{run.refusals or ''}</td>"
        )
        rows.append(
            f'<tr data-section="run-{run.index}" data-status="{h1(s.status)}" '
            f'data-actor="{h1(run.actor)}" data-sandbox="{h1(s.sandbox or "")}" '
            f'data-date="{h1(s.time[:10])}" data-search="{h1(search)}" '
            f'data-signed="{"no" if run.unsigned else "yes"}">{cells}</tr>'
        )
    head = "".join(f"<th>{h(name)}</th>" for name in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}">no runs selected</td></tr>'
    return (
        f'<section id="timeline"><h2>Timeline: {len(runs)} run(s) and refusal(s)</h2>'
        f'{controls}<p id="count" aria-live="polite"></p>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>"
    )


# -- the page --------------------------------------------------------------------------------


def render(data: ReportData) -> str:
    """The whole page."""
    state = banner_state(data)
    filters: Mapping[str, Any] = {k: v for k, v in data.filters.items() if v}
    selection = (
        "; ".join(f"--{k} {value_text(v)}" for k, v in filters.items()) or "every run in the ledger"
    )
    outputs = (
        f"included (cut at {OUTPUT_LIMIT:,} characters)" if data.include_output else "left out"
    )
    footer = (
        f"<footer><p>Written by jhansi {h1(data.jhansi_version)} at {h1(data.generated)} "
        f"from the ledger at {h1(data.directory)}. Runs: {h1(selection)}. Outputs "
        f"{outputs}."
        " Everything recorded is shown escaped; terminal escapes and invisible characters are "
        "written as \\xNN or \\uNNNN.</p></footer>"
    )
    title = f"jhansi ledger report: {len(data.runs)} run(s), " + (
        "verifies" if data.verification.ok else "does NOT verify"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{h(CSP)}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)}</title><style>{STYLE}</style></head>"
        f'<body class="{"untrusted-ledger" if state == "fail" else "verified-ledger"}">'
        + banner(data)
        + "<main>"
        + timeline(data)
        + "".join(run_section(run, data) for run in data.runs)
        + all_problems(data)
        + "</main>"
        + footer
        + f"<script>{SCRIPT}</script></body></html>\n"
    )


__all__ = ["CSP", "SCRIPT", "STYLE", "banner_state", "csp_hash", "h", "render"]
