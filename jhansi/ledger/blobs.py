"""The content-addressed blob store beside the ledger: ``blobs/ab/cdef…``.

A blob is named by the plain BLAKE3 of its bytes (so ``b3sum`` agrees with the
name); records reference it as ``{"blob": "<hex>"}``. A blob is written before
the record that references it: temporary file (mode 0600 at ``open()``),
``fsync``, ``rename`` into place, ``fsync`` of the directory. Reading checks the
hash, so a blob altered on disk is an error, never silently returned.
"""

from __future__ import annotations

import os
from pathlib import Path

from jhansi.errors import LedgerError
from jhansi.ledger.record import HEX64, Digest, blob_digest

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new private file at ``path``: mode 0600 at open(), then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs under one directory, two hex digits of fan-out."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        """Where the blob named ``digest`` lives (whether or not it exists)."""
        if not HEX64.fullmatch(digest):
            raise ValueError(f"not a blob name: {digest[:80]!r}")
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes) -> Digest:
        """Store ``data`` durably; return its name. Storing the same bytes twice is a no-op."""
        digest = blob_digest(data)
        target = self.path(digest)
        if target.is_file() and self.check(digest) is None:
            return digest  # an altered copy is replaced below, never reused
        fan = target.parent
        if not fan.is_dir():
            if not self.root.is_dir():
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                fsync_dir(self.root.parent)
            fan.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(self.root)
        tmp = fan / f".{digest[2:]}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            write_new_file(tmp, data)
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(fan)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes of a blob, checked against its name."""
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise LedgerError(
                f"blob {digest} is missing from {self.root}",
                hint="Restore the ledger's blobs/ directory from a backup; "
                "`jhansi ledger verify` lists every missing blob.",
            ) from None
        if blob_digest(data) != digest:
            raise LedgerError(
                f"blob {digest} was altered: its content no longer matches its name",
                hint="Restore it from a backup; `jhansi ledger verify` lists every altered blob.",
            )
        return data

    def check(self, digest: str) -> str | None:
        """``None`` if the blob is present and intact, else ``"missing"`` or ``"altered"``."""
        import blake3

        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "missing"
        hasher = blake3.blake3()
        try:
            with os.fdopen(fd, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    hasher.update(chunk)
        except OSError:
            return "missing"
        return None if hasher.hexdigest() == digest else "altered"
