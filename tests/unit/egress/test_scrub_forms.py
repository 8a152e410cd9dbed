"""Disguised echoes: every character of the value in any escape, mixed, any case, streamed.

The oracle (``_decode``) is independent of the scrubber: it *decodes* the escapes of
JSON/JavaScript, percent-encoding and HTML (``html.unescape``), then looks for the value
ignoring case. Whatever the scrubber lets through must not decode back to the value.
"""

from __future__ import annotations

import gzip
import html
import re
import zlib
from urllib.parse import unquote, unquote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jhansi.egress.codec import FREE_OUTPUT, Decoder, Unreadable, choose
from jhansi.egress.scrub import Scrubber

VALUE = "sk-Live/01_23+4.5~6=7 8"
PLACEHOLDER = "jhansi-placeholder-KEY-" + "ab" * 16

_JS = re.compile(
    rb"\\u\{([0-9a-fA-F]+)\}|\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})|\\x([0-9a-fA-F]{2})"
    rb"|%u([0-9a-fA-F]{4})|\\([^0-9A-Za-z])"
)


def _decode(data: bytes) -> list[str]:
    """``data`` with JS/JSON escapes, then HTML entities, then percent-encoding (with and
    without ``+`` for a space) undone."""

    def js(match: re.Match[bytes]) -> bytes:
        digits = (
            next(g for g in match.groups()[:5] if g is not None)
            if any(match.groups()[:5])
            else None
        )
        if digits is None:
            return match.group(6)
        return chr(int(digits, 16)).encode("utf-8", "surrogatepass")

    text = html.unescape(_JS.sub(js, data).decode("utf-8", "replace"))
    return [text, unquote(text), unquote_plus(text)]


def _leaks(data: bytes, value: str = VALUE) -> bool:
    if value.lower().encode() in data.lower():
        return True
    return any(value.lower() in d.lower() for d in _decode(data))


def _encodings(char: str) -> list[str]:
    """Escapes of ``char`` a cooperating host could use (each decodes back to ``char``)."""
    point = ord(char)
    forms = [
        char,
        char.upper(),
        f"%{point:02x}",
        f"%{point:02X}",
        f"\\u{point:04x}",
        f"\\u{point:04X}",
        f"\\x{point:02x}",
        f"\\u{{{point:x}}}",
        f"&#{point};",
        f"&#{point}",
        f"&#000{point};",
        f"&#x{point:x};",
        f"&#X{point:X}",
    ]
    if not char.isalnum():
        forms.append("\\" + char)
    if char == " ":
        forms.append("+")
    names = {"/": "&sol;", "+": "&plus;", ".": "&period;", "=": "&equals;", "_": "&lowbar;"}
    if char in names:
        forms += [names[char], names[char].rstrip(";")]
    return forms


def _stream(scrubber: Scrubber, data: bytes, cuts: list[int]) -> bytes:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return b"".join(scrubber.feed(p) for p in pieces) + scrubber.flush()


@pytest.mark.parametrize(
    "form",
    [
        '{"k": "sk-Live\\/01_23+4.5~6=7 8"}',  # JSON with \/
        "".join(f"\\u{ord(c):04x}" for c in VALUE),  # every character \u-escaped
        "".join(f"\\u{ord(c):04X}" if i % 2 else c for i, c in enumerate(VALUE)),  # mixed
        "".join(f"%{ord(c):02X}" for c in VALUE),  # every byte percent-encoded
        "".join(f"%{ord(c):02x}" if i % 3 else f"%{ord(c):02X}" for i, c in enumerate(VALUE)),
        VALUE.replace("+", "%2B").replace(" ", "+").replace("/", "%2f"),  # form encoding
        "".join(f"&#{ord(c)};" for c in VALUE),  # decimal entities
        "".join(f"&#x{ord(c):x}" for c in VALUE),  # hex entities without ;
        VALUE.replace("/", "&sol;").replace("+", "&plus;").replace(".", "&period;"),  # named
        VALUE.upper(),
        VALUE.encode().hex().upper()[:10] + VALUE.encode().hex()[10:],  # mixed-case hex
        "<p title='" + html.escape(VALUE) + "'>",
    ],
)
def test_each_disguise_is_scrubbed_whole_and_byte_by_byte(form: str) -> None:
    data = f"before {form} after".encode()
    assert _leaks(data) or VALUE.encode().hex() in data.decode().lower()
    scrubber = Scrubber([VALUE], {VALUE: PLACEHOLDER})
    whole = scrubber.scrub(data)
    assert not _leaks(whole)
    assert VALUE.encode().hex() not in whole.decode().lower()
    assert whole.startswith(b"before ")
    assert whole.endswith(b" after")
    assert PLACEHOLDER.encode() in whole or PLACEHOLDER.encode().hex().encode() in whole.lower()
    assert _stream(scrubber.fresh(), data, list(range(len(data)))) == whole  # byte by byte
    assert scrubber.contains(data)
    assert not scrubber.contains(whole)


