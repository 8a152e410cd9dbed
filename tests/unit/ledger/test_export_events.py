"""``jhansi ledger export --format jsonl``: one event per record, valid against the schema.

Every exported line is validated, strictly, against
``schemas/jhansi-ledger-event-1.schema.json`` (a test also checks that the schema
leaves no object open to undocumented keys). The records come from the ledger's own
writer and from the runner's body builders (:mod:`jhansi.records`), from a real
``jhansi sandbox apply`` record's builder, and from the ledger recorded by jhansi 0.1.0
(``tests/fixtures/ledger-0.1.0``), copied to a temporary directory first.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from jhansi.ledger.blobs import BlobStore
from jhansi.ledger.events import SCHEMA_ID, SCHEMA_VERSION, Verification, ledger_events
from jhansi.ledger.layout import LedgerLayout
from jhansi.ledger.store import Ledger
from jhansi.ledger.verify import verify_ledger
from tests.conftest import run_jhansi
from tests.unit.ledger.conftest import lines, record_run, write_lines

OpenLedger = Callable[..., Ledger]
ROOT = Path(__file__).resolve().parents[3]
SCHEMA_FILE = ROOT / "schemas" / "jhansi-ledger-event-1.schema.json"
FIXTURE = ROOT / "tests" / "fixtures" / "ledger-0.1.0"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def export(directory: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """The events as ``--format jsonl`` writes them (through JSON and back)."""
    report = verify_ledger(directory, **kwargs)
    blobs = BlobStore(LedgerLayout(directory).blobs_dir)
    events = ledger_events(directory, Verification.from_report(report), blobs)
    return [json.loads(json.dumps(event)) for event in events]


def valid(validator: Draft202012Validator, events: list[dict[str, Any]]) -> None:
    for event in events:
        problems = [e.message[:300] for e in validator.iter_errors(event)]
        assert not problems, (event["seq"], event["kind"], problems)


def _objects(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _objects(item)


def test_the_schema_is_closed_and_versioned() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$id"] == SCHEMA_ID
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA_VERSION.startswith("1.")
    defs = schema["$defs"]
    # The parts events are made of (closed by the event that uses them) ...
    parts = {id(defs[name]) for name in ("common", "actor", "run", "policy")}
    for name, part in defs.items():
        if name.startswith("event."):
            # ... and the events, each closed to anything it does not list.
            assert part["unevaluatedProperties"] is False, name
            parts.add(id(part))
    for found in _objects(schema):
        if "properties" in found and id(found) not in parts:
            assert found.get("additionalProperties") is False, found["properties"].keys()


def _egress(n: int, decision: str, host: str) -> dict[str, object]:
    return {
        "host": host,
        "port": 443,
        "address": None,
        "method": None,
        "path_hash": None,
        "status": None if decision != "refused" else 403,
        "bytes_up": 10,
        "bytes_down": 20,
        "decision": decision,
        "reason": "not in [network] allow" if decision == "refused" else "",
        "secrets": [],
        "started_ms": 1_700_000_000_000 + n,
    }


def _end_body(ledger: Ledger, run_id: str, egress: list[dict[str, object]]) -> dict[str, Any]:
    """An ``exec.end`` body as the runner builds it (:func:`jhansi.records.end_body`)."""
    from jhansi.records import end_body
    from jhansi.result import RunResult
    from jhansi.sandbox.interface import BackendInfo, OutputTail

    result = RunResult(
        run_id=run_id,
        status="failed",
        exit_code=1,
        signal=None,
        duration_ms=1234,
        script="net.py",
        project=None,
        sandbox="default",
        ephemeral=False,
        home="/home/sandbox",
        backend=BackendInfo("bwrap", {}),
        stdout=OutputTail(b"out\n", 4, False),
        stderr=OutputTail(b"", 0, False),
        files_changed=(),
        egress=tuple(egress),
        egress_dropped=7,
    )
    return end_body(result, ledger.put_blob)


def _every_kind(open_ledger: OpenLedger, ledger_dir: Path, tmp_path: Path) -> None:
    """A ledger with every kind jhansi writes: genesis, checkpoints, runs (one with a long
    egress list, kept whole in a blob), a refusal, a torn write's recovery,
    ``sandbox.apply``, and a kind this version does not know."""
    from jhansi.errors import PolicyError
    from jhansi.layers import _record
    from jhansi.records import denied_body
    from jhansi.request import RunRequest
    from jhansi.sandbox.layer import ApplyReport, Outcome
    from jhansi.sandbox.overlay import LayerDirs

    with open_ledger(checkpoint_interval=1) as ledger:
        run_id = record_run(ledger, 1, end=False)
        many = [_egress(n, "refused", f"h{n % 5}.example") for n in range(150)]
        many += [_egress(150, "tunnelled", "files.example"), _egress(151, "failed", "")]
        ledger.append("exec.end", _end_body(ledger, run_id, many))
        ledger.checkpoint()
        refusal = PolicyError("the policy refused it", hint="Re-lock.")
        request = RunRequest(script=Path("bad.py"), prompt="do it", model="m-1")
        body = denied_body(request, "r-denied", None, refusal, None, ledger.put_blob)
        ledger.append("exec.denied", body)
    with (ledger_dir / "ledger.jsonl").open("ab") as handle:
        handle.write(b'{"body":{"run_id":"torn')
    with open_ledger(checkpoint_interval=1) as ledger:
        record_run(ledger, 2)
        ledger.append("custom.note", {"text": "a library user's own record"})
        report = ApplyReport(
            (
                Outcome("result.txt", "added", "applied"),
                Outcome("secret.env", "added", "refused", "masked"),
            )
        )
        dirs = LayerDirs(root=tmp_path / "layer", project=tmp_path / "project")
        _record(ledger, "default", dirs, report, {"result.txt": "ab" * 32})


def by_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


def test_every_kind_exports_valid_events(
    open_ledger: OpenLedger, ledger_dir: Path, tmp_path: Path, validator: Draft202012Validator
) -> None:
    _every_kind(open_ledger, ledger_dir, tmp_path)
    events = export(ledger_dir)
    valid(validator, events)
    assert {e["kind"] for e in events} == {
        "ledger.genesis",
        "ledger.recovery",
        "checkpoint",
        "exec.start",
        "exec.end",
        "exec.denied",
        "sandbox.apply",
        "custom.note",
    }
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(e["ledger_verified"] and e["verification"] == "verified" for e in events)
    assert all(e["schema_version"] == SCHEMA_VERSION for e in events)
    stored = {r["seq"]: r for r in map(json.loads, lines(ledger_dir)[:1])}
    assert events[0]["hash"] == stored[0]["hash"]

    end = by_kind(events, "exec.end")[0]
    # The record keeps 100 of the 152 connections; the counts are of all of them (blob).
    assert (end["egress_refusals"], end["egress_connections"], end["egress_failures"]) == (
        150,
        1,
        1,
    )
    assert end["egress_dropped"] == 7
    assert end["egress_complete"] is True
    assert end["egress_hosts"] == ["files.example:443"]
    assert end["egress_refused_hosts"] == [f"h{n}.example:443" for n in range(5)]
    assert (end["status"], end["exit_code"], end["duration_ms"]) == ("failed", 1, 1234)
    # Who ran what comes from the run's exec.start.
    start = by_kind(events, "exec.start")[0]
    assert end["run_id"] == start["run_id"]
    assert (end["script_path"], end["sandbox"]) == ("script_1.py", "default")
    assert start["status"] == "started"

    denied = by_kind(events, "exec.denied")[0]
    assert (denied["status"], denied["exit_code"], denied["reason_kind"]) == (
        "denied",
        3,
        "PolicyError",
    )
    assert denied["model"] == "m-1"
    assert denied["prompt_blake3"] is not None
    assert denied["actor_user"]

    apply = by_kind(events, "sandbox.apply")[0]
    assert (apply["applied"], apply["refused"], apply["conflicts"]) == (1, 1, 0)
    recovery = by_kind(events, "ledger.recovery")[0]
    assert recovery["recovery_length"] == len(b'{"body":{"run_id":"torn')
    assert by_kind(events, "custom.note")[0]["body"]["text"] == "a library user's own record"
    checkpoint = by_kind(events, "checkpoint")[-1]
    assert checkpoint["checkpoint_records"] >= 1


def test_an_event_with_an_undocumented_field_is_invalid(
    populated: Path, validator: Draft202012Validator
) -> None:
    for event in export(populated):
        assert not list(validator.iter_errors(event))
        assert list(validator.iter_errors({**event, "extra": 1}))
        assert list(validator.iter_errors({**event, "schema_version": "2.0"}))


def test_a_tampered_ledger_marks_its_events(
    populated: Path, validator: Draft202012Validator
) -> None:
    content = lines(populated)
    at = next(i for i, line in enumerate(content) if b'"kind":"exec.end"' in line and i > 6)
    tampered_seq = json.loads(content[at])["seq"]
    content[at] = content[at].replace(b'"exit_code":0', b'"exit_code":1')
    write_lines(populated, content)

    events = export(populated)
    valid(validator, events)
    assert tampered_seq not in [e["seq"] for e in events]  # not a record any more
    for event in events:
        assert event["ledger_verified"] is False
        assert event["verification_failed_seq"] == tampered_seq
        assert event["verification_error"] == f"line {at + 1}, seq {tampered_seq}: bad-hash: " + (
            "the record's hash does not match its content"
        )
        expected = "intact" if event["seq"] < tampered_seq else "failed"
        assert event["verification"] == expected, event["seq"]
    assert {e["verification"] for e in events} == {"intact", "failed"}


def test_a_ledger_without_its_head_vouches_for_nothing(
    populated: Path, validator: Draft202012Validator
) -> None:
    (populated / "head.json").unlink()
    events = export(populated)
    valid(validator, events)
    assert {e["verification"] for e in events} == {"failed"}
    assert all(e["verification_failed_seq"] is None for e in events)


def test_records_no_signature_covers_yet_are_unsigned(
    open_ledger: OpenLedger, ledger_dir: Path, validator: Draft202012Validator
) -> None:
    with open_ledger(checkpoint_interval=1) as ledger:
        record_run(ledger, 1)
        ledger.append("exec.start", {"run_id": "r-crashed", "sandbox": "default"})
        events = export(ledger_dir)  # the run is in progress: its start is not signed yet
    valid(validator, events)
    assert events[-1]["verification"] == "unsigned"
    assert events[-1]["ledger_verified"] is True
    assert {e["verification"] for e in events[:-1]} == {"verified"}


def _fixture_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "ledger-0.1.0"
    shutil.copytree(FIXTURE, copy)
    return copy


def test_the_ledger_recorded_by_0_1_0_exports(
    tmp_path: Path, validator: Draft202012Validator
) -> None:
    from jhansi.ledger.checkpoint import parse_public_keys

    copy = _fixture_copy(tmp_path)
    keys = frozenset(parse_public_keys((copy / "signing-key.pub.pem").read_text()))
    events = export(copy, trusted_keys=keys)
    valid(validator, events)
    assert len(events) == len(lines(copy))
    assert {e["verification"] for e in events} == {"verified"}
    runs = [e for e in events if e["kind"] in ("exec.end", "exec.denied")]
    assert [(e["script_path"], e["status"], e["exit_code"]) for e in runs] == [
        ("det.py", "succeeded", 0),
        ("clock.py", "succeeded", 0),
        ("withdep.py", "succeeded", 0),
        ("vulnerable.py", "denied", 3),
        ("<stdin>", "succeeded", 0),
        ("det.py", "denied", 4),
        ("det.py", "succeeded", 0),
        ("fail.py", "failed", 3),
    ]
    assert [e["backend"] for e in by_kind(events, "exec.end")] == [
        "bwrap",
        "bwrap",
        "bwrap",
        "bwrap",
        "docker",
        "bwrap",
    ]
    refused = runs[3]
    assert refused["policy_ok"] is False
    assert {(f["id"], f["severity"]) for f in refused["policy_findings"]} >= {
        ("PYSEC-2018-28", "deny")
    }
    assert "requests==2.19.1" in refused["packages"]
    first = by_kind(events, "exec.start")[0]
    # Given after the script, 0.1.0 passed --prompt/--model to the script (its argv):
    # the record has no prompt, and the event says so.
    assert (first["model"], first["prompt_blake3"]) == (None, None)
    assert first["script_blake3"] == first["script_blake3"].lower()
    assert by_kind(events, "exec.end")[0]["files_changed"] == 1


def test_jhansi_ledger_export_writes_the_events(
    tmp_path: Path, validator: Draft202012Validator
) -> None:
    copy = _fixture_copy(tmp_path)
    out = tmp_path / "events.jsonl"
    key = str(copy / "signing-key.pub.pem")
    proc = run_jhansi("ledger", "export", "--ledger", str(copy), "--key", key, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"exported {len(lines(copy))} event(s)" in proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    events = [json.loads(line) for line in out.read_text().splitlines()]
    valid(validator, events)
    assert {e["verification"] for e in events} == {"verified"}

    # The records as stored are still there, byte for byte.
    proc = run_jhansi("ledger", "export", "--ledger", str(copy), "--format", "records")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.encode() == (copy / "ledger.jsonl").read_bytes()

    # A tampered ledger still exports (a SIEM wants the events), and says so.
    content = lines(copy)
    content[5] = content[5].replace(b'"duration_ms":', b'"duration_ms":1')
    write_lines(copy, content)
    proc = run_jhansi("ledger", "export", "--ledger", str(copy), "--key", key)
    assert proc.returncode == 0, proc.stderr
    assert "the ledger does NOT verify (line 6, seq 5: bad-hash" in proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    valid(validator, events)
    assert [e["verification"] for e in events if e["seq"] in (4, 6)] == ["intact", "failed"]


def test_an_unknown_format_is_refused(populated: Path) -> None:
    proc = run_jhansi("ledger", "export", "--ledger", str(populated), "--format", "ocsf")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
