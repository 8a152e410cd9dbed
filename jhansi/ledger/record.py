"""One ledger record: its schema, its canonical bytes and its hash.

A record is one line of ``ledger.jsonl``: the RFC 8785 (JCS) canonical JSON of
an object with exactly these members, then ``\\n``::

    {"body": {...}, "hash": H, "kind": K, "ledger_id": L, "prev": P,
     "seq": N, "time": T, "v": 1}

``v``
    The schema version (:data:`SCHEMA_VERSION`).
``ledger_id``
    32 hex digits, random, fixed at genesis: a record spliced in from another
    ledger is recognised by it.
``seq``
    0 for the genesis record, then contiguous.
``prev``
    The ``hash`` of the record before (64 zeros for genesis).
``time``
    RFC 3339, UTC, microseconds: ``2025-01-31T12:00:00.123456Z``.
``kind``
    ``ledger.genesis``, ``ledger.recovery``, ``checkpoint`` (written by the
    ledger itself), ``exec.start``, ``exec.end``, ``exec.denied`` (written by
    the runner), or another dotted lower-case name.
``body``
    The kind's content (an object). Content goes by reference: any member
    named ``blob`` whose value is 64 lower-case hex digits names a blob in the
    store (see :mod:`jhansi.ledger.blobs`), and the verifier checks each one.
``hash``
    BLAKE3 over :data:`RECORD_DOMAIN` followed by the canonical bytes of the
    record *without* its ``hash`` member, in lower-case hex.

Only the JSON that jhansi writes is allowed: strings, integers within
±(2**53 - 1), booleans, null, arrays and objects. No floats: durations are
integer milliseconds and times are strings, so that the canonical form never
depends on how a number is printed.

Speed: ``rfc8785.dumps`` is pure Python (about 25 µs for a small record), which
alone would cap verification far below 100,000 records per second. For the
subset above, RFC 8785 coincides with the C-accelerated
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
except for two things: RFC 8785 orders keys by UTF-16 code units while Python
orders them by code points (the orders differ only when a key holds a
character beyond U+FFFF), and RFC 8785 refuses integers beyond ±(2**53 - 1).
:func:`canonical` and :func:`is_canonical` therefore use the fast encoder,
reject out-of-range integers and floats while parsing or checking, and hand
anything containing a character beyond U+FFFF to ``rfc8785`` itself. The tests
check the equivalence with Hypothesis (``tests/unit/ledger/test_record.py``).
Verification goes further (:func:`split_record`): the members after ``body``
have a fixed layout, so one pattern checks them and only the body is decoded
and re-encoded.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NewType

import blake3

Digest = NewType("Digest", str)
"""64 lower-case hex digits of a BLAKE3 hash."""
LedgerId = NewType("LedgerId", str)
"""32 lower-case hex digits naming one ledger."""

SCHEMA_VERSION: Final = 1
RECORD_DOMAIN: Final = b"jhansi.ledger.record.v1\x00"
"""Prefix of every record hash, so that a record hash never equals any other kind of hash."""
ZERO_HASH: Final = Digest("0" * 64)
"""The ``prev`` of the genesis record."""

GENESIS: Final = "ledger.genesis"
RECOVERY: Final = "ledger.recovery"
CHECKPOINT: Final = "checkpoint"
EXEC_START: Final = "exec.start"
EXEC_END: Final = "exec.end"
EXEC_DENIED: Final = "exec.denied"
#: Kinds that describe one run; their body carries its ``run_id``.
EXEC_KINDS: Final = frozenset({EXEC_START, EXEC_END, EXEC_DENIED})
#: Kinds only the ledger itself writes; :meth:`jhansi.ledger.store.Ledger.append` refuses them.
RESERVED_KINDS: Final = frozenset({GENESIS, RECOVERY, CHECKPOINT})

MAX_SAFE_INT: Final = 2**53 - 1
KEYS: Final = frozenset({"body", "hash", "kind", "ledger_id", "prev", "seq", "time", "v"})

HEX64: Final = re.compile(r"[0-9a-f]{64}")
HEX32: Final = re.compile(r"[0-9a-f]{32}")
KIND: Final = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
BLOB_REF: Final = re.compile(rb'"blob":"([0-9a-f]{64})"')
"""A blob reference in a canonical line (a quote inside a string is always escaped,
so this only ever matches a real member named ``blob``)."""

_HEX64_MATCH = HEX64.fullmatch
_HEX32_MATCH = HEX32.fullmatch
_last_digest = ""
"""The hash :func:`split_record` last verified (so: 64 hex digits): usually the next
record's ``prev``, which then needs no pattern. Any value it may hold is valid hex, so
threads racing on it can only cost a pattern match."""
_valid_ids: set[str] = set()
"""Ledger ids already matched as 32 hex digits (a ledger has one)."""


def _valid_id(value: str) -> bool:
    if value in _valid_ids:
        return True
    if not _HEX32_MATCH(value):
        return False
    if len(_valid_ids) > 64:
        _valid_ids.clear()
    _valid_ids.add(value)
    return True


_NON_BMP_BYTES = re.compile(rb"[\xf0-\xf4]")
_NON_BMP_STR = re.compile("[\U00010000-\U0010ffff]")
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
)


def _parse_int(text: str) -> int:
    value = int(text)
    if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        return value
    raise ValueError("integer beyond ±(2**53 - 1)")


def _no_float(text: str) -> float:
    raise ValueError(f"a number with a fraction or exponent ({text[:20]}): not allowed")


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_no_float, parse_constant=_no_constant
)
#: The C scanner behind ``_DECODER`` (no whitespace skipping: canonical lines have none).
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]
#: The same without the integer hook, a Python call per integer (the fast path checks
#: integers on the bytes instead, see :func:`split_record`). Floats and NaN still fail.
_SCAN_INTS_UNCHECKED = json.JSONDecoder(
    parse_float=_no_float, parse_constant=_no_constant
).scan_once  # type: ignore[attr-defined]
#: For finding a number of 16 digits or more in canonical JSON: every number there follows
#: ``:``, ``,`` or ``[`` (mapped to ``:``), digits map to ``0``, ``-`` stays, all else ``x``.
_NUMBER_SHAPES: Final = bytes(
    ord("0")
    if chr(b).isdigit() and b < 128
    else ord(":")
    if b in b":,["
    else ord("-")
    if b == ord("-")
    else ord("x")
    for b in range(256)
)
_LONG_NUMBERS: Final = (b":" + b"0" * 16, b":-" + b"0" * 16)


def _unsupported(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _make_encode() -> Callable[[Any], str]:
    """``_ENCODER.encode`` without its per-call set-up, when the C encoder is there."""
    try:
        from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - CPython always has it
        return _ENCODER.encode
    if c_make_encoder is None or c_encode_basestring is None:  # pragma: no cover
        return _ENCODER.encode
    # markers=None: no circular-reference check (parsed JSON cannot be circular,
    # and canonical() walks its input first).
    encoder = c_make_encoder(
        None, _unsupported, c_encode_basestring, None, ":", ",", True, False, False
    )

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


_encode = _make_encode()


class RecordError(ValueError):
    """A line that is not a valid record; ``kind`` names the failure for reports.

    Kinds: ``not-utf8``, ``not-json`` (these two are what a torn write leaves),
    ``not-canonical``, ``bad-schema``, ``bad-hash``. ``obj`` is the parsed
    object when the line was JSON at all, so a verifier can keep following
    the chain past a damaged record.
    """

    def __init__(self, kind: str, message: str, obj: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.obj = obj


@dataclass(frozen=True, slots=True)
class Record:
    """One record, as stored; ``line`` is its canonical bytes (without the newline)."""

    ledger_id: LedgerId
    seq: int
    prev: Digest
    time: str
    kind: str
    body: Mapping[str, Any]
    hash: Digest
    line: bytes
    v: int = SCHEMA_VERSION

    def as_dict(self) -> dict[str, Any]:
        """The record as the JSON object it is stored as."""
        return {
            "body": self.body,
            "hash": self.hash,
            "kind": self.kind,
            "ledger_id": self.ledger_id,
            "prev": self.prev,
            "seq": self.seq,
            "time": self.time,
            "v": self.v,
        }


# -- canonical bytes ----------------------------------------------------------------------


def _check_value(value: object, depth: int = 0) -> None:
    """Refuse anything outside the JSON subset jhansi writes."""
    if depth > 64:
        raise ValueError("ledger values nest at most 64 deep")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise ValueError(f"integer {value} is beyond ±(2**53 - 1)")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, not {type(key).__name__}")
            _check_value(item, depth + 1)
        return
    if isinstance(value, float):
        raise TypeError("floats are not allowed in the ledger (use integer ms, strings)")
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def canonical(value: object) -> bytes:
    """The RFC 8785 bytes of ``value`` (which must be in jhansi's JSON subset)."""
    _check_value(value)
    text = _encode(value)
    if not text.isascii() and _NON_BMP_STR.search(text):
        import rfc8785

        return rfc8785.dumps(value)  # type: ignore[arg-type]
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (not UTF-8)") from None


def load_canonical(raw: bytes) -> Any:
    """Parse ``raw``; raise :class:`RecordError` unless it is canonical JSON in jhansi's subset."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError("not-utf8", f"not UTF-8 (byte {exc.start})") from None
    try:
        obj, end = _SCAN(text, 0)
        if end != len(text):
            raise ValueError("trailing bytes")
    except (StopIteration, ValueError, RecursionError):
        # Slow path, only to tell "not JSON" from "JSON with whitespace around it".
        try:
            obj = _DECODER.decode(text)
        except (ValueError, RecursionError) as exc:
            raise RecordError("not-json", f"not JSON: {str(exc)[:120]}") from None
        raise RecordError(
            "not-canonical",
            "not canonical JSON (RFC 8785): whitespace around the value",
            obj if isinstance(obj, dict) else None,
        ) from None
    try:
        if not raw.isascii() and _NON_BMP_BYTES.search(raw):
            import rfc8785  # beyond U+FFFF, key order is by UTF-16 code units

            same = rfc8785.dumps(obj) == raw
        else:
            same = _encode(obj) == text
    except (ValueError, TypeError, RecursionError):
        same = False
    if not same:
        raise RecordError(
            "not-canonical",
            "not canonical JSON (RFC 8785): re-encoding gives different bytes",
            obj if isinstance(obj, dict) else None,
        )
    return obj


def is_canonical(raw: bytes) -> bool:
    """Whether ``raw`` is the RFC 8785 form of a value in jhansi's JSON subset."""
    try:
        load_canonical(raw)
    except RecordError:
        return False
    return True


def record_hash(unhashed: bytes) -> Digest:
    """The hash of a record from the canonical bytes of the record without ``hash``."""
    return Digest(blake3.blake3(RECORD_DOMAIN + unhashed).hexdigest())


def blob_digest(data: bytes) -> Digest:
    """The name of a blob: plain BLAKE3 of its bytes, so that ``b3sum`` agrees."""
    return Digest(blake3.blake3(data).hexdigest())


def blob_refs(line: bytes) -> list[Digest]:
    """The blobs a canonical record line references."""
    if b'"blob":"' not in line:
        return []
    return [Digest(m.decode()) for m in BLOB_REF.findall(line)]


def utc_now() -> str:
    """Now, as RFC 3339 UTC with microseconds (the ``time`` of a record)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_record(
    *,
    ledger_id: LedgerId,
    seq: int,
    prev: Digest,
    kind: str,
    body: Mapping[str, Any],
    time: str | None = None,
) -> Record:
    """Build a record: canonical bytes, then its hash over them."""
    if not KIND.fullmatch(kind):
        raise ValueError(f"record kind {kind!r} is not a dotted lower-case name")
    if not isinstance(body, dict):
        raise TypeError("a record body is a dict")
    unhashed = {
        "body": body,
        "kind": kind,
        "ledger_id": ledger_id,
        "prev": prev,
        "seq": seq,
        "time": time or utc_now(),
        "v": SCHEMA_VERSION,
    }
    digest = record_hash(canonical(unhashed))
    line = canonical({**unhashed, "hash": digest})
    return parse_line(line)


# -- parsing -------------------------------------------------------------------------------


def check_fields(obj: object) -> dict[str, Any]:
    """Check the schema of a parsed record object; return it as a dict."""
    if type(obj) is not dict:
        raise RecordError("bad-schema", "a record is a JSON object")
    if obj.keys() != KEYS:
        missing = sorted(KEYS - obj.keys())
        extra = sorted(obj.keys() - KEYS)
        raise RecordError("bad-schema", f"members missing {missing} or unexpected {extra}", obj)
    v, seq, digest, prev = obj["v"], obj["seq"], obj["hash"], obj["prev"]
    if v != SCHEMA_VERSION or type(v) is not int:
        raise RecordError("bad-schema", f"unknown schema version {v!r}", obj)
    if type(seq) is not int or seq < 0:
        raise RecordError("bad-schema", "seq is not a non-negative integer", obj)
    if type(digest) is not str or not HEX64.fullmatch(digest):
        raise RecordError("bad-schema", "hash is not 64 hex digits", obj)
    if type(prev) is not str or not HEX64.fullmatch(prev):
        raise RecordError("bad-schema", "prev is not 64 hex digits", obj)
    lid, time, kind = obj["ledger_id"], obj["time"], obj["kind"]
    if type(lid) is not str or not HEX32.fullmatch(lid):
        raise RecordError("bad-schema", "ledger_id is not 32 hex digits", obj)
    if type(time) is not str or not TIME.fullmatch(time):
        raise RecordError("bad-schema", "time is not RFC 3339 UTC with microseconds", obj)
    if type(kind) is not str or not KIND.fullmatch(kind):
        raise RecordError("bad-schema", "kind is not a dotted lower-case name", obj)
    if type(obj["body"]) is not dict:
        raise RecordError("bad-schema", "body is not an object", obj)
    return obj


def check_hash(raw: bytes, obj: dict[str, Any]) -> None:
    """Check the record's own hash against its canonical line ``raw``.

    The bytes without ``hash`` are ``raw`` minus its ``,"hash":"…"`` member: the
    members are sorted, ``body`` always comes first, and after ``hash`` come
    only scalar members whose strings escape every quote, so the last
    occurrence of that member is the top-level one.
    """
    digest: str = obj["hash"]
    member = b',"hash":"' + digest.encode() + b'"'
    at = raw.rfind(member)
    if at < 0:  # unreachable for a canonical line with a valid schema
        raise RecordError("bad-hash", "the hash member is not where canonical JSON puts it", obj)
    unhashed = raw[:at] + raw[at + len(member) :]
    if blake3.blake3(RECORD_DOMAIN + unhashed).hexdigest() != digest:
        raise RecordError("bad-hash", "the record's hash does not match its content", obj)


def _parse_checked(raw: bytes) -> dict[str, Any]:
    """The reference parser: each check in turn, raising the precise :class:`RecordError`."""
    obj = check_fields(load_canonical(raw))
    check_hash(raw, obj)
    return obj


_BODY_OPEN: Final = '{"body":{'
_HASH_MEMBER: Final = ',"hash":"'
#: Everything after the body of a record line as the writer produces it: the members
#: sorted, no whitespace. The pattern checks the form of ``kind``, ``seq`` and ``time``;
#: it takes the three digests as any 64 or 32 characters (a pattern checking hex digits
#: costs a step per character), which :func:`split_record` then checks: ``hash`` by
#: equality with the computed digest, ``prev`` and ``ledger_id`` against values already
#: shown to be hex, or a hex pattern. None of these values can hold a character JSON escapes.
_TAIL = re.compile(
    r'(?s),"hash":"(.{64})","kind":"([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*)",'
    r'"ledger_id":"(.{32})","prev":"(.{64})","seq":(0|[1-9][0-9]{0,15}),'
    r'"time":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)","v":1\}'
)
_TAIL_MATCH = _TAIL.fullmatch
#: The length of ``,"hash":"<64 hex>"``: what the hash does not cover.
_HASH_MEMBER_LEN: Final = len(_HASH_MEMBER) + 64 + 1

Fields = tuple[int, str, str, str, str, str, dict[str, Any]]
"""``(seq, kind, ledger_id, prev, hash, time, body)`` of a valid record."""


def split_record(raw: bytes) -> Fields | None:
    """The fields of ``raw`` when it is a valid record line exactly as the writer makes it;
    ``None`` means "not shown valid here": the caller asks :func:`parse_object`.

    The hot path of verification, which never parses or re-encodes the members
    after ``body``: a canonical record is ``{"body":`` + the canonical body +
    a tail whose layout is fixed (members in sorted order, no whitespace, hex
    digests, a kind, an integer, a time, ``"v":1``), which one regular
    expression checks, form of every value included. So only the body goes
    through the JSON decoder and encoder (canonical iff re-encoding gives the
    same text), and the hash is BLAKE3 over the line minus its hash member.
    Whatever this accepts, the reference (:func:`load_canonical`,
    :func:`check_fields`, :func:`check_hash`) accepts with the same values;
    anything unusual (a non-BMP character, an integer past 2**53, any
    deviation from the layout) is left to the reference, which says what is
    wrong. The tests compare both on mutated lines.
    """
    global _last_digest
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # A quote inside a string is escaped, so the last ``,"hash":"`` is structural; the
    # tail pattern then proves it is the top-level member.
    at = text.rfind(_HASH_MEMBER)
    if at < 0 or not text.startswith(_BODY_OPEN):
        return None
    tail = _TAIL_MATCH(text, at)
    if tail is None:
        return None
    body_text = text[8:at]
    try:
        body, end = _SCAN_INTS_UNCHECKED(body_text, 0)
        if end != len(body_text) or type(body) is not dict or _encode(body) != body_text:
            return None
    except (StopIteration, ValueError, TypeError, RecursionError):
        return None
    # The body is canonical, so an integer beyond ±(2**53 - 1) (16 digits or more) shows
    # as one of _LONG_NUMBERS here; so may a string (rarely): the reference decides.
    shapes = raw.translate(_NUMBER_SHAPES)
    if _LONG_NUMBERS[0] in shapes or _LONG_NUMBERS[1] in shapes:
        return None
    if not raw.isascii():
        # Beyond U+FFFF, RFC 8785 orders keys differently (by UTF-16 code units).
        if _NON_BMP_BYTES.search(raw):
            return None
        at += len(raw) - len(text)  # the tail is ASCII: only the body has wide characters
    digest, kind, lid, prev, seq_text, time = tail.groups()
    seq = int(seq_text)
    if seq > MAX_SAFE_INT or not (prev == _last_digest or _HEX64_MATCH(prev)) or not _valid_id(lid):
        return None
    unhashed = RECORD_DOMAIN + raw[:at] + raw[at + _HASH_MEMBER_LEN :]
    if blake3.blake3(unhashed).hexdigest() != digest:
        return None
    _last_digest = digest
    return seq, kind, lid, prev, digest, time, body


def parse_object(raw: bytes) -> dict[str, Any]:
    """Parse and fully check one record line (without its newline); return the object.

    :func:`split_record` for the lines the writer makes; anything it does not
    accept goes through the reference checks, which raise the precise
    :class:`RecordError`.
    """
    fields = split_record(raw)
    if fields is None:
        return _parse_checked(raw)
    seq, kind, lid, prev, digest, time, body = fields
    return {
        "body": body,
        "hash": digest,
        "kind": kind,
        "ledger_id": lid,
        "prev": prev,
        "seq": seq,
        "time": time,
        "v": SCHEMA_VERSION,
    }


def parse_line(raw: bytes) -> Record:
    """Parse and fully check one record line (without its newline)."""
    obj = parse_object(raw)
    return Record(
        ledger_id=LedgerId(obj["ledger_id"]),
        seq=obj["seq"],
        prev=Digest(obj["prev"]),
        time=obj["time"],
        kind=obj["kind"],
        body=obj["body"],
        hash=Digest(obj["hash"]),
        line=raw,
        v=obj["v"],
    )
