"""Remove real secret values from bytes on their way back to the sandbox (or a log).

A bound host may echo a credential back, and a host that cooperates with the script
may disguise it on the way. :class:`Scrubber` finds each value in these forms and
replaces it:

* **character escapes, in any mix, ignoring case**: every character of the value may
  be itself or any of its common escapes, independently of its neighbours: JSON and
  JavaScript (``\\/``, ``\\u0041``, ``\\x41``, ``\\u{41}``, ``\\U00000041``),
  percent-encoding (``%41``, ``%u0041``, ``+`` for a space), HTML entities (named,
  ``&#65;`` and ``&#x41;``, with or without ``;``, up to 8 leading zeros) and a
  backslash before punctuation. Letters match in either case (an upper-cased value
  still gives the value away). Such a match becomes the raw placeholder, which reads
  the same in every one of those contexts (it is letters, digits, ``-`` and ``_``);
* **whole-value encodings**: hex (any case) and base64 (standard and URL-safe,
  standalone and inside a longer blob at every alignment) become the same form of the
  placeholder, so what the script decodes stays consistent.

Base64 inside a longer stream depends on the value's offset modulo 3, so each value
yields three aligned "cores" (the characters that depend only on the value's bytes).
The one or two boundary characters a core leaves out mix at most 4 bits of the value
with neighbouring bytes; those bits are not recoverable into the value itself.

Out of reach, by construction: encodings of encodings (base64 of a JSON-escaped value,
a percent-encoded ``\\u`` escape), a value cut into pieces the script reassembles
(split across headers or fields, reversed, interleaved with other characters),
compression the proxy does not decode, and encryption. A host that wants to hand its
credential to the script can always do so; the scrubber stops echoes and naive
disguises, binding a secret to a host is what trusts that host.
"""

from __future__ import annotations

import base64
import html.entities
import re
from collections.abc import Iterable, Mapping

REDACTED = "[jhansi:redacted]"
"""Replacement for a value that has no placeholder in ``replacement_for``."""

_MIN_ENCODED = 6
"""Encoded forms shorter than this would match unrelated text; only the raw form is kept."""

_ZEROS = 8
"""Leading zeros allowed in numeric escapes (``&#00065;``): bounded, so a match is too."""


