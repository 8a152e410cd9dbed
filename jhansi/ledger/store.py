"""Appending to the ledger: locking, durability, torn writes, preflight.

The directory and its files are :mod:`jhansi.ledger.layout`; the signing key lives
in ``<data dir>/keys/ledger-ed25519.pem`` (see :mod:`jhansi.ledger.checkpoint`), and
what the appender checks and authenticates with it is :mod:`jhansi.ledger.keyguard`.

**Appending** (:meth:`Ledger.append`): blobs first (:meth:`Ledger.put_blob`:
temporary file, fsync, rename, fsync of the directory); then, under an
exclusive ``flock`` on ``lock``, read the last record, build the next one, and
write its line with its newline in one ``write`` call (looping on a short
write) on a descriptor opened ``O_APPEND``; then ``fdatasync``. The function
returns only once the record is on disk: no record, no run.

**Creation** happens on first use, under the lock: the genesis record (seq 0)
and a first checkpoint record (seq 1) are written to a temporary file,
``head.json`` (signing seq 1) is written, and only then is the temporary file
renamed to ``ledger.jsonl``. So a ``ledger.jsonl`` without ``head.json`` was
tampered with, never crashed.

**Checkpoints** (:meth:`Ledger.checkpoint`, after every run) sign the last
record into ``head.json``, and every ``checkpoint_interval`` records also
append a ``checkpoint`` record: see :mod:`jhansi.ledger.checkpoint` for why.

**Torn writes.** A record is committed only with its newline. An appender that
finds an unterminated or unparsable end (what a crash leaves) keeps those bytes in
place and appends a ``ledger.recovery`` record naming them; damage no crash makes
is tampering, and appending refuses to continue (fail closed). The rule, and how
the end is read, are in :mod:`jhansi.ledger.tail`.

**Truncation.** Before appending, the signed head is compared with the last
record: a head beyond the end of the ledger means records were cut off, and
appending refuses (see :mod:`jhansi.ledger.checkpoint`).

**Fault injection** for the crash tests: ``JHANSI_LEDGER_FAULT`` (read by
:meth:`Ledger.open`; the constructor takes ``fault=``) names a point at which
the appending process kills itself with SIGKILL: see :data:`FAULT_POINTS`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from jhansi.errors import LedgerError
from jhansi.ledger.blobs import BlobStore, fsync_dir, write_new_file
from jhansi.ledger.checkpoint import (
    MAC_MEMBER,
    KeyFileSigner,
    SignedHead,
    Signer,
    checkpoint_body,
    merge_ranges,
    sign_head,
)
from jhansi.ledger.keyguard import KeyGuard
from jhansi.ledger.layout import (
    BLOBS_DIR,
    HEAD_FILE,
    LEDGER_FILE,
    LOCK_FILE,
    LedgerLayout,
    follow_directory,
    hint_for,
    not_a_link,
    resolve_directory,
)
from jhansi.ledger.record import (
    CHECKPOINT,
    EXEC_KINDS,
    GENESIS,
    RECOVERY,
    RESERVED_KINDS,
    ZERO_HASH,
    Digest,
    LedgerId,
    Record,
    blob_digest,
    make_record,
)
from jhansi.ledger.tail import (
    MAX_RECORD_BYTES,
    TORN_MARKER,
    Tail,
    read_genesis_id,
    read_tail,
    records_after,
)
from jhansi.paths import Paths

if TYPE_CHECKING:
    from jhansi.config import Settings

MIN_FREE_BYTES: Final = 4 << 20

CHECKPOINT_INTERVAL: Final = 100
"""At most one ``checkpoint`` record per this many records (the signed head is per run)."""

FAULT_ENV: Final = "JHANSI_LEDGER_FAULT"
FAULT_POINTS: Final = frozenset(
    {
        "after-blob",  # a blob is durable, the record referencing it is not written
        "mid-line",  # half a record line is written
        "after-write-before-fsync",  # the whole line is written, not yet fsynced
        "mid-recovery",  # the torn marker and half a recovery record are written
        "before-head",  # checkpoint(): any checkpoint record is durable, head.json not updated
    }
)


def _die() -> None:
    """Die the way a crash does: no cleanup, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # pragma: no cover - SIGKILL does not return


