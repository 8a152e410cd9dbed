"""Records: canonical bytes (the fast path against ``rfc8785`` itself), hashes, parsing."""

from __future__ import annotations

import json
from collections.abc import Callable
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
    split_record,
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


# -- the fast path of verification (split_record) ---------------------------------------------

_TAGGED = make_record(
    ledger_id=LEDGER_ID,
    seq=12,
    prev="ab" * 32,  # type: ignore[arg-type]
    kind="exec.start",
    time="2025-01-31T12:00:00.000000Z",
    body={
        "ledger_mac": "5f" * 16,
        "run_id": "r-1",
        "script": {"path": "t.py", "blob": "cd" * 32, "hash": "ef" * 32},
        "note": 'said "hi" \\ in é, ü and ,"hash":"x"',
        "n": [1, -2, None, True, {"a": 0}],
    },
).line


def _rehashed(raw: bytes) -> bytes:
    """``raw`` with its hash recomputed over its bytes as they are (a careful forger's edit):
    only the form of the line can then give it away."""
    at = raw.rfind(b',"hash":"')
    unhashed = raw[:at] + raw[at + 74 :]
    return raw[:at] + b',"hash":"' + record_hash(unhashed).encode() + b'"' + raw[at + 74 :]


def _with_hash(raw: bytes, digest: str) -> bytes:
    at = raw.rfind(b',"hash":"')
    return raw[: at + 9] + digest.encode() + raw[at + 73 :]


def _body_in_a_list(raw: bytes) -> bytes:
    at = raw.rfind(b',"hash":"')
    return b'{"body":[' + raw[8:at] + b"]" + raw[at:]


def _reference(raw: bytes) -> object:
    try:
        return _parse_checked(raw)
    except RecordError as exc:
        return exc.kind


def _fields(obj: dict[str, Any]) -> tuple[Any, ...]:
    return (obj["seq"], obj["kind"], obj["ledger_id"], obj["prev"], obj["hash"], obj["time"])


def test_the_fast_path_reads_what_the_writer_writes() -> None:
    fields = split_record(_TAGGED)
    assert fields is not None, "a line the writer made must take the fast path"
    reference = _parse_checked(_TAGGED)
    assert fields[:6] == _fields(reference)
    assert fields[6] == reference["body"]
    assert parse_object(_TAGGED) == reference


@pytest.mark.parametrize(
    "tamper",
    [
        # non-canonical bytes (each re-hashed, so only the form can give it away)
        lambda raw: _rehashed(raw.replace(b'{"body":{', b'{"body": {')),
        lambda raw: _rehashed(raw.replace(b'"run_id":"r-1"', b'"run_id" :"r-1"')),
        lambda raw: _rehashed(raw.replace(b'"seq":12,', b'"seq":12 ,')),
        lambda raw: _rehashed(raw.replace(b'"v":1}', b'"v":1 }')),
        lambda raw: _rehashed(raw.replace(b'"path":"t.py"', b'"path":"t\\u002epy"')),
        lambda raw: _rehashed(raw.replace(b'"path":"t.py"', b'"path":"t\\/py"')),
        lambda raw: _rehashed(raw.replace("é".encode(), b"\\u00e9")),
        lambda raw: _rehashed(raw.replace(b'"n":[1,', b'"n":[1.0,')),
        lambda raw: _rehashed(raw.replace(b'"n":[1,', b'"n":[-0,')),
        lambda raw: _rehashed(raw.replace(b'"n":[1,', b'"n":[9007199254740993,')),
        # reordered keys: in the body, in a nested object, at the top level
        lambda raw: _rehashed(
            raw.replace(b'"ledger_mac":"' + b"5f" * 16 + b'",', b"").replace(
                b'"script":', b'"ledger_mac":"' + b"5f" * 16 + b'","script":'
            )
        ),
        lambda raw: _rehashed(raw.replace(b'{"a":0}', b'{"b":1,"a":0}')),
        lambda raw: _rehashed(raw.replace(b'{"a":0}', b'{"a":0,"a":0}')),
        lambda raw: _rehashed(
            raw.replace(b',"kind":"exec.start"', b"").replace(
                b',"prev"', b',"kind":"exec.start","prev"', 1
            )
        ),
        lambda raw: _rehashed(raw.replace(b',"seq":12', b"").replace(b'"v":1', b'"v":1,"seq":12')),
        # a field out of form
        lambda raw: _rehashed(raw.replace(b'"prev":"abab', b'"prev":"ABab')),
        lambda raw: _rehashed(raw.replace(LEDGER_ID.encode(), LEDGER_ID.upper().encode())),
        lambda raw: _rehashed(raw.replace(b'"seq":12', b'"seq":012')),
        lambda raw: _rehashed(raw.replace(b'"seq":12', b'"seq":-12')),
        lambda raw: _rehashed(raw.replace(b'"seq":12', b'"seq":9007199254740993')),
        lambda raw: _rehashed(raw.replace(b'"v":1', b'"v":2')),
        lambda raw: _rehashed(raw.replace(b'"kind":"exec.start"', b'"kind":"exec..start"')),
        lambda raw: _rehashed(raw.replace(b'.000000Z"', b'.000000"')),
        lambda raw: _rehashed(raw.replace(b'"v":1}', b'"v":1,"x":1}')),
        lambda raw: _rehashed(_body_in_a_list(raw)),
        # a changed byte (not re-hashed), a wrong hash, a wrong tag
        lambda raw: raw.replace(b'"run_id":"r-1"', b'"run_id":"r-2"'),
        lambda raw: raw.replace(b'"prev":"abab', b'"prev":"acab'),
        lambda raw: _with_hash(raw, "0" * 64),
        lambda raw: raw.replace(b'"ledger_mac":"5f', b'"ledger_mac":"6f'),
        lambda raw: raw + b" ",
        lambda raw: b" " + raw,
    ],
)
def test_the_fast_path_refuses_every_tampered_line(tamper: Callable[[bytes], bytes]) -> None:
    raw = tamper(_TAGGED)
    assert raw != _TAGGED
    assert split_record(raw) is None
    expected = _reference(raw)
    assert isinstance(expected, str), "the tampered line must not be valid"
    with pytest.raises(RecordError) as caught:
        parse_object(raw)
    assert caught.value.kind == expected