def _b64_core(data: bytes, align: int, urlsafe: bool) -> bytes:
    """Base64 characters fully determined by ``data`` placed at offset ``align`` mod 3."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    encoded = encode(b"\0" * align + data).rstrip(b"=")
    skip = (0, 2, 3)[align]
    return encoded[skip : ((align + len(data)) * 4) // 3]


def _entity_names() -> dict[str, list[str]]:
    """HTML5 named character references of single characters, by character."""
    names: dict[str, list[str]] = {}
    for name, char in html.entities.html5.items():
        if len(char) == 1:
            names.setdefault(char, []).append(name.rstrip(";"))
    return {c: sorted(set(n), key=len, reverse=True) for c, n in names.items()}


_ENTITIES = _entity_names()


def _char_forms(char: str) -> list[tuple[bytes, str, int]]:
    """``char`` in any common escape: ``(first byte, rest as a regex, longest length)``.

    The rest is meant to be matched ignoring case; the first byte is literal (a letter
    gives two alternatives, one per case), so that a pattern starting with these
    alternatives lets the regex engine skip ahead to candidate bytes (fast search).
    """
    point = ord(char)
    raw = char.encode("utf-8", "surrogateescape")
    forms: list[tuple[bytes, str, int]] = []

    def add(text: str, longest: int) -> None:
        forms.append((text[:1].encode("latin-1"), text[1:], longest))

    if raw.isalpha():
        forms.append((raw.lower(), "", 1))
        forms.append((raw.upper(), "", 1))
    else:
        forms.append((raw[:1], re.escape(raw[1:].decode("latin-1")), len(raw)))
    add("".join(f"%{b:02x}" for b in raw), 3 * len(raw))
    if char == " ":
        add("+", 1)
    if point < 0x10000:
        units = [point]
    else:
        high, low = divmod(point - 0x10000, 0x400)
        units = [0xD800 + high, 0xDC00 + low]
    add("\\" + "\\\\".join(f"u{u:04x}" for u in units), 6 * len(units))
    add(f"%u{point:04x}", 2 + len(f"{point:04x}"))
    add(f"\\u\\{{0{{0,{_ZEROS}}}{point:x}\\}}", 4 + _ZEROS + len(f"{point:x}"))
    add(f"\\U{point:08x}", 10)
    if point < 0x100:
        add(f"\\x{point:02x}", 4)
    if point < 0x80 and not char.isalnum():
        add("\\" + re.escape(char), 2)  # \/ \" \- ...: an escaped punctuation mark
    short = {"\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}.get(char)
    if short:
        add("\\" + short, 2)
    add(f"&\\#0{{0,{_ZEROS}}}{point};?", 3 + _ZEROS + len(str(point)))
    add(f"&\\#x0{{0,{_ZEROS}}}{point:x};?", 4 + _ZEROS + len(f"{point:x}"))
    for name in _ENTITIES.get(char, ()):
        add(f"&{re.escape(name)};?", len(name) + 2)
    return forms


def _one_of(forms: list[tuple[bytes, str, int]]) -> str:
    """The alternatives of :func:`_char_forms` as one group (inside an ignore-case group)."""
    return "(?:" + "|".join(re.escape(f.decode("latin-1")) + r for f, r, _ in forms) + ")"


def _encoded(value: bytes, replacement: bytes) -> dict[bytes, bytes]:
    """Whole-value base64 forms of ``value`` mapped to the same of ``replacement``."""
    forms: dict[bytes, bytes] = {}

    def add(pattern: bytes, substitute: bytes) -> None:
        if pattern and pattern != value and len(pattern) >= _MIN_ENCODED:
            forms.setdefault(pattern, substitute)

    for urlsafe in (False, True):
        encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
        add(encode(value), encode(replacement))  # standalone: a valid encoding comes back
        add(encode(value).rstrip(b"="), encode(replacement).rstrip(b"="))
        for align in (0, 1, 2):
            add(_b64_core(value, align, urlsafe), _b64_core(replacement, align, urlsafe))
    return forms


class _Rule:
    """One value's regex and what its matches become.

    The regex's top-level alternatives: each base64 form (longest first) and the hex
    form end with an empty group whose number says which form matched (``by_group``);
    the escaped forms have none and become ``replacement``. Every alternative starts
    with a literal byte, so the engine searches for those bytes first (a charset
    prefix) instead of trying every position.
    """

    __slots__ = ("by_group", "longest", "pattern", "replacement")

    def __init__(self, value: str, replacement: bytes) -> None:
        raw = value.encode("utf-8", "surrogateescape")
        branches: list[str] = []
        by_group: list[bytes] = [b""]
        longest = 0
        for form, substitute in sorted(
            _encoded(raw, replacement).items(), key=lambda f: len(f[0]), reverse=True
        ):
            branches.append(re.escape(form.decode("latin-1")) + "()")
            by_group.append(substitute)
            longest = max(longest, len(form))
        hexed = raw.hex()
        if len(hexed) >= _MIN_ENCODED:
            for first in dict.fromkeys((hexed[0], hexed[0].upper())):
                branches.append(re.escape(first) + f"(?i:{hexed[1:]})()")
                by_group.append(replacement.hex().encode())
            longest = max(longest, len(hexed))
        chars = [_char_forms(c) for c in value]
        rest = "".join(_one_of(forms) for forms in chars[1:])
        branches += [
            re.escape(first.decode("latin-1")) + f"(?i:{tail}{rest})" for first, tail, _ in chars[0]
        ]
        longest = max(longest, sum(max(n for *_, n in forms) for forms in chars))
        self.pattern = re.compile("|".join(branches).encode("latin-1"))
        self.by_group = tuple(by_group)
        self.replacement = replacement
        self.longest = longest

    def substitute(self, match: re.Match[bytes]) -> bytes:
        return self.by_group[match.lastindex] if match.lastindex else self.replacement


class Scrubber:
    """Replace secret values (escaped, hex, base64, any case) with their placeholders.

    Use :meth:`scrub` on a complete byte string, or :meth:`feed` then :meth:`flush`
    on a stream: ``feed`` holds back a tail shorter than the longest possible match,
    so a value split across chunks (even byte by byte) is still found, and the
    output of a stream is exactly what :meth:`scrub` gives for the whole.
    """

    __slots__ = ("_hold", "_pending", "_rules")

    def __init__(self, values: Iterable[str], replacement_for: Mapping[str, str] | None = None):
        mapping = replacement_for or {}
        rules = [
            _Rule(value, mapping.get(value, REDACTED).encode())
            for value in dict.fromkeys(values)
            if value
        ]
        self._rules = tuple(rules)
        self._hold = max((r.longest for r in rules), default=1) - 1
        self._pending = b""

    def fresh(self) -> Scrubber:
        """A scrubber with the same patterns and an empty stream state (cheap: no recompiling)."""
        other = object.__new__(Scrubber)
        other._rules = self._rules
        other._hold = self._hold
        other._pending = b""
        return other

    @property
    def patterns(self) -> tuple[bytes, ...]:
        """Every regex that is replaced (for tests and diagnostics: they are secret)."""
        return tuple(r.pattern.pattern for r in self._rules)

    @property
    def lookbehind(self) -> int:
        """Bytes a stream holds back: one less than the longest possible match."""
        return self._hold

    def _matches(self, data: bytes, limit: int) -> list[tuple[int, int, bytes]]:
        """Non-overlapping ``(start, end, replacement)`` starting before ``limit``, in order.

        Each rule is searched separately (each keeps its fast prefix search); where two
        overlap, the earlier start wins, then the longer match.
        """
        found: list[tuple[int, int, bytes]] = []
        for rule in self._rules:
            for match in rule.pattern.finditer(data):
                if match.start() >= limit:
                    break
                found.append((match.start(), match.end(), rule.substitute(match)))
        if len(found) > 1:
            found.sort(key=lambda m: (m[0], -m[1]))
            kept: list[tuple[int, int, bytes]] = []
            end = 0
            for item in found:
                if item[0] >= end:
                    kept.append(item)
                    end = item[1]
            found = kept
        return found

    @staticmethod
    def _apply(data: bytes, matches: list[tuple[int, int, bytes]], upto: int) -> bytes:
        out: list[bytes] = []
        pos = 0
        for start, end, replacement in matches:
            out.append(data[pos:start])
            out.append(replacement)
            pos = end
        out.append(data[pos:upto])
        return b"".join(out)

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every form of every value replaced (stateless)."""
        if not self._rules:
            return data
        matches = self._matches(data, len(data))
        return self._apply(data, matches, len(data)) if matches else data

    def contains(self, data: bytes) -> bool:
        """Whether any form of any value is in ``data``."""
        return any(rule.pattern.search(data) is not None for rule in self._rules)

    def feed(self, data: bytes) -> bytes:
        """Scrub the next chunk of a stream; returns what is safe to pass on now."""
        if not self._rules:
            return data
        buf = self._pending + data if self._pending else data
        safe = len(buf) - self._hold
        if safe <= 0:
            self._pending = buf
            return b""
        # A match starting before ``safe`` lies wholly in ``buf`` (hold >= longest - 1):
        # it is decided; one starting later could still grow once more data arrives.
        matches = self._matches(buf, safe)
        cut = max(safe, matches[-1][1]) if matches else safe
        self._pending = buf[cut:]
        return self._apply(buf, matches, cut) if matches else buf[:cut]

    def flush(self) -> bytes:
        """The held-back tail of the stream, scrubbed; the scrubber can then be reused."""
        tail, self._pending = self._pending, b""
        return self.scrub(tail)
