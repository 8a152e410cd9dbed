"""Records: canonical bytes (the fast path against ``rfc8785`` itself), hashes, parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jhansi.ledger.record import (
    MAX_SAFE_INT,
    RECORD_DOMAIN,
    ZERO_HASH,
    LedgerId,
    RecordError,
    _parse_checked,
    blob_refs,
    canonical,
    is_canonical,
    make_record,
    parse_line,
    parse_object,
    record_hash,
)

LEDGER_ID = LedgerId("0123456789abcdef0123456789abcdef")

safe_ints = st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT)
# Text across the whole range: ASCII, controls, BMP (including U+E000-U+FFFF,
# where UTF-16 and code point order disagree with what lies beyond U+FFFF).
texts = st.text(
    alphabet=st.one_of(
        st.characters(max_codepoint=0x7F),
        st.characters(min_codepoint=0xE000, max_codepoint=0xFFFF, exclude_categories=("Cs",)),
        st.characters(exclude_categories=("Cs",)),
    ),
    max_size=8,
)
json_values = st.recursive(
    st.none() | st.booleans() | safe_ints | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


def reference_is_canonical(raw: bytes) -> bool:
    """RFC 8785 by definition: parse (no floats), re-encode with ``rfc8785``, compare."""

    def no_float(text: str) -> float:
        raise ValueError(text)

    try:
        value = json.loads(raw.decode("utf-8"), parse_float=no_float, parse_constant=no_float)
        return rfc8785.dumps(value) == raw
    except (ValueError, RecursionError):
        return False


@settings(database=None)
@given(json_values)
@example({"\ue000": 1, "\U0001f600": 2})  # code point order and UTF-16 order differ here
@example({"a": MAX_SAFE_INT, "b": -MAX_SAFE_INT})
@example('\x00\x1f\x7f\u2028"\\')
def test_canonical_is_rfc8785(value: Any) -> None:
    assert canonical(value) == rfc8785.dumps(value)
    assert is_canonical(rfc8785.dumps(value))


@settings(database=None)
@given(
    json_values,
    st.sampled_from(
        [
            {},
            {"sort_keys": True},
            {"sort_keys": True, "separators": (",", ":")},
            {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False},
            {"separators": (",", ":"), "ensure_ascii": False},
            {"indent": 1, "sort_keys": True, "ensure_ascii": False},
        ]
    ),
)
def test_fast_check_agrees_with_rfc8785_on_other_encodings(
    value: Any, options: dict[str, Any]
) -> None:
    raw = json.dumps(value, **options).encode()
    assert is_canonical(raw) == reference_is_canonical(raw)


@settings(database=None)
@given(st.binary(max_size=40))
@example(b"1.0")
@example(b"NaN")
@example(b"-0")
@example(b"9007199254740992")
@example(b"-9007199254740992")
@example(b'"\\ud800"')
@example(b'{"a":1,"a":2}')
@example(b'{"b":1,"a":2}')
@example(b' {"a":1}')
@example(b'{"a":1}\n')
@example(b"\xef\xbb\xbf{}")
@example(b'"\\u0041"')
@example(b'"\\u001F"')
def test_fast_check_agrees_with_rfc8785_on_any_bytes(raw: bytes) -> None:
    assert is_canonical(raw) == reference_is_canonical(raw)


@pytest.mark.parametrize("value", [1.5, 0.0, float("nan"), {"a": [1, 2.0]}, 2**53, -(2**53)])
def test_floats_and_unsafe_integers_are_refused(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical(value)


def test_non_json_values_are_refused() -> None:
    with pytest.raises(TypeError):
        canonical({"a": object()})
    with pytest.raises(TypeError):
        canonical({1: "a"})
    with pytest.raises(ValueError, match="surrogate"):
        canonical("\ud800")


def test_record_hash_is_domain_separated_blake3_over_the_bytes_without_hash() -> None:
    import blake3

    record = make_record(
        ledger_id=LEDGER_ID, seq=0, prev=ZERO_HASH, kind="ledger.genesis", body={"x": 1}
    )
    without = {k: v for k, v in record.as_dict().items() if k != "hash"}
    unhashed = rfc8785.dumps(without)
    assert record.hash == blake3.blake3(RECORD_DOMAIN + unhashed).hexdigest()
    assert record.hash == record_hash(unhashed)
    assert record.line == rfc8785.dumps(record.as_dict())
    assert record.time.endswith("Z")
    assert len(record.time) == 27


def test_parse_line_round_trips() -> None:
    record = make_record(
        ledger_id=LEDGER_ID,
        seq=7,
        prev=ZERO_HASH,
        kind="exec.start",
        body={"run_id": "r", "nested": {"z": [1, None, True], "a": "é😀"}},
    )
    assert parse_line(record.line) == record


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (lambda line: line.replace(b'"seq":7', b'"seq":8'), "bad-hash"),
        (lambda line: line.replace(b'"seq":7', b'"seq": 7'), "not-canonical"),
        (lambda line: line.replace(b'"v":1', b'"v":2'), "bad-schema"),
        (lambda line: line.replace(b'"seq":7', b'"seq":-7'), "bad-schema"),
        (lambda line: line.replace(b'"seq":7', b'"seq":7.0'), "not-json"),
        (lambda line: line[:-5], "not-json"),
        (lambda line: line + b" ", "not-canonical"),
        (lambda line: b"\xff" + line, "not-utf8"),
        (lambda line: line.replace(b'"kind":"exec.start"', b'"kind":"Exec"'), "bad-schema"),
        (lambda line: b'{"a":1}', "bad-schema"),
    ],
)
def test_parse_line_names_what_is_wrong(mutate: Any, kind: str) -> None:
    record = make_record(
        ledger_id=LEDGER_ID, seq=7, prev=ZERO_HASH, kind="exec.start", body={"run_id": "r"}
    )
    with pytest.raises(RecordError) as caught:
        parse_line(mutate(record.line))
    assert caught.value.kind == kind


_RECORD = make_record(
    ledger_id=LEDGER_ID,
    seq=3,
    prev=ZERO_HASH,
    kind="exec.end",
    body={"run_id": "r", "result": {"status": "succeeded", "exit_code": 0, "duration_ms": 5}},
).line


@settings(max_examples=300, database=None)
@given(
    st.integers(min_value=0, max_value=len(_RECORD) - 1),
    st.integers(min_value=0, max_value=255),
    st.sampled_from(["replace", "insert", "delete"]),
)
def test_fast_parser_agrees_with_the_reference_on_mutated_lines(
    at: int, byte: int, how: str
) -> None:
    if how == "replace":
        raw = _RECORD[:at] + bytes([byte]) + _RECORD[at + 1 :]
    elif how == "insert":
        raw = _RECORD[:at] + bytes([byte]) + _RECORD[at:]
    else:
        raw = _RECORD[:at] + _RECORD[at + 1 :]
    try:
        expected: object = _parse_checked(raw)
    except RecordError as exc:
        expected = exc.kind
    try:
        got: object = parse_object(raw)
    except RecordError as exc:  # never anything else
        got = exc.kind
    assert got == expected
    if raw != _RECORD:
        assert isinstance(got, str), "a changed line must never parse as valid"


def test_blob_refs_only_match_real_members() -> None:
    digest = "ab" * 32
    record = make_record(
        ledger_id=LEDGER_ID,
        seq=1,
        prev=ZERO_HASH,
        kind="exec.start",
        body={"script": {"blob": digest}, "note": f'"blob":"{"cd" * 32}"'},
    )
    assert blob_refs(record.line) == [digest]