@settings(max_examples=200, deadline=None)
@given(
    value=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=12, max_size=40
    ),
    data=st.data(),
)
def test_property_any_mix_of_escapes_any_chunking(value: str, data: st.DataObject) -> None:
    disguised = "".join(data.draw(st.sampled_from(_encodings(c))) for c in value)
    prefix = data.draw(st.text(alphabet="ab%&\\#;x0 ", max_size=20))
    blob = f"{prefix}{disguised}{prefix}".encode()
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    scrubber = Scrubber([value], {value: PLACEHOLDER})
    out = _stream(scrubber, blob, cuts)
    assert out == scrubber.scrub(blob)
    assert not _leaks(out, value)


def test_non_ascii_values_in_utf8_percent_and_unicode_escapes() -> None:
    value = "pässwörd-🔑-0123"
    scrubber = Scrubber([value], {value: PLACEHOLDER})
    from urllib.parse import quote

    for form in (
        quote(value, safe=""),
        "".join(f"&#{ord(c)};" for c in value),
        value.encode("unicode_escape").decode().replace("\\U0001f511", "\\ud83d\\udd11"),
    ):
        out = scrubber.scrub(form.encode())
        assert out == PLACEHOLDER.encode(), form


def test_lookbehind_is_bounded_by_the_value_length() -> None:
    scrubber = Scrubber(["x" * 64])
    assert scrubber.lookbehind < 64 * 40  # a few dozen bytes per character, never unbounded


# -- compressed bodies ----------------------------------------------------------------------


def _decode_all(decoder: Decoder, data: bytes, step: int = 4096) -> bytes:
    out = b"".join(
        piece for at in range(0, len(data), step) for piece in decoder.feed(data[at : at + step])
    )
    return out + decoder.finish()


def test_gzip_bodies_are_decoded_scrubbed_and_compressed_again() -> None:
    scrubber = Scrubber([VALUE], {VALUE: PLACEHOLDER})
    body = b"x" * 100_000 + VALUE.encode() + b"y" * 100_000
    packed = gzip.compress(body) + gzip.compress(b"second member " + VALUE.encode())
    mode, wbits = choose([], b"application/octet-stream", packed[:8])  # sniffed, not labelled
    assert mode == "regzip"
    out = _decode_all(Decoder(mode, wbits, scrubber.fresh()), packed)
    plain = gzip.decompress(out)
    assert plain == scrubber.scrub(body + b"second member " + VALUE.encode())
    assert VALUE.encode() not in plain


@pytest.mark.parametrize("coding", [b"gzip", b"x-gzip", b"deflate", b"Deflate"])
def test_content_encodings_are_decoded(coding: bytes) -> None:
    scrubber = Scrubber([VALUE], {VALUE: PLACEHOLDER})
    body = b'{"echo": "' + VALUE.encode().replace(b"/", b"\\/") + b'"}'
    packed = gzip.compress(body) if b"gzip" in coding else zlib.compress(body)
    mode, wbits = choose([coding], b"application/json", packed[:8])
    assert mode == "inflate"
    out = _decode_all(Decoder(mode, wbits, scrubber.fresh()), packed, step=1)
    assert out == b'{"echo": "' + PLACEHOLDER.encode() + b'"}'


@pytest.mark.parametrize(
    ("encodings", "kind", "head"),
    [
        ([b"br"], b"text/plain", b"\x0b\x02\x80"),
        ([b"zstd"], b"text/plain", b"\x28\xb5\x2f\xfd"),
        ([b"gzip, gzip"], b"text/plain", b"\x1f\x8b"),
        ([], b"application/octet-stream", b"\x28\xb5\x2f\xfd\x00"),
        ([], b"application/octet-stream", b"PK\x03\x04"),
        ([], b"application/octet-stream", b"BZh91AY"),
        ([], b"application/x-xz", b"anything"),
        ([], b"application/x-brotli; q=1", b"\x0b"),
    ],
)
def test_unreadable_compression_is_refused(
    encodings: list[bytes], kind: bytes, head: bytes
) -> None:
    with pytest.raises(Unreadable):
        choose(encodings, kind, head)


def test_a_decompression_bomb_is_cut_with_bounded_pieces() -> None:
    bomb = gzip.compress(b"\0" * (FREE_OUTPUT + 8 * 1024 * 1024), compresslevel=9)
    assert len(bomb) * 200 < FREE_OUTPUT  # it expands far more than MAX_RATIO
    decoder = Decoder("regzip", 31, Scrubber(["a-secret-value"]))
    biggest = 0

    def drain() -> None:
        nonlocal biggest
        for at in range(0, len(bomb), 65536):
            for piece in decoder.feed(bomb[at : at + 65536]):
                biggest = max(biggest, len(piece))

    with pytest.raises(Unreadable, match="decompression bomb"):
        drain()
    assert biggest <= 1024 * 1024  # never a whole expansion at once


def test_a_truncated_gzip_body_is_refused() -> None:
    decoder = Decoder("regzip", 31, Scrubber(["a-secret-value"]))
    packed = gzip.compress(b"z" * 10_000)
    list(decoder.feed(packed[: len(packed) // 2]))
    with pytest.raises(Unreadable, match="mid-stream"):
        decoder.finish()
