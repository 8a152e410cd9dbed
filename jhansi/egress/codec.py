"""Compressed response bodies from intercepted hosts: decoded to be scrubbed, or refused.

The scrubber reads bytes; a secret inside compressed data is invisible to it. So for
responses from hosts with a bound secret (the only ones the proxy reads):

* ``Content-Encoding: gzip``, ``x-gzip`` or ``deflate`` (sent although the proxy asked
  for ``identity``) is **decoded**: the sandbox gets the scrubbed, uncompressed body
  and no ``Content-Encoding``;
* a body that *is* a gzip stream (it starts with gzip's magic bytes, whatever its
  ``Content-Type``: ``application/gzip``, a ``.tar.gz``, a mislabelled octet-stream)
  is **decoded, scrubbed and compressed again**, so the script still gets gzip;
* any other content coding (``br``, ``zstd``, ``compress``, stacked codings), and a
  body that starts as another compressed format (zstd, xz, bzip2, zip, 7z, rar,
  Unix compress, lzip) or is labelled as one, is **refused** (502): it cannot be read.

Decoding is streamed in pieces of at most :data:`PIECE` bytes, so memory stays
bounded whatever the ratio, and a decompression bomb is cut once the output passes
:data:`FREE_OUTPUT` bytes and :data:`MAX_RATIO` times the input so far.

Out of reach: compressed data that does not start the body (inside a tar, after a
prefix), formats without a signature (raw deflate, brotli) served as something else,
and any encryption.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Literal

from jhansi.egress.scrub import Scrubber

PIECE = 64 * 1024
"""Largest piece of decoded output produced at once."""
FREE_OUTPUT = 64 * 1024 * 1024
"""Decoded bytes allowed whatever the ratio."""
MAX_RATIO = 200
"""Past FREE_OUTPUT, decoded bytes may be at most this many times the encoded bytes."""

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\x1f\x9d", "Unix compress"),
    (b"LZIP", "lzip"),
)
_TYPES = {
    "application/zstd": "zstd",
    "application/x-zstd": "zstd",
    "application/x-xz": "xz",
    "application/x-bzip2": "bzip2",
    "application/x-bzip": "bzip2",
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/x-7z-compressed": "7z",
    "application/vnd.rar": "rar",
    "application/x-rar-compressed": "rar",
    "application/x-compress": "Unix compress",
    "application/x-lzip": "lzip",
    "application/x-brotli": "brotli",
    "application/x-lzma": "lzma",
}
SNIFF = 8
"""Bytes of a body needed to recognise a signature."""

Mode = Literal["plain", "inflate", "regzip"]


class Unreadable(Exception):
    """A body the proxy cannot scrub (reason in ``args[0]``)."""


def choose(encodings: list[bytes], content_type: bytes, head: bytes) -> tuple[Mode, int]:
    """How to scrub a body: its mode and, for ``inflate``, zlib's ``wbits``.

    ``encodings`` are the Content-Encoding values, ``head`` the body's first bytes
    (at least :data:`SNIFF`, unless the body is shorter). Raises :class:`Unreadable`.
    """
    codings = [
        c.strip().lower()
        for value in encodings
        for c in value.split(b",")
        if c.strip().lower() not in (b"", b"identity")
    ]
    if len(codings) > 1:
        shown = ", ".join(c.decode("latin-1")[:20] for c in codings)
        raise Unreadable(f"stacked content codings ({shown})")
    if codings:
        coding = codings[0]
        if coding in (b"gzip", b"x-gzip"):
            return "inflate", 16 + zlib.MAX_WBITS
        if coding == b"deflate":
            # "deflate" is zlib-wrapped by the RFC; some servers send it raw.
            return "inflate", zlib.MAX_WBITS if head[:1] == b"\x78" else -zlib.MAX_WBITS
        raise Unreadable(f"the content coding {coding.decode('latin-1')[:40]!r}")
    if head.startswith(b"\x1f\x8b"):
        return "regzip", 16 + zlib.MAX_WBITS
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            raise Unreadable(f"a {name} body")
    kind = content_type.split(b";")[0].strip().lower().decode("latin-1")
    if kind in _TYPES:
        raise Unreadable(f"a {_TYPES[kind]} body ({kind})")
    return "plain", 0


class Decoder:
    """Decode (and, for ``regzip``, re-encode) a body while scrubbing it, in bounded pieces."""

    def __init__(self, mode: Mode, wbits: int, scrubber: Scrubber) -> None:
        self._mode = mode
        self._wbits = wbits
        self._scrub = scrubber
        self._inflate = zlib.decompressobj(wbits) if mode != "plain" else None
        self._deflate = (
            zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if mode == "regzip" else None
        )
        self._in = 0
        self._out = 0

    def _emit(self, clean: bytes) -> bytes:
        if self._deflate is None or not clean:
            return clean
        return self._deflate.compress(clean)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The scrubbed output for ``data``, piece by piece (empty pieces are skipped)."""
        if self._inflate is None:
            out = self._scrub.feed(data)
            if out:
                yield out
            return
        self._in += len(data)
        pending = data
        while pending:
            decoded = self._inflate.decompress(pending, PIECE)
            pending = self._inflate.unconsumed_tail
            self._out += len(decoded)
            if self._out > FREE_OUTPUT and self._out > MAX_RATIO * self._in:
                raise Unreadable(
                    f"a compressed body that expands more than {MAX_RATIO} times "
                    "(a decompression bomb?)"
                )
            out = self._emit(self._scrub.feed(decoded))
            if out:
                yield out
            if self._inflate.eof:
                rest = self._inflate.unused_data
                if not (self._mode == "regzip" or self._wbits > zlib.MAX_WBITS) or not rest:
                    return  # anything after the end of the stream is dropped, never passed on
                self._inflate = zlib.decompressobj(self._wbits)  # the next gzip member
                pending = rest

    def finish(self) -> bytes:
        """What is left once the body ended."""
        if self._inflate is not None and not self._inflate.eof and self._in:
            raise Unreadable("a compressed body that ends mid-stream")
        tail = self._scrub.flush()
        if self._deflate is None:
            return tail
        return self._deflate.compress(tail) + self._deflate.flush()
