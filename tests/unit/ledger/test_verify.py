"""Verification: an untouched ledger verifies; every kind of tampering is found and named."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jhansi.ledger.findings import VerifyReport
from jhansi.ledger.record import canonical, make_record, parse_line, record_hash
from jhansi.ledger.store import Ledger
from jhansi.ledger.verify import parse_anchor, verify_ledger
from jhansi.paths import Paths
from tests.unit.ledger.conftest import lines, record_run, write_lines

OpenLedger = Callable[..., Ledger]


def first(report: VerifyReport) -> str:
    assert not report.ok, "tampering went unnoticed"
    assert report.first_error is not None
    return report.first_error.kind


def line_of(directory: Path, kind: str, nth: int = 0) -> int:
    """Index of the nth line holding a record of ``kind``."""
    found = [i for i, line in enumerate(lines(directory)) if f'"kind":"{kind}"'.encode() in line]
    return found[nth]


def rehash(line: bytes) -> bytes:
    """A record line re-hashed after an edit, as a careful forger would."""
    obj = json.loads(line)
    obj.pop("hash")
    obj["hash"] = record_hash(canonical(obj))
    return canonical(obj) + b"\n"


def test_an_untouched_ledger_verifies(populated: Path) -> None:
    report = verify_ledger(populated)
    assert report.ok, report.errors
    assert report.records == 2 + 5 * 3
    assert report.runs == 5
    assert report.crashed_runs == ()
    assert report.checkpoints == 6  # interval 1: one checkpoint record a run
    assert report.blobs_checked == 15
    assert report.unsigned_records == 0
    assert [w.kind for w in report.warnings] == ["key-unpinned"]


def test_the_local_key_pins_signatures(populated: Path, paths: Paths) -> None:
    from jhansi.ledger.checkpoint import key_path, read_public_key

    local = read_public_key(key_path(paths))
    assert local is not None
    assert verify_ledger(populated, trusted_keys={local.hex()}).warnings == ()
    other = verify_ledger(populated, trusted_keys={"ab" * 32})
    assert first(other) == "untrusted-key"


def test_a_field_edited(populated: Path) -> None:
    content = lines(populated)
    at = line_of(populated, "exec.end", 1)
    content[at] = content[at].replace(b'"exit_code":0', b'"exit_code":1')
    write_lines(populated, content)
    report = verify_ledger(populated)
    assert first(report) == "bad-hash"
    assert report.first_error is not None
    assert report.first_error.line == at + 1
    assert len(report.errors) == 1  # named once, the chain followed past it


def test_a_field_edited_with_its_hash_recomputed(populated: Path) -> None:
    content = lines(populated)
    at = line_of(populated, "exec.end", 1)
    content[at] = rehash(content[at].replace(b'"exit_code":0', b'"exit_code":1'))
    write_lines(populated, content)
    report = verify_ledger(populated)
    assert first(report) == "broken-chain"
    assert report.first_error is not None
    assert report.first_error.line == at + 2


def test_everything_after_an_edit_rehashed_fails_on_the_signatures(populated: Path) -> None:
    content = lines(populated)
    at = line_of(populated, "exec.end", 1)
    content[at] = content[at].replace(b'"exit_code":0', b'"exit_code":1')
    prev = None
    for i in range(at, len(content)):
        obj = json.loads(content[i])
        if prev is not None:
            obj["prev"] = prev
        obj.pop("hash")
        obj["hash"] = prev = record_hash(canonical(obj))
        content[i] = canonical(obj) + b"\n"
    write_lines(populated, content)
    (populated / "head.json").write_bytes(content[-1])
    report = verify_ledger(populated)
    assert first(report) == "bad-signature"


def test_a_record_deleted(populated: Path) -> None:
    content = lines(populated)
    at = line_of(populated, "exec.start", 2)
    del content[at]
    write_lines(populated, content)
    report = verify_ledger(populated)
    assert first(report) == "missing-records"
    assert report.first_error is not None
    assert report.first_error.line == at + 1


def test_two_records_swapped(populated: Path) -> None:
    content = lines(populated)
    at = line_of(populated, "exec.start", 2)
    content[at], content[at + 1] = content[at + 1], content[at]
    write_lines(populated, content)
    assert first(verify_ledger(populated)) == "out-of-order"


def test_a_record_duplicated(populated: Path) -> None:
    content = lines(populated)
    at = line_of(populated, "exec.end", 1)
    content.insert(at, content[at])
    write_lines(populated, content)
    report = verify_ledger(populated)
    assert first(report) == "duplicate-record"
    assert report.first_error is not None
    assert report.first_error.line == at + 2


def test_a_record_spliced_in_from_another_ledger(
    populated: Path, tmp_path: Path, open_ledger: OpenLedger
) -> None:
    other = tmp_path / "other"
    with open_ledger(other) as ledger:
        for n in range(5):
            record_run(ledger, n)
    at = line_of(populated, "exec.start", 3)
    content = lines(populated)
    content[at] = lines(other)[at]  # same seq, same shape, another ledger
    write_lines(populated, content)
    assert first(verify_ledger(populated)) == "foreign-record"


def test_the_last_records_cut_off(populated: Path) -> None:
    write_lines(populated, lines(populated)[:-3])
    report = verify_ledger(populated)
    assert first(report) == "truncated"
    assert "cut off" in report.errors[0].message


def test_the_last_records_cut_off_and_the_head_deleted(populated: Path) -> None:
    write_lines(populated, lines(populated)[:-3])
    (populated / "head.json").unlink()
    assert first(verify_ledger(populated)) == "head-missing"


def test_cut_off_with_an_older_head_put_back_is_caught_by_an_anchor(
    populated: Path, open_ledger: OpenLedger
) -> None:
    old_head = (populated / "head.json").read_bytes()
    with open_ledger(checkpoint_interval=1) as ledger:
        record_run(ledger, 9)
        anchor = ledger.head()
    assert anchor is not None
    write_lines(populated, lines(populated)[:-3])
    (populated / "head.json").write_bytes(old_head)
    assert verify_ledger(populated).ok  # locally consistent: only the anchor knows better
    report = verify_ledger(populated, anchors=[(anchor.seq, anchor.hash)])
    assert first(report) == "truncated"


def test_an_anchor_that_does_not_match(populated: Path) -> None:
    record = parse_line(lines(populated)[4].rstrip(b"\n"))
    assert verify_ledger(populated, anchors=[(record.seq, record.hash)]).ok
    report = verify_ledger(populated, anchors=[(record.seq, "0" * 64)])
    assert first(report) == "anchor-mismatch"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda obj: json.dumps(obj).encode(), id="keys-reordered-and-spaced"),
        pytest.param(
            lambda obj: json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b" ",
            id="trailing-space",
        ),
        pytest.param(
            lambda obj: json.dumps(
                dict(reversed(list(obj.items()))), separators=(",", ":")
            ).encode(),
            id="keys-reordered",
        ),
        pytest.param(
            lambda obj: (
                json.dumps(obj, sort_keys=True, separators=(",", ":"))
                .replace('"v":1', '"v":1.0')
                .encode()
            ),
            id="number-as-float",
        ),
    ],
)
def test_a_line_made_non_canonical(populated: Path, damage: Callable[[dict], bytes]) -> None:
    content = lines(populated)
    at = line_of(populated, "exec.start", 1)
    content[at] = damage(json.loads(content[at])) + b"\n"
    write_lines(populated, content)
    report = verify_ledger(populated)
    assert first(report) in ("not-canonical", "not-json")
    assert report.first_error is not None
    assert report.first_error.line == at + 1


def test_a_blob_altered(populated: Path) -> None:
    record = parse_line(lines(populated)[line_of(populated, "exec.start", 0)].rstrip(b"\n"))
    digest = record.body["script"]["blob"]
    path = populated / "blobs" / digest[:2] / digest[2:]
    path.write_bytes(b"import os; os.system('rm -rf ~')\n")
    report = verify_ledger(populated)
    assert first(report) == "blob-altered"
    assert digest in report.errors[0].message
    assert verify_ledger(populated, check_blobs=False).ok


def test_a_blob_deleted(populated: Path) -> None:
    record = parse_line(lines(populated)[line_of(populated, "exec.end", 0)].rstrip(b"\n"))
    digest = record.body["stdout"]["blob"]
    (populated / "blobs" / digest[:2] / digest[2:]).unlink()
    assert first(verify_ledger(populated)) == "blob-missing"


def test_an_unpaired_start_is_a_crashed_run_warning(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
        crashed = record_run(ledger, 2, end=False)
    report = verify_ledger(ledger_dir)
    assert report.ok
    assert report.crashed_runs == (crashed,)
    assert "crashed-run" in [w.kind for w in report.warnings]


def test_an_end_whose_start_was_removed(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1, checkpoint=False)
    content = lines(ledger_dir)
    at = line_of(ledger_dir, "exec.start", 0)
    start = json.loads(content[at])
    start["kind"] = "exec.note"  # not deleted: turned into something else, chain rebuilt
    start.pop("hash")
    start["hash"] = record_hash(canonical(start))
    content[at] = canonical(start) + b"\n"
    end = json.loads(content[at + 1])
    end["prev"] = start["hash"]
    content[at + 1] = rehash(canonical(end))
    write_lines(ledger_dir, content)
    assert first(verify_ledger(ledger_dir)) == "unpaired-end"


def test_garbage_in_the_middle_is_not_a_torn_write(populated: Path) -> None:
    content = lines(populated)
    content.insert(5, b'{"body":{"run_id":"torn\n')
    write_lines(populated, content)
    report = verify_ledger(populated)
    assert first(report) == "not-json"
    assert report.first_error is not None
    assert report.first_error.line == 6


def test_an_unsigned_tail_is_reported(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1, checkpoint=False)
    report = verify_ledger(ledger_dir)
    assert report.ok
    assert report.unsigned_records == 2
    assert "unsigned-tail" in [w.kind for w in report.warnings]


def test_a_missing_ledger_is_an_error(tmp_path: Path) -> None:
    from jhansi.errors import LedgerError

    with pytest.raises(LedgerError, match="no ledger"):
        verify_ledger(tmp_path / "nothing")


def test_parallel_and_single_process_verification_agree(populated: Path) -> None:
    content = lines(populated)
    content[7] = content[7].replace(b'"exit_code":0', b'"exit_code":2')
    del content[10]
    write_lines(populated, content)
    single = verify_ledger(populated, workers=1)
    parallel = verify_ledger(populated, workers=2)
    assert [(p.kind, p.line) for p in single.errors] == [(p.kind, p.line) for p in parallel.errors]
    assert single.records == parallel.records


def test_without_worker_processes_verification_runs_in_process(
    populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing

    def no_processes(method: str) -> None:
        raise OSError("no /dev/shm here")

    monkeypatch.setattr(multiprocessing, "get_context", no_processes)
    report = verify_ledger(populated, workers=2)
    assert report.ok, report.errors
    assert report.records == 17


def test_parse_anchor() -> None:
    assert parse_anchor(f"12:{'AB' * 32}") == (12, "ab" * 32)
    for bad in ("12", f"x:{'ab' * 32}", "12:abc", f"12:{'zz' * 32}"):
        with pytest.raises(ValueError, match=r"SEQ:HASH|hex"):
            parse_anchor(bad)


def test_make_record_output_is_what_verify_accepts() -> None:
    record = make_record(
        ledger_id="ab" * 16,  # type: ignore[arg-type]
        seq=0,
        prev="0" * 64,  # type: ignore[arg-type]
        kind="ledger.genesis",
        body={},
    )
    assert parse_line(record.line) == record


# -- fuzzing --------------------------------------------------------------------------------------

_FUZZ: dict[str, bytes] = {}


def _fuzz_ledger() -> tuple[bytes, bytes]:
    """A small real ledger (made once) whose last line is the signed head."""
    if not _FUZZ:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            paths = Paths(home / "data", home / "config", home / "cache", home / "run")
            with Ledger.open(Path(tmp) / "ledger", paths=paths) as ledger:
                record_run(ledger, 1)
                ledger.append("exec.denied", {"run_id": "d", "reason": "policy"})
                ledger.checkpoint()
            _FUZZ["ledger"] = (Path(tmp) / "ledger" / "ledger.jsonl").read_bytes()
            _FUZZ["head"] = (Path(tmp) / "ledger" / "head.json").read_bytes()
    return _FUZZ["ledger"], _FUZZ["head"]


mutations = st.one_of(
    st.tuples(st.just("replace"), st.integers(min_value=0), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("insert"), st.integers(min_value=0), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(min_value=0), st.integers(min_value=1, max_value=40)),
    st.tuples(st.just("line"), st.integers(min_value=0), st.integers(min_value=0)),
)


def _mutate(data: bytes, mutation: tuple[str, int, object]) -> bytes:
    how, at, arg = mutation
    at %= len(data) + (1 if how == "insert" else 0)
    if how == "replace":
        assert isinstance(arg, bytes)
        return data[:at] + arg + data[at + len(arg) :]
    if how == "insert":
        assert isinstance(arg, bytes)
        return data[:at] + arg + data[at:]
    if how == "delete":
        assert isinstance(arg, int)
        return data[:at] + data[at + arg :]
    assert isinstance(arg, int)
    content = data.splitlines(keepends=True)
    src, dst = at % len(content), arg % (len(content) + 1)
    content.insert(dst, content[src])  # a whole record duplicated somewhere else
    return b"".join(content)


@settings(
    max_examples=150,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutation=mutations, target=st.sampled_from(["ledger", "ledger", "ledger", "head"]))
def test_fuzz_every_mutation_is_detected_or_a_no_op(
    mutation: tuple[str, int, object], target: str
) -> None:
    ledger, head = _fuzz_ledger()
    original = ledger if target == "ledger" else head
    mutated = _mutate(original, mutation)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "ledger.jsonl").write_bytes(mutated if target == "ledger" else ledger)
        (directory / "head.json").write_bytes(mutated if target == "head" else head)
        report = verify_ledger(directory, check_blobs=False)  # never raises
    if mutated == original:
        assert report.ok
    elif target == "ledger" and mutated.startswith(original):
        # Bytes after the last newline are what a crashed append leaves: reported as a
        # torn tail (and recorded at the next append); anything more is an error.
        assert not report.ok or "torn-tail" in [w.kind for w in report.warnings]
    else:
        assert not report.ok, (mutation, report.warnings)


# -- stage one's summaries against the record-by-record walk ------------------------------------


def _comparable(report: VerifyReport) -> dict[str, object]:
    found = report.as_dict()
    found["summary"].pop("seconds")
    return found


def _both_ways(directory: Path, chunk: int, **kwargs: Any) -> tuple[dict, dict]:
    """The report as verify makes it, and with every chunk walked record by record (stage
    one's summaries turned off), both reading ``chunk`` bytes at a time."""
    with mock.patch("jhansi.ledger.scan._CHUNK", chunk):
        summarised = _comparable(verify_ledger(directory, workers=1, **kwargs))
        with mock.patch("jhansi.ledger.scan._summarize", return_value=None):
            walked = _comparable(verify_ledger(directory, workers=1, **kwargs))
    return summarised, walked


_SPANNING: dict[str, bytes] = {}


def _spanning_ledger() -> tuple[bytes, bytes, str]:
    """A ledger (made once) whose runs overlap, so that small chunks split them: two
    appenders, a crashed run, a denied one, checkpoints every two records."""
    if not _SPANNING:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            paths = Paths(home / "data", home / "config", home / "cache", home / "run")
            where = Path(tmp) / "ledger"
            with (
                Ledger.open(where, paths=paths, checkpoint_interval=2) as one,
                Ledger.open(where, paths=paths, checkpoint_interval=2) as two,
            ):
                one.preflight()
                one.append("exec.start", {"run_id": "long"})
                for n in range(3):
                    record_run(two, n)
                two.append("exec.start", {"run_id": "crashed"})
                one.append("exec.denied", {"run_id": "d", "reason": "policy"})
                one.append("exec.end", {"run_id": "long"})
                record_run(one, 7)
                key = one.head()
            assert key is not None
            _SPANNING["ledger"] = (where / "ledger.jsonl").read_bytes()
            _SPANNING["head"] = (where / "head.json").read_bytes()
            _SPANNING["key"] = key.key.encode()
    return _SPANNING["ledger"], _SPANNING["head"], _SPANNING["key"].decode()


@pytest.mark.parametrize("chunk", [1, 200, 700, 1 << 22])
def test_summaries_and_the_walk_agree_on_an_untouched_ledger(chunk: int, tmp_path: Path) -> None:
    ledger, head, key = _spanning_ledger()
    (tmp_path / "ledger.jsonl").write_bytes(ledger)
    (tmp_path / "head.json").write_bytes(head)
    walked = AssertionError("walked")
    walking = mock.patch("jhansi.ledger.verify.scan_chunk", side_effect=walked)
    scanning = mock.patch("jhansi.ledger.scan.scan_chunk", side_effect=walked)
    with walking, scanning, mock.patch("jhansi.ledger.scan._CHUNK", chunk):
        # Nothing unusual: every chunk is summarised and joined, none walked.
        verify_ledger(tmp_path, workers=1, trusted_keys={key}, check_blobs=False)
    summarised, walked = _both_ways(tmp_path, chunk, trusted_keys={key}, check_blobs=False)
    assert summarised == walked
    assert summarised["valid"], summarised["errors"]
    assert summarised["summary"]["crashed_runs"] == ["crashed"]


def _chain(tmp_path: Path, events: list[tuple[str, str]]) -> None:
    """A ledger of ``events`` ((kind, run id) after a genesis), chained and hashed, unsigned."""
    ledger_id = "ab" * 16
    record = make_record(
        ledger_id=ledger_id,  # type: ignore[arg-type]
        seq=0,
        prev="0" * 64,  # type: ignore[arg-type]
        kind="ledger.genesis",
        body={},
    )
    out = [record.line + b"\n"]
    for kind, run_id in events:
        record = make_record(
            ledger_id=record.ledger_id,
            seq=record.seq + 1,
            prev=record.hash,
            kind=kind,
            body={"run_id": run_id},
        )
        out.append(record.line + b"\n")
    write_lines(tmp_path, out)


@pytest.mark.parametrize("chunk", [1, 300, 1 << 22])
@pytest.mark.parametrize(
    ("events", "kind"),
    [
        # started twice while open: in one chunk, or in two
        ([("exec.start", "x"), ("exec.start", "a"), ("exec.start", "x")], "duplicate-run"),
        # ended without a start, or ended twice
        ([("exec.start", "a"), ("exec.end", "a"), ("exec.end", "y")], "unpaired-end"),
        ([("exec.start", "a"), ("exec.end", "a"), ("exec.end", "a")], "unpaired-end"),
        ([("exec.end", "a"), ("exec.start", "a")], "unpaired-end"),
        ([("exec.start", "a"), ("exec.end", "")], "bad-body"),
    ],
)
def test_runs_that_do_not_pair_are_found_in_any_chunking(
    events: list[tuple[str, str]], kind: str, chunk: int, tmp_path: Path
) -> None:
    _chain(tmp_path, events)
    summarised, walked = _both_ways(tmp_path, chunk, check_blobs=False)
    assert summarised == walked
    assert kind in [e["kind"] for e in summarised["errors"]]  # type: ignore[index, union-attr]


def test_runs_that_pair_across_chunks_verify(tmp_path: Path) -> None:
    overlapping = [("exec.start", "a"), ("exec.start", "b"), ("exec.end", "a")]
    again = [("exec.start", "a"), ("exec.end", "b"), ("exec.end", "a")]
    _chain(tmp_path, [*overlapping, *again, ("exec.denied", "c"), ("exec.start", "z")])
    summarised, walked = _both_ways(tmp_path, 1, check_blobs=False)
    assert summarised == walked
    assert [e["kind"] for e in summarised["errors"]] == ["head-missing"]  # type: ignore[index, union-attr]
    assert summarised["summary"]["crashed_runs"] == ["z"]  # type: ignore[index]
    assert summarised["summary"]["runs"] == 4  # type: ignore[index]


@settings(
    max_examples=120,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mutation=mutations,
    chunk=st.sampled_from([1, 250, 800, 1 << 22]),
    trust=st.sampled_from(["none", "right", "wrong"]),
    anchor=st.integers(min_value=-1, max_value=40),
)
def test_fuzz_summaries_and_the_walk_report_the_same(
    mutation: tuple[str, int, object], chunk: int, trust: str, anchor: int
) -> None:
    ledger, head, key = _spanning_ledger()
    mutated = _mutate(ledger, mutation)
    trusted = {"none": None, "right": {key}, "wrong": {"cd" * 32}}[trust]
    anchors = [(anchor, "ef" * 32)] if anchor >= 0 else []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "ledger.jsonl").write_bytes(mutated)
        (directory / "head.json").write_bytes(head)
        summarised, walked = _both_ways(
            directory, chunk, trusted_keys=trusted, anchors=anchors, check_blobs=False
        )
    assert summarised == walked
    if mutated != ledger:
        assert not summarised["valid"] or summarised["warnings"]


def test_parallel_summaries_agree_with_one_process(tmp_path: Path) -> None:
    ledger, head, key = _spanning_ledger()
    content = ledger.splitlines(keepends=True)
    content[9] = content[9].replace(b'"exit_code":0', b'"exit_code":2')
    (tmp_path / "ledger.jsonl").write_bytes(b"".join(content))
    (tmp_path / "head.json").write_bytes(head)
    with mock.patch("jhansi.ledger.scan._CHUNK", 600):
        parallel = _comparable(verify_ledger(tmp_path, workers=2, trusted_keys={key}))
        single = _comparable(verify_ledger(tmp_path, workers=1, trusted_keys={key}))
    assert parallel == single
    assert not parallel["valid"]
