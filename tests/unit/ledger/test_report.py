"""``jhansi ledger report``'s HTML, rendered from ledgers written through the library.

The page is parsed here with the standard library's HTML parser (``tests/browser.py``);
``tests/integration/test_ledger_report.py`` loads it in chromium.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from jhansi.errors import LedgerError, UsageError
from jhansi.ledger.checkpoint import KeyFileSigner
from jhansi.ledger.read import RunSummary
from jhansi.ledger.report_data import OUTPUT_LIMIT, ReportData, collect, select_runs
from jhansi.ledger.report_html import CSP, SCRIPT, STYLE, banner_state, render
from jhansi.ledger.store import Ledger
from jhansi.ledger.verify import verify_ledger
from jhansi.paths import Paths
from tests.browser import Element, parse
from tests.unit.cli.conftest import Invoke
from tests.unit.ledger.conftest import lines, record_run, write_lines

PAYLOAD = (
    "<script>alert(1)</script></textarea><img src=x onerror=alert(1)>"
    '<a href="javascript:alert(1)">x</a>\' " \x1b[2J\x07\u202e'
)


def _report(
    directory: Path, *, include_output: bool = True, pinned: bool = True, **select: object
) -> ReportData:
    keys = None
    if pinned:
        keys = frozenset({KeyFileSigner.for_paths(Paths.from_environment()).public_key().hex()})
    checked = verify_ledger(directory, trusted_keys=keys)
    return collect(
        directory,
        checked,
        trusted_keys=keys,
        key_source="this machine's key" if pinned else "",
        include_output=include_output,
        now="2026-01-01T00:00:00Z",
        **select,  # type: ignore[arg-type]
    )


def _payload_run(ledger: Ledger, stdout: bytes = PAYLOAD.encode()) -> str:
    run_id = "0018c0000000a-00000000000000aa"
    ledger.append(
        "exec.start",
        {
            "run_id": run_id,
            "actor": {"user": PAYLOAD, "uid": 0, "host": "h"},
            "sandbox": {"name": PAYLOAD, "backend": "bwrap", "limits": {"pids": 7}},
            "script": {"path": PAYLOAD, "blob": ledger.put_blob(PAYLOAD.encode())},
            "prompt": {"model": PAYLOAD, "prompt": {"blob": ledger.put_blob(PAYLOAD.encode())}},
            "secrets": [{"name": "TOKEN", "hosts": ["api.example"], "header": "Authorization"}],
        },
    )
    ledger.append(
        "exec.end",
        {
            "run_id": run_id,
            "result": {"status": "failed", "exit_code": 3, "duration_ms": 5, "error": PAYLOAD},
            "stdout": {"blob": ledger.put_blob(stdout), "bytes": len(stdout)},
            "enforcement": {"pids": PAYLOAD},
            "files_changed": [{"change": "added", "path": PAYLOAD, "area": "/work"}],
            "egress": [{"host": PAYLOAD, "port": 443, "decision": "refused", "reason": PAYLOAD}],
        },
    )
    ledger.checkpoint()
    return run_id


@pytest.fixture
def with_payload(open_ledger: Callable[..., Ledger], ledger_dir: Path) -> Path:
    """Two ordinary runs, then one whose every recorded text is an HTML payload."""
    with open_ledger(checkpoint_interval=1) as ledger:
        record_run(ledger, 1)
        record_run(ledger, 2)
        _payload_run(ledger)
    return ledger_dir


def _tags(dom: Element) -> list[str]:
    return [e.tag for e in dom.iter()]


def test_the_csp_allows_only_the_embedded_style_and_script(with_payload: Path) -> None:
    page = render(_report(with_payload))
    for text, kind in ((STYLE, "style"), (SCRIPT, "script")):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"{kind}-src 'sha256-{digest}'" in CSP
        assert f"<{kind}>{text}</{kind}>" in page
    assert CSP.startswith("default-src 'none';")
    # The policy comes right after the charset, before anything it governs.
    head = page[: page.index("<title>")]
    assert re.fullmatch(
        r'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        r'<meta http-equiv="Content-Security-Policy" content="[^"]+">.*',
        head,
    )
    dom = parse(page)
    (meta,) = dom.find_all("meta", http_equiv="Content-Security-Policy")
    assert meta.attrs["content"] == CSP
    for element in dom.iter():
        assert "style" not in element.attrs  # an inline style would need 'unsafe-inline'
        assert not [name for name in element.attrs if name.startswith("on")]


def test_recorded_text_creates_no_element(with_payload: Path) -> None:
    page = render(_report(with_payload))
    dom = parse(page)
    tags = _tags(dom)
    assert tags.count("script") == 1
    assert tags.count("style") == 1
    assert "img" not in tags
    assert "textarea" not in tags
    for element in dom.iter():
        if "href" in element.attrs:
            assert re.fullmatch(r"#run-\d+", element.attrs["href"] or "")
    assert "\x1b" not in page
    assert "\u202e" not in page
    assert "\x07" not in page
    shown = PAYLOAD.replace("\x1b", "\\x1b").replace("\x07", "\\x07").replace("\u202e", "\\u202e")
    (section,) = dom.find_all("section", id="run-3")
    # The prompt and the output (the code is numbered lines, the rest one-line cells).
    assert len([p for p in section.find_all("pre") if p.text == shown]) == 2
    assert len([o for o in section.find_all("ol") if o.text == shown]) == 1
    # In attributes too: the filter's data is escaped, never code.
    (row,) = [r for r in dom.find_all("tr") if r.attrs.get("data-section") == "run-3"]
    assert row.attrs["data-sandbox"] == shown
    assert row.attrs["data-status"] == "failed"
    assert shown.lower() in (row.attrs["data-search"] or "")


def test_the_timeline_rows_carry_the_filter_data(with_payload: Path) -> None:
    dom = parse(render(_report(with_payload)))
    rows = [r for r in dom.find_all("tr") if "data-section" in r.attrs]
    assert [r.attrs["data-section"] for r in rows] == ["run-1", "run-2", "run-3"]
    assert [r.attrs["data-sandbox"] for r in rows[:2]] == ["default", "other"]
    for row in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", row.attrs["data-date"] or "")
        assert set(row.attrs) >= {"data-status", "data-actor", "data-search"}
    (status,) = dom.find_all("select", id="f-status")
    assert [o.attrs["value"] for o in status.find_all("option")] == ["", "failed", "succeeded"]
    (filters,) = dom.find_all("div", id="filters")
    assert "hidden" in filters.attrs  # shown by the script only: no dead controls without it


def test_banner_states(with_payload: Path, tmp_path: Path) -> None:
    data = _report(with_payload)
    assert banner_state(data) == "ok"
    assert f"ledger verifies: {with_payload}" in parse(render(data)).text
    unpinned = _report(with_payload, pinned=False)
    assert banner_state(unpinned) == "warn"
    assert "key-unpinned" in parse(render(unpinned)).text

    original = lines(with_payload)
    edited = [line.replace(b'"exit_code":3', b'"exit_code":0') for line in original]
    assert edited != original
    write_lines(with_payload, edited)
    tampered = _report(with_payload)
    assert banner_state(tampered) == "fail"
    page = render(tampered)
    dom = parse(page)
    (banner,) = dom.find_all("header", id="verification")
    assert banner.attrs["data-state"] == "fail"
    first = tampered.verification.first_error
    assert first is not None
    assert f"first failure: {first.describe()}" in banner.text
    for element in dom.iter():
        assert "state-ok" not in (element.attrs.get("class") or "").split()
    assert 'data-state="ok"' not in page
    (problems,) = dom.find_all("section", id="problems")
    assert first.kind in problems.text


def test_output_is_cut_with_a_note_and_left_out_without_include_output(
    open_ledger: Callable[..., Ledger], ledger_dir: Path
) -> None:
    with open_ledger(checkpoint_interval=1) as ledger:
        _payload_run(ledger, stdout=b"a" * (OUTPUT_LIMIT + 10))
    page = render(_report(ledger_dir))
    assert "a" * OUTPUT_LIMIT in page
    assert "a" * (OUTPUT_LIMIT + 1) not in page
    assert "cut at 65,536 characters: 10 more not shown" in page
    without = parse(render(_report(ledger_dir, include_output=False)))
    assert "a" * 100 not in without.text
    assert "left out of this report (--no-output)" in without.text


def test_long_lists_are_read_whole_from_their_blob(
    open_ledger: Callable[..., Ledger], ledger_dir: Path
) -> None:
    from jhansi.records import LIST_HEAD_ITEMS, bounded_list

    files = [{"change": "added", "path": f"f{n:04d}.txt", "area": "/work"} for n in range(150)]
    with open_ledger(checkpoint_interval=1) as ledger:
        run_id = record_run(ledger, 1, checkpoint=False, end=False)
        body = bounded_list("files_changed", files, ledger.put_blob)
        assert len(body["files_changed"]) == LIST_HEAD_ITEMS
        ledger.append("exec.end", {"run_id": run_id, "result": {"status": "succeeded"}, **body})
        ledger.checkpoint()
    (run,) = _report(ledger_dir).runs
    assert len(run.files_changed) == 150
    assert "f0149.txt" in render(_report(ledger_dir))


def _summary(run_id: str, time: str, sandbox: str = "default") -> RunSummary:
    return RunSummary(run_id, time, sandbox, "a.py", "succeeded", 0, 1)


def test_select_runs() -> None:
    runs = [
        _summary("aa11", "2025-01-01T10:00:00.000000Z"),
        _summary("aa22", "2025-01-02T10:00:00.000000Z", "other"),
        _summary("bb33", "2025-01-03T10:00:00.000000Z"),
    ]
    assert [r.run_id for r in select_runs(runs, run_ids=["bb", "aa1"])] == ["aa11", "bb33"]
    assert [r.run_id for r in select_runs(runs, sandbox="other")] == ["aa22"]
    since, until = "2025-01-02T00:00:00.000000Z", "2025-01-03T00:00:00.000000Z"
    assert [r.run_id for r in select_runs(runs, since=since, until=until)] == ["aa22"]
    with pytest.raises(UsageError, match="matches 2 runs"):
        select_runs(runs, run_ids=["aa"])
    with pytest.raises(UsageError, match="no such run"):
        select_runs(runs, run_ids=["zz"])


def test_cli_writes_0600_and_refuses_what_it_should(
    cli: Invoke, with_payload: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    out.write_text("old")
    out.chmod(0o644)
    done = cli("ledger", "report", "--ledger", str(with_payload), "-o", str(out))
    assert done.code == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "3 run(s)" in done.stderr

    directory = cli("ledger", "report", "--ledger", str(with_payload), "-o", str(tmp_path))
    assert directory.code == 2
    assert "not a regular file" in directory.stderr
    no_file = cli("ledger", "report", "--ledger", str(with_payload), "--json")
    assert no_file.code == 2
    until = cli("ledger", "report", "--ledger", str(with_payload), "--until", "soon", "-o", "x")
    assert until.code == 2
    assert "--until 'soon'" in until.stderr
    anchor = cli("ledger", "report", "--ledger", str(with_payload), "--anchor", "1:zz", "-o", "x")
    assert anchor.code == 2
    assert "--anchor" in anchor.stderr


def _append_unsigned_run(directory: Path, run_id: str) -> None:
    """A run appended by someone without the key: the chain recomputed, no MAC."""
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.record import make_record, parse_line

    last = parse_line(lines(directory)[-1][:-1])
    code = BlobStore(directory / "blobs").put(b"print('appended')\n")
    body = {"run_id": run_id, "script": {"path": "appended.py", "blob": code}}
    start = make_record(
        ledger_id=last.ledger_id, seq=last.seq + 1, prev=last.hash, kind="exec.start", body=body
    )
    end = make_record(
        ledger_id=last.ledger_id,
        seq=start.seq + 1,
        prev=start.hash,
        kind="exec.end",
        body={"run_id": run_id, "result": {"status": "succeeded", "exit_code": 0}},
    )
    write_lines(directory, [*lines(directory), start.line + b"\n", end.line + b"\n"])


def test_a_run_no_signature_covers_is_marked_as_such(with_payload: Path) -> None:
    forged = "0018c0000000f-00000000000000ff"
    _append_unsigned_run(with_payload, forged)
    data = _report(with_payload)
    assert banner_state(data) == "warn"  # an unsigned tail verifies, with a warning
    dom = parse(render(data))
    rows = {
        row.attrs["data-section"]: row.attrs["data-signed"]
        for row in dom.find_all("tr")
        if "data-section" in row.attrs
    }
    assert list(rows.values()) == ["yes", "yes", "yes", "no"]
    sections = [s for s in dom.find_all("section") if "run" in (s.attrs.get("class") or "")]
    warned = [s for s in sections if s.find_all("p", **{"class": "unsigned"})]
    assert len(warned) == 1
    assert forged in warned[0].text
    assert "No signature covers this run's record(s) at seq " in warned[0].text


def test_a_ledger_changed_after_it_was_verified_is_not_reported(with_payload: Path) -> None:
    keys = frozenset({KeyFileSigner.for_paths(Paths.from_environment()).public_key().hex()})
    checked = verify_ledger(with_payload, trusted_keys=keys)
    assert checked.ok
    _append_unsigned_run(with_payload, "0018c0000000f-00000000000000ff")  # appended since
    data = collect(with_payload, checked, trusted_keys=keys, include_output=False, now="now")
    assert len(data.runs) == 3  # what was verified, not what came after
    edited = lines(with_payload)
    at = next(n for n, line in enumerate(edited) if b'"exec.start"' in line)
    edited[at] = edited[at].replace(b'"exec.start"', b'"exec.stark"')  # no longer a record
    write_lines(with_payload, edited)
    with pytest.raises(LedgerError, match="changed after it was verified"):
        collect(with_payload, checked, trusted_keys=keys, include_output=False, now="now")


def test_an_sbom_of_the_wrong_shape_is_shown_as_what_it_holds(tmp_path: Path) -> None:
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.report_data import sbom_summary

    store = BlobStore(tmp_path)
    for document in (
        {"components": 5},
        {"components": [{"type": "library", "name": "x", "licenses": 7}]},
        {"vulnerabilities": [{"id": "X", "affects": 3}]},
    ):
        summary = sbom_summary(store.put(json.dumps(document).encode()), store)
        assert summary.problem is None
    assert summary.vulnerabilities == (("X", "", ""),)


def test_a_recorded_status_names_no_class_of_its_own(
    open_ledger: Callable[..., Ledger], ledger_dir: Path
) -> None:
    with open_ledger(checkpoint_interval=1) as ledger:
        run_id = "0018c0000000b-00000000000000bb"
        code = ledger.put_blob(b"print(1)\n")
        ledger.append("exec.start", {"run_id": run_id, "script": {"path": "s.py", "blob": code}})
        status = "x banner state-ok verified-ledger"
        ledger.append("exec.end", {"run_id": run_id, "result": {"status": status}})
        ledger.checkpoint()
        record_run(ledger, 1)
    dom = parse(render(_report(ledger_dir)))
    classes = {c for e in dom.iter() for c in (e.attrs.get("class") or "").split()}
    assert "st-other" in classes
    assert "st-succeeded" in classes
    assert not {"x", "state-ok", "verified-ledger"} & {
        c for e in dom.find_all("span") for c in (e.attrs.get("class") or "").split()
    }
    assert status in dom.text  # shown, as text