def _write_probe(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, b"jhansi ledger preflight\n")
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Ledger:
    """One ledger directory, opened for appending.

    Cheap to construct: nothing is read, created or locked until
    :meth:`preflight`, :meth:`append` or :meth:`checkpoint`. One instance may be
    shared by threads; any number of processes may append at once.
    """

    def __init__(
        self,
        layout: LedgerLayout,
        *,
        signer: Signer,
        actor: Mapping[str, Any] | None = None,
        checkpoint_interval: int = CHECKPOINT_INTERVAL,
        fault: str | None = None,
    ) -> None:
        if checkpoint_interval < 1:
            raise ValueError("checkpoint_interval is at least 1")
        if fault is not None and fault not in FAULT_POINTS:
            raise LedgerError(
                f"{FAULT_ENV}={fault!r} is not a fault injection point",
                hint="One of: " + ", ".join(sorted(FAULT_POINTS)) + " (tests only).",
            )
        self.layout = layout
        self.blobs = BlobStore(layout.blobs_dir)
        self._signer = signer
        self._keys = KeyGuard(signer, layout)
        self._actor = dict(actor) if actor is not None else None
        self._fault_point = fault
        self._interval = checkpoint_interval
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._fd_ino = -1
        self._tail_cache: Tail | None = None
        self._ledger_id: LedgerId | None = None
        self._head_stat: tuple[int, int, int] | None = None
        self._head: SignedHead | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        paths: Paths,
        signer: Signer | None = None,
        environ: Mapping[str, str] | None = None,
        checkpoint_interval: int = CHECKPOINT_INTERVAL,
    ) -> Ledger:
        """The ledger in ``directory``, signing with the user's key from ``paths``."""
        from jhansi.ledger.identity import actor_identity

        env = os.environ if environ is None else environ
        return cls(
            LedgerLayout(follow_directory(directory)),
            signer=signer or KeyFileSigner.for_paths(paths),
            actor=actor_identity(env),
            checkpoint_interval=checkpoint_interval,
            fault=env.get(FAULT_ENV) or None,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        paths: Paths,
        signer: Signer | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Ledger:
        """The ledger the settings name (``[ledger] path``, else the data directory's)."""
        return cls.open(
            resolve_directory(settings, paths), paths=paths, signer=signer, environ=environ
        )

    @property
    def directory(self) -> Path:
        """The ledger directory."""
        return self.layout.directory

    # -- public operations --------------------------------------------------------------

    def preflight(self) -> None:
        """Make sure a run can be recorded; raise :class:`LedgerError` (reason and fix) if not.

        Refuses a network file system, creates the directory and the ledger if
        needed, proves the directory and the blob store writable with a probe
        file, checks free space, loads (or creates) the signing key, and checks
        the end of the ledger against the signed head. A torn last line is
        recovered here already.
        """
        directory = self.directory
        from jhansi.ledger.fsinfo import filesystem

        network = filesystem(directory).network
        if network:
            raise LedgerError(
                f"the ledger {directory} is on a network file system ({network}): locking, "
                "appending and fsync there cannot be relied on",
                hint="Point the ledger at a local disk: --ledger DIR, JHANSI_LEDGER, "
                "or [ledger] path.",
            )
        self._ensure_directory()
        for name in (LEDGER_FILE, HEAD_FILE, LOCK_FILE, BLOBS_DIR):
            not_a_link(directory / name)
        for where in (directory, self.layout.blobs_dir):
            probe = where / f".preflight.{os.getpid()}.{os.urandom(4).hex()}"
            try:
                where.mkdir(mode=0o700, exist_ok=True)
                # Proves the directory writable; its durability does not matter (no fsync):
                # every record is fsynced when it is appended, before anything runs.
                _write_probe(probe)
            except OSError as exc:
                raise LedgerError(
                    f"cannot write to the ledger directory {where}: {exc.strerror or exc}",
                    hint=hint_for(exc, directory),
                ) from None
            finally:
                # On a read-only file system even unlinking a missing file is EROFS.
                with contextlib.suppress(OSError):
                    probe.unlink(missing_ok=True)
        try:
            stats = os.statvfs(directory)
        except OSError:
            stats = None
        if stats is not None and stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES:
            raise LedgerError(
                f"the disk holding the ledger {directory} is full",
                hint="Free some space, or point the ledger elsewhere "
                "(--ledger DIR, JHANSI_LEDGER, [ledger] path).",
            )
        self._keys.require()
        self._signer.prepare()
        with self._locked():
            self._prepare()

    def put_blob(self, data: bytes) -> Digest:
        """Store content the next record will reference; return its BLAKE3 (hex).

        Reference it in a body as ``{"blob": digest, ...}``.
        """
        try:
            digest = self.blobs.put(data)
        except OSError as exc:
            raise LedgerError(
                f"cannot write a blob to {self.layout.blobs_dir}: {exc.strerror or exc}",
                hint=hint_for(exc, self.directory),
            ) from None
        self._fault("after-blob")
        return digest

    def blob_ref(self, data: bytes) -> dict[str, Any]:
        """Store ``data`` (:meth:`put_blob`) and return ``{"blob": digest, "bytes": size}``."""
        return {"blob": self.put_blob(data), "bytes": len(data)}

    def get_blob(self, digest: str) -> bytes:
        """The content of a blob, checked against its name."""
        return self.blobs.get(digest)

    def append(self, kind: str, body: Mapping[str, Any]) -> Record:
        """Append one record; return it once it is on disk.

        The ledger assigns ``seq``, ``prev``, ``ledger_id``, ``time`` and the hash.
        ``body`` must hold only JSON strings, integers, booleans, null, lists and
        dicts (no floats). Raises :class:`LedgerError` if it cannot be written.
        """
        if kind in RESERVED_KINDS:
            raise ValueError(f"{kind!r} records are written by the ledger itself")
        if kind in EXEC_KINDS and not (isinstance(body.get("run_id"), str) and body["run_id"]):
            raise ValueError(f"a {kind} record needs a run_id (a non-empty string)")
        if MAC_MEMBER in body:
            raise ValueError(f"{MAC_MEMBER!r} is written by the ledger itself")
        with self._locked():
            tail = self._prepare()
            record = self._next(tail, kind, dict(body))
            self._write_record(record, tail)
        # A checkpoint follows every record a run writes; exec.start is followed by a
        # wait for the sandbox, in which loading the key costs nothing.
        self._signer.warm_up()
        return record

    def checkpoint(self) -> SignedHead:
        """Sign the current end of the ledger into ``head.json``; return the signed head.

        The signature vouches only for records jhansi wrote with this key: what
        the head before vouched for, plus each later record that carries a
        valid ``ledger_mac`` (every append makes one) or is a checkpoint signed
        with this key. Records appended by anyone else (a forged run, with the
        chain recomputed) stay outside every signature, so ``verify`` names
        them; they are never adopted. Also appends a ``checkpoint`` record when
        ``checkpoint_interval`` records have passed since the head before. Call
        it after every run: records after the signed head can be cut off unnoticed.
        """
        with self._locked():
            tail = self._prepare()
            last = tail.last
            head = self._read_head()  # _prepare checked it is there, ours and not ahead
            if head is None:  # pragma: no cover - _prepare raises first
                raise LedgerError("the signed head vanished", hint="Run `jhansi ledger verify`.")
            self._keys.check_head(head)
            needs_record = (
                last.kind != CHECKPOINT and last.seq // self._interval > head.seq // self._interval
            )
            if not needs_record and head.seq == last.seq and head.hash == last.hash:
                return head
            ranges = merge_ranges(
                head.covered,
                (r.seq for r in self._after(head.seq, tail) if self._keys.vouches(r)),
            )
            if needs_record:
                body = checkpoint_body(
                    self._signer, last.ledger_id, last.seq + 1, last.hash, ranges
                )
                last = self._next(tail, CHECKPOINT, body)
                self._write_record(last, tail)
                ranges = merge_ranges(ranges, (last.seq,))
            self._fault("before-head")
            signed = sign_head(self._signer, last.ledger_id, last.seq, last.hash, ranges)
            self._write_head(signed)
            return signed

    def head(self) -> SignedHead | None:
        """The signed head (``head.json``), or ``None`` before the ledger exists."""
        return self._read_head()

    def close(self) -> None:
        """Release the file descriptors (the ledger stays usable: they reopen on demand)."""
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None
        self._tail_cache = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _fault(self, point: str) -> None:
        if self._fault_point == point:
            _die()

    def _ensure_directory(self) -> None:
        directory = self.directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the ledger directory {directory}: {exc.strerror or exc}",
                hint=hint_for(exc, directory),
            ) from None
        if not directory.is_dir():
            raise LedgerError(
                f"the ledger path {directory} is not a directory",
                hint="Point the ledger at a directory: --ledger DIR, JHANSI_LEDGER, "
                "or [ledger] path.",
            )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            try:
                self._lock_fd = self._acquire()
            except OSError as exc:
                raise LedgerError(
                    f"cannot lock the ledger {self.layout.lock_file}: {exc.strerror or exc}",
                    hint=hint_for(exc, self.directory),
                ) from None
            try:
                yield
            except OSError as exc:
                self._tail_cache = None
                raise LedgerError(
                    f"cannot write the ledger {self.layout.ledger_file}: {exc.strerror or exc}",
                    hint=hint_for(exc, self.directory),
                ) from None
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _acquire(self) -> int:
        """flock ``lock``; if it was deleted or replaced meanwhile, lock the new one."""
        path = self.layout.lock_file
        for _ in range(10):
            if self._lock_fd is None:
                self._ensure_directory()
                not_a_link(path)
                flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                self._lock_fd = os.open(path, flags, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                same = path.stat().st_ino == os.fstat(self._lock_fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._lock_fd
            # Someone removed the lock file: a lock on the old inode excludes nobody.
            os.close(self._lock_fd)
            self._lock_fd = None
        raise OSError(errno.EAGAIN, "the lock file keeps changing")

    def _prepare(self) -> Tail:
        """Under the lock: the ledger exists, its end is sound, any torn tail is recovered."""
        if not self.layout.ledger_file.exists():
            head = self._read_head()
            if head is not None and head.seq > 1:
                # Only a crash during creation leaves a head without a ledger, and
                # that head is the first checkpoint (seq 1). This one is later.
                raise LedgerError(
                    f"the ledger file {self.layout.ledger_file} is missing, but its signed "
                    f"head (seq {head.seq}) is still there: it was deleted",
                    hint="Restore ledger.jsonl from a backup; to start a new ledger, "
                    "move the whole directory aside.",
                )
            self._keys.require()
            self._create()
        else:
            self._keys.require()
        tail = self._tail()
        self._check_head(tail)
        head = self._read_head()
        if head is not None:
            self._keys.check_head(head)
        if tail.garbage:
            tail = self._recover(tail)
        return tail

    def _create(self) -> None:
        ledger_id = LedgerId(os.urandom(16).hex())
        genesis = self._keys.make(
            ledger_id,
            0,
            ZERO_HASH,
            GENESIS,
            {
                "format": "jhansi-ledger",
                "jhansi": _version(),
                "created_by": self._actor or {},
            },
        )
        body = checkpoint_body(self._signer, ledger_id, 1, genesis.hash, ((0, 0),))
        first = make_record(
            ledger_id=ledger_id, seq=1, prev=genesis.hash, kind=CHECKPOINT, body=body
        )
        self._write_head(sign_head(self._signer, ledger_id, first.seq, first.hash, ((0, 1),)))
        tmp = self.directory / f".{LEDGER_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            write_new_file(tmp, genesis.line + b"\n" + first.line + b"\n")
            tmp.rename(self.layout.ledger_file)  # under the lock: nobody else creates it
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.directory)

    def _ledger_fd(self) -> int:
        """The ledger file opened O_APPEND, reopened if the file was replaced."""
        path = self.layout.ledger_file
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            not_a_link(path)
        ino = st.st_ino
        if self._fd is None or ino != self._fd_ino:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(path, flags, 0o600)
            self._fd_ino = os.fstat(self._fd).st_ino
            self._tail_cache = None
            self._ledger_id = None
        return self._fd

    def _tail(self) -> Tail:
        fd = self._ledger_fd()
        size = os.fstat(fd).st_size
        cached = self._tail_cache
        if cached is not None and cached.ino == self._fd_ino and cached.size == size:
            return cached
        if size == 0:
            raise LedgerError(
                f"the ledger {self.layout.ledger_file} is empty",
                hint="A ledger always holds its genesis record: it was emptied. "
                "Move the ledger directory aside to start a new one.",
            )
        tail = read_tail(fd, size, self._fd_ino)
        ledger_id = self._genesis_id(fd)
        if tail.last.ledger_id != ledger_id:
            raise LedgerError(
                f"the last record belongs to another ledger ({tail.last.ledger_id}, not "
                f"{ledger_id})",
                hint="Run `jhansi ledger verify`; to keep recording, "
                "move the ledger directory aside.",
            )
        self._tail_cache = tail
        return tail

    def _genesis_id(self, fd: int) -> LedgerId:
        if self._ledger_id is None:
            self._ledger_id = read_genesis_id(fd)
        return self._ledger_id

    def _after(self, seq: int, tail: Tail) -> list[Record]:
        """The records after ``seq`` (torn lines, already recovered, are skipped)."""
        return records_after(self._ledger_fd(), seq, tail.size)

    def _read_head(self) -> SignedHead | None:
        path = self.layout.head_file
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._head_stat, self._head = None, None
            return None
        if stat.S_ISLNK(st.st_mode):
            not_a_link(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._head_stat != key:
            try:
                self._head = SignedHead.parse(path.read_bytes())
            except ValueError as exc:
                raise LedgerError(
                    f"the signed head {path} is damaged: {exc}",
                    hint="Run `jhansi ledger verify`; to keep recording, "
                    "move the ledger directory aside.",
                ) from None
            self._head_stat = key
        return self._head

    def _check_head(self, tail: Tail) -> None:
        """Fail closed when the signed head says records were cut off."""
        head = self._read_head()
        last = tail.last
        if head is None:
            raise LedgerError(
                f"the signed head {self.layout.head_file} is missing, so records may have "
                "been cut off the end of the ledger",
                hint="Run `jhansi ledger verify` (with --anchor if you keep heads elsewhere); "
                "to keep recording, move the ledger directory aside.",
            )
        if head.ledger_id != last.ledger_id:
            raise LedgerError(
                f"the signed head {self.layout.head_file} belongs to another ledger",
                hint="Run `jhansi ledger verify`; to keep recording, "
                "move the ledger directory aside.",
            )
        if head.seq > last.seq or (head.seq == last.seq and head.hash != last.hash):
            raise LedgerError(
                f"records were cut off the ledger: the signed head is at seq {head.seq}, "
                f"the ledger ends at seq {last.seq}",
                hint="Run `jhansi ledger verify` and restore the ledger from a backup; "
                "to keep recording, move the ledger directory aside.",
            )

    def _next(self, tail: Tail, kind: str, body: dict[str, Any]) -> Record:
        last = tail.last
        record = self._keys.make(last.ledger_id, last.seq + 1, last.hash, kind, body)
        if len(record.line) > MAX_RECORD_BYTES:
            raise ValueError(
                f"a {kind} record of {len(record.line)} bytes is too large: "
                "put large content in a blob (put_blob) and reference it"
            )
        return record

    def _write(self, tail: Tail, data: bytes, *, cut_at: int | None = None) -> None:
        """Append ``data`` in one write (a loop only on a short write), then fdatasync."""
        fd = self._ledger_fd()
        if cut_at is not None:
            _write_all(fd, data[:cut_at])
            _die()
        _write_all(fd, data)
        self._fault("after-write-before-fsync")
        os.fdatasync(fd)
        tail.size += len(data)

    def _write_record(self, record: Record, tail: Tail) -> None:
        data = record.line + b"\n"
        cut = len(data) // 2 if self._fault_point == "mid-line" else None
        self._write(tail, data, cut_at=cut)
        tail.last = record

    def _recover(self, tail: Tail) -> Tail:
        """Record the torn bytes at the end, keeping them in place (see the module docstring)."""
        covered = tail.garbage
        unterminated = not covered.endswith(b"\n")
        reason = (
            "torn write: the last line had no newline (an appender died while writing)"
            if unterminated
            else "torn write: lines left unparsable by an appender that died while writing"
        )
        record = self._next(
            tail,
            RECOVERY,
            {
                "offset": tail.garbage_offset,
                "length": len(covered),
                "hash": blob_digest(covered),
                "reason": reason,
            },
        )
        data = (TORN_MARKER if unterminated else b"") + record.line + b"\n"
        cut = None
        if self._fault_point == "mid-recovery":
            cut = len(data) // 2
        self._write(tail, data, cut_at=cut)
        tail.last = record
        tail.garbage_offset = tail.size
        tail.garbage = b""
        return tail

    def _write_head(self, head: SignedHead) -> None:
        tmp = self.directory / f".{HEAD_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            write_new_file(tmp, head.to_bytes())
            tmp.replace(self.layout.head_file)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.directory)
        self._head_stat = None


def _version() -> str:
    from jhansi._version import __version__

    return __version__


# LedgerLayout and resolve_directory are imported from here by the CLI.
__all__ = [
    "CHECKPOINT_INTERVAL",
    "FAULT_ENV",
    "FAULT_POINTS",
    "Ledger",
]