def test_what_the_fast_path_leaves_goes_to_the_reference() -> None:
    """A character beyond U+FFFF (keys then sort by UTF-16 code units): valid, not fast."""
    record = make_record(
        ledger_id=LEDGER_ID, seq=1, prev=ZERO_HASH, kind="exec.end", body={"run_id": "😀"}
    )
    assert split_record(record.line) is None
    assert parse_line(record.line) == record


@pytest.mark.parametrize(
    ("member", "valid"),
    [
        ({"n": MAX_SAFE_INT, "m": -MAX_SAFE_INT}, True),  # 16 digits, in range
        ({"note": "at 12:1234567890123456789"}, True),  # digits in a string
        ({"n": [1, MAX_SAFE_INT + 1]}, False),
        ({"n": {"a": -(MAX_SAFE_INT + 2)}}, False),
    ],
)
def test_long_numbers_leave_the_fast_path(member: dict[str, Any], valid: bool) -> None:
    """Integers are checked on the bytes there: anything of 16 digits goes to the reference."""
    body: dict[str, Any] = {"run_id": "r", **member}
    text = json.dumps(
        {
            "body": body,
            "kind": "exec.end",
            "ledger_id": LEDGER_ID,
            "prev": ZERO_HASH,
            "seq": 1,
            "time": "2025-01-31T12:00:00.000000Z",
            "v": 1,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    at = text.index(b',"kind"')
    raw = _rehashed(text[:at] + b',"hash":"' + b"0" * 64 + b'"' + text[at:])
    assert split_record(raw) is None
    expected = _reference(raw)
    assert isinstance(expected, dict) == valid, expected
    if valid:
        assert parse_object(raw) == expected


def test_a_cached_prev_never_vouches_for_another_line() -> None:
    """``prev`` equal to the hash just verified skips its pattern; any other is checked."""
    assert split_record(_TAGGED) is not None
    digest = _parse_checked(_TAGGED)["hash"]
    chained = make_record(
        ledger_id=LEDGER_ID, seq=13, prev=digest, kind="exec.end", body={"run_id": "r-1"}
    ).line
    assert split_record(chained) is not None
    bad = _rehashed(chained.replace(digest.encode(), digest.upper().encode()))
    assert split_record(bad) is None
    assert _reference(bad) == "bad-schema"


@settings(max_examples=400, database=None)
@given(
    st.integers(min_value=0, max_value=len(_TAGGED) - 1),
    st.integers(min_value=0, max_value=255),
    st.sampled_from(["replace", "insert", "delete"]),
    st.booleans(),
)
def test_the_fast_path_agrees_with_the_reference_on_mutated_lines(
    at: int, byte: int, how: str, rehash: bool
) -> None:
    if how == "replace":
        raw = _TAGGED[:at] + bytes([byte]) + _TAGGED[at + 1 :]
    elif how == "insert":
        raw = _TAGGED[:at] + bytes([byte]) + _TAGGED[at:]
    else:
        raw = _TAGGED[:at] + _TAGGED[at + 1 :]
    if rehash and raw.rfind(b',"hash":"') >= 0 and raw.rfind(b',"hash":"') + 74 <= len(raw):
        raw = _rehashed(raw)
    expected = _reference(raw)
    fields = split_record(raw)
    if fields is not None:
        assert isinstance(expected, dict), "the fast path accepted what the reference refuses"
        assert fields[:6] == _fields(expected)
        assert fields[6] == expected["body"]
    try:
        got: object = parse_object(raw)
    except RecordError as exc:
        got = exc.kind
    assert got == expected
