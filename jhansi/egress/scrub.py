"""Remove real secret values from bytes on their way back to the sandbox (or a log).

A server may echo a credential back: raw, in JSON, base64-encoded inside another
blob, hex-encoded, URL-encoded. :class:`Scrubber` replaces each of these forms with
the same form of the secret's placeholder, so that what the script sees stays
consistent (base64 of the credential becomes base64 of the placeholder) and the real
value never comes back. The runner uses the same scrubber on the script's stdout
and stderr.

Base64 inside a longer stream depends on the value's offset modulo 3, so each value
yields three aligned "cores" (the characters that depend only on the value's bytes).
The one or two boundary characters a core leaves out mix at most 4 bits of the value
with neighbouring bytes; those bits are not recoverable into the value itself.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

REDACTED = "[jhansi:redacted]"
"""Replacement for a value that has no placeholder in ``replacement_for``."""

_MIN_ENCODED = 6
"""Encoded forms shorter than this would match unrelated text; only the raw form is kept."""


def _b64_core(data: bytes, align: int, urlsafe: bool) -> bytes:
    """Base64 characters fully determined by ``data`` placed at offset ``align`` mod 3."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    encoded = encode(b"\0" * align + data).rstrip(b"=")
    skip = (0, 2, 3)[align]
    return encoded[skip : ((align + len(data)) * 4) // 3]


def _forms(value: bytes, replacement: bytes) -> dict[bytes, bytes]:
    """Every encoded form of ``value`` mapped to the same form of ``replacement``."""
    forms: dict[bytes, bytes] = {}

    def add(pattern: bytes, substitute: bytes) -> None:
        if pattern and pattern != value and len(pattern) >= _MIN_ENCODED:
            forms.setdefault(pattern, substitute)

    text, rtext = value.decode("utf-8", "surrogateescape"), replacement.decode()
    add(json.dumps(text)[1:-1].encode(), json.dumps(rtext)[1:-1].encode())
    for quoter in (quote, quote_plus):
        q = quoter(value, safe="").encode()
        add(q, quoter(replacement, safe="").encode())
        add(re.sub(rb"%[0-9A-F]{2}", lambda m: m.group().lower(), q), quoter(rtext).encode())
    add(value.hex().encode(), replacement.hex().encode())
    add(value.hex().upper().encode(), replacement.hex().upper().encode())
    for urlsafe in (False, True):
        encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
        add(encode(value), encode(replacement))  # standalone: a valid encoding comes back
        add(encode(value).rstrip(b"="), encode(replacement).rstrip(b"="))
        for align in (0, 1, 2):
            add(_b64_core(value, align, urlsafe), _b64_core(replacement, align, urlsafe))
    forms[value] = replacement
    return forms


class Scrubber:
    """Replace secret values (raw, JSON, base64, hex, URL-encoded) with their placeholders.

    Use :meth:`scrub` on a complete byte string, or :meth:`feed` then :meth:`flush`
    on a stream: ``feed`` holds back a tail shorter than the longest pattern, so a
    value split across chunks is still found.
    """

    __slots__ = ("_hold", "_pattern", "_pending", "_replacements")

    def __init__(self, values: Iterable[str], replacement_for: Mapping[str, str] | None = None):
        replacements: dict[bytes, bytes] = {}
        mapping = replacement_for or {}
        for value in values:
            if not value:
                continue
            substitute = mapping.get(value, REDACTED).encode()
            for pattern, replacement in _forms(value.encode(), substitute).items():
                replacements.setdefault(pattern, replacement)
        self._replacements = replacements
        ordered = sorted(replacements, key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(p) for p in ordered)) if ordered else None
        self._hold = max((len(p) for p in ordered), default=1) - 1
        self._pending = b""

    def fresh(self) -> Scrubber:
        """A scrubber with the same patterns and an empty stream state (cheap: no recompiling)."""
        other = object.__new__(Scrubber)
        other._replacements = self._replacements
        other._pattern = self._pattern
        other._hold = self._hold
        other._pending = b""
        return other

    @property
    def patterns(self) -> tuple[bytes, ...]:
        """Every byte pattern that is replaced (for tests and diagnostics: they are secret)."""
        return tuple(self._replacements)

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every form of every value replaced (stateless)."""
        if self._pattern is None:
            return data
        return self._pattern.sub(lambda m: self._replacements[m.group()], data)

    def feed(self, data: bytes) -> bytes:
        """Scrub the next chunk of a stream; returns what is safe to pass on now."""
        if self._pattern is None:
            return data
        buf = self._pending + data
        safe = len(buf) - self._hold
        if safe <= 0:
            self._pending = buf
            return b""
        out: list[bytes] = []
        pos = 0
        for match in self._pattern.finditer(buf):
            if match.start() >= safe:
                break  # a longer pattern could still start here once more data arrives
            out.append(buf[pos : match.start()])
            out.append(self._replacements[match.group()])
            pos = match.end()
        cut = max(safe, pos)
        out.append(buf[pos:cut])
        self._pending = buf[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The held-back tail of the stream, scrubbed; the scrubber can then be reused."""
        tail, self._pending = self._pending, b""
        return self.scrub(tail)
