"""Reading for people: runs, one run with its blobs, export."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from jhansi.errors import UsageError
from jhansi.ledger.blobs import BlobStore
from jhansi.ledger.read import (
    export_csv,
    export_jsonl,
    filter_runs,
    iter_records,
    parse_since,
    run_records,
    run_texts,
    summarize_runs,
)
from jhansi.ledger.store import Ledger
from tests.unit.ledger.conftest import lines, record_run

OpenLedger = Callable[..., Ledger]


def test_runs_are_summarized_in_order(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        first = record_run(ledger, 1)
        crashed = record_run(ledger, 2, end=False)
        ledger.append(
            "exec.denied",
            {
                "run_id": "denied-1",
                "sandbox": "default",
                "script": {"path": "evil.py"},
                "reason": "CVE",
                "result": {"status": "denied", "exit_code": 3},
            },
        )
    runs = summarize_runs(iter_records(ledger_dir))
    assert [(r.run_id, r.status, r.exit_code) for r in runs] == [
        (first, "succeeded", 0),
        (crashed, "unfinished", None),
        ("denied-1", "denied", 3),
    ]
    assert runs[0].script == "script_1.py"
    assert runs[0].duration_ms == 10
    assert [r.run_id for r in filter_runs(runs, sandbox="other")] == [crashed]
    assert filter_runs(runs, since="9999-01-01T00:00:00.000000Z") == []
    assert len(filter_runs(runs, since=runs[0].time)) == 3


def test_parse_since() -> None:
    now = dt.datetime(2025, 1, 31, 12, 0, tzinfo=dt.UTC)
    assert parse_since("2025-01-30") == "2025-01-30T00:00:00.000000Z"
    assert parse_since("2025-01-30T10:00+02:00") == "2025-01-30T08:00:00.000000Z"
    assert parse_since("2025-01-30T10:00Z") == "2025-01-30T10:00:00.000000Z"
    assert parse_since("1d", now=now) == "2025-01-30T12:00:00.000000Z"
    assert parse_since("90m", now=now) == "2025-01-31T10:30:00.000000Z"
    with pytest.raises(UsageError):
        parse_since("last tuesday")


def test_one_run_with_its_prompt_code_and_output(populated: Path) -> None:
    run_id = summarize_runs(iter_records(populated))[2].run_id
    full, records = run_records(populated, run_id[:-3])
    assert full == run_id
    assert [r.kind for r in records] == ["exec.start", "exec.end"]
    texts = {t.label: t.text for t in run_texts(records, BlobStore(populated / "blobs"))}
    assert texts == {"prompt": "print the number 2", "code": "print(2)\n", "stdout": "2\n"}
    with pytest.raises(UsageError, match="matches 5 runs"):
        run_records(populated, run_id[:3])
    with pytest.raises(UsageError, match="no run"):
        run_records(populated, "nope")


def test_a_damaged_blob_is_shown_as_such(populated: Path) -> None:
    run_id = summarize_runs(iter_records(populated))[0].run_id
    _, records = run_records(populated, run_id)
    digest = records[0].body["script"]["blob"]
    (populated / "blobs" / digest[:2] / digest[2:]).write_bytes(b"changed")
    texts = {t.label: t for t in run_texts(records, BlobStore(populated / "blobs"))}
    assert texts["code"].text is None
    assert texts["code"].problem is not None
    assert "altered" in texts["code"].problem


def test_export_jsonl_is_the_records_as_stored(populated: Path) -> None:
    out = io.BytesIO()
    assert export_jsonl(iter_records(populated), out) == len(lines(populated))
    assert out.getvalue() == b"".join(lines(populated))


def test_export_csv_defuses_formulas(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        ledger.append(
            "exec.start",
            {"run_id": "r1", "sandbox": '=HYPERLINK("http://x")', "script": {"path": "-a.py"}},
        )
    out = io.StringIO()
    count = export_csv(iter_records(ledger_dir), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == len(rows) == 3
    assert rows[-1]["sandbox"] == '\'=HYPERLINK("http://x")'
    assert rows[-1]["script"] == "'-a.py"
    assert rows[-1]["kind"] == "exec.start"
    assert rows[-1]["seq"] == "2"
