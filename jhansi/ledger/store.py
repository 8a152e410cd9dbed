"""Appending to the ledger: locking, durability, torn writes, preflight.

A ledger is a directory (mode 0700)::

    ledger.jsonl     the records, one canonical JSON line each        (0600)
    head.json        the signed head: seq and hash of a recent record (0600)
    lock             what appenders flock                             (0600)
    blobs/ab/cd…     content the records reference                    (0600, dirs 0700)

and the signing key lives in ``<data dir>/keys/ledger-ed25519.pem`` (see
:mod:`jhansi.ledger.checkpoint`).

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

**Torn writes.** A record is committed only with its newline. An appender
that dies mid-write leaves an unterminated last line. The next appender never
drops it: the bytes stay where they are, and it appends a ``ledger.recovery``
record whose body names them — ``offset``, ``length``, ``hash`` (plain BLAKE3
of those bytes) and ``reason``. When the covered bytes lack a final newline,
the appender first writes :data:`TORN_MARKER` (``" (torn)\\n"``) in the same
``write`` call as the recovery record: it terminates the torn line and
guarantees that it can never parse as a record, even if all that was missing
was its newline. The documented rule the verifier applies: lines that are not
records are allowed only directly before a ``ledger.recovery`` record whose
``offset``/``length``/``hash`` cover exactly them (plus the marker). A second
crash during recovery only adds more torn bytes to the next recovery. What a
crash cannot produce — a newline-terminated line that is JSON but not a valid
record, or more than :data:`MAX_GARBAGE` bytes of damage — is tampering, and
appending refuses to continue (fail closed).

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
import hmac
import os
import signal
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from jhansi.errors import LedgerError
from jhansi.ledger.blobs import BlobStore, fsync_dir, write_new_file
from jhansi.ledger.checkpoint import (
    MAC_MEMBER,
    KeyFileSigner,
    SignedHead,
    Signer,
    check_checkpoint,
    checkpoint_body,
    merge_ranges,
    record_mac,
    sign_head,
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
    RecordError,
    blob_digest,
    canonical,
    make_record,
    parse_line,
    utc_now,
)
from jhansi.paths import Paths

if TYPE_CHECKING:
    from jhansi.config import Settings

LEDGER_FILE: Final = "ledger.jsonl"
HEAD_FILE: Final = "head.json"
LOCK_FILE: Final = "lock"
BLOBS_DIR: Final = "blobs"

TORN_MARKER: Final = b" (torn)\n"
"""Written after unterminated torn bytes, in the same write as the recovery record."""
MAX_RECORD_BYTES: Final = 1 << 20
"""A record line larger than this is refused: put content in a blob."""
MAX_GARBAGE: Final = 1 << 20
"""More damage than this at the end of the ledger is not a torn write."""
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


@dataclass(frozen=True, slots=True)
class LedgerLayout:
    """The files of a ledger directory."""

    directory: Path

    @property
    def ledger_file(self) -> Path:
        """The records."""
        return self.directory / LEDGER_FILE

    @property
    def head_file(self) -> Path:
        """The latest signed checkpoint."""
        return self.directory / HEAD_FILE

    @property
    def lock_file(self) -> Path:
        """What appenders lock."""
        return self.directory / LOCK_FILE

    @property
    def blobs_dir(self) -> Path:
        """The content-addressed store."""
        return self.directory / BLOBS_DIR


def default_directory(paths: Paths) -> Path:
    """The ledger when nothing says otherwise: ``<data dir>/ledger``."""
    return paths.data / "ledger"


def resolve_directory(
    settings: Settings | None, paths: Paths, override: Path | None = None
) -> Path:
    """``--ledger DIR``, else ``[ledger] path`` / ``JHANSI_LEDGER``, else the default."""
    if override is not None:
        return override.expanduser().absolute()
    if settings is not None and settings.ledger.path:
        return Path(settings.ledger.path)
    return default_directory(paths)


def follow_directory(directory: Path) -> Path:
    """The ledger directory with a symbolic link to it resolved, once, for the whole process.

    A user may keep the ledger on another disk through a link; a link someone
    else planted must not redirect the ledger. So the link itself must belong
    to this user (or root) and sit in a directory nobody else can write to;
    otherwise :class:`LedgerError`. The resolved path is what jhansi then uses,
    reports and records. Links *inside* the directory are never followed.
    """
    path = directory.absolute()
    try:
        st = os.lstat(path)
    except OSError:
        return path  # created later, by preflight
    if not stat.S_ISLNK(st.st_mode):
        return path
    try:
        parent = path.parent.stat()
    except OSError:
        parent = None
    others_write = parent is not None and parent.st_mode & 0o022 and not parent.st_mode & 0o1000
    if st.st_uid not in (os.getuid(), 0) or others_write:
        raise LedgerError(
            f"the ledger directory {path} is a symbolic link that another user could have "
            "placed (it is not yours, or its directory is writable by others)",
            hint="Point the ledger at the real directory (--ledger DIR, JHANSI_LEDGER, "
            "[ledger] path), or replace the link with one of your own.",
        )
    return Path(os.path.realpath(path))


def _not_a_link(path: Path) -> None:
    """Refuse a symbolic link where the ledger keeps a file: it would redirect the writes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise LedgerError(
            f"{path} is a symbolic link: jhansi never reads or appends to a ledger file "
            "through a link (someone could have planted it)",
            hint=f"Replace the link with the file it points to (after checking it), or move "
            f"{path.parent} aside to start a new ledger.",
        )


def _die() -> None:
    """Die the way a crash does: no cleanup, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # pragma: no cover - SIGKILL does not return


def _hint_for(exc: OSError, directory: Path) -> str:
    code = exc.errno
    elsewhere = (
        "or point the ledger at a writable local directory "
        "(--ledger DIR, JHANSI_LEDGER, or [ledger] path)."
    )
    if code == errno.EROFS:
        return f"{directory} is on a read-only file system: remount it read-write, {elsewhere}"
    if code in (errno.EACCES, errno.EPERM):
        return f"Give your user write access to {directory}, {elsewhere}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"Free some space on the disk holding {directory}, {elsewhere}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"A file is in the way of the directory {directory}: move it, {elsewhere}"
    return f"Check {directory}, {elsewhere}"


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


@dataclass(slots=True)
class _Tail:
    """The end of ``ledger.jsonl`` as the last locked reader saw it."""

    ino: int
    size: int
    last: Record
    garbage_offset: int
    garbage: bytes


def find_last_record(data: bytes, *, at_file_start: bool) -> tuple[Record, int] | None:
    """The last valid record in ``data`` (the end of a file) and the end of its line.

    ``None`` means the window does not reach back far enough. Bytes after that
    line are what a crash left (torn or unparsable lines); a newline-terminated
    line that is JSON but not a valid record is damage no crash makes, and
    raises.
    """
    end = len(data)
    if data.endswith(b"\n"):
        line_end = end
    else:
        newline = data.rfind(b"\n")
        if newline < 0:
            if at_file_start:
                raise LedgerError(
                    "the ledger holds no complete record",
                    hint="Move the ledger directory aside; jhansi starts a new one.",
                )
            return None
        line_end = newline + 1
    while line_end > 0:
        newline = data.rfind(b"\n", 0, line_end - 1)
        if newline < 0 and not at_file_start:
            return None
        line_start = newline + 1
        raw = data[line_start : line_end - 1]
        try:
            return parse_line(raw), line_end
        except RecordError as exc:
            if exc.kind not in ("not-json", "not-utf8"):
                raise LedgerError(
                    f"the ledger's last record is damaged ({exc.kind}: {exc}); "
                    "that is not what a crash leaves",
                    hint="Run `jhansi ledger verify` to see what changed; to keep recording, "
                    "move the ledger directory aside (jhansi starts a new one).",
                ) from None
        if end - line_start > MAX_GARBAGE:
            break
        line_end = line_start
    raise LedgerError(
        "the end of the ledger is damaged beyond a torn write (no valid record near the end)",
        hint="Run `jhansi ledger verify`; to keep recording, move the ledger directory aside.",
    )


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
        self._actor = dict(actor) if actor is not None else None
        self._fault_point = fault
        self._interval = checkpoint_interval
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._fd_ino = -1
        self._tail_cache: _Tail | None = None
        self._ledger_id: LedgerId | None = None
        self._head_stat: tuple[int, int, int] | None = None
        self._head: SignedHead | None = None
        self._kid: str | None = None
        self._mac_key: bytes | None = None
        self._public_hex: str | None = None

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
            _not_a_link(directory / name)
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
                    hint=_hint_for(exc, directory),
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
        self._require_key()
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
                hint=_hint_for(exc, self.directory),
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
            self._check_key(head)
            needs_record = (
                last.kind != CHECKPOINT and last.seq // self._interval > head.seq // self._interval
            )
            if not needs_record and head.seq == last.seq and head.hash == last.hash:
                return head
            ranges = merge_ranges(
                head.covered,
                (r.seq for r in self._records_after(head.seq, tail) if self._vouches(r)),
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

    def _key_hint(self) -> str:
        where = getattr(self._signer, "path", "the signing key")
        return (
            f"Restore {where} from a backup; or start a new ledger: move {self.directory} "
            "aside, or point --ledger / JHANSI_LEDGER elsewhere (its records stay checkable "
            "with `jhansi ledger verify --ledger DIR --key OLDKEY`)."
        )

    def _require_key(self) -> None:
        """An existing ledger never gets a new key: a missing key file is restored, not made."""
        if self._signer.has_key():
            return
        if self.layout.head_file.exists() or self.layout.ledger_file.exists():
            where = getattr(self._signer, "path", "the signing key")
            raise LedgerError(
                f"the ledger signing key {where} is missing, but the ledger {self.directory} "
                "exists: appending with a new key would hide that",
                hint=self._key_hint(),
            )

    def _check_key(self, head: SignedHead) -> None:
        """Refuse to append to a ledger whose head another key signed (a replaced key file)."""
        if head.kid is not None:
            if self._kid is None:
                self._kid = self._signer.key_id()
            same = hmac.compare_digest(head.kid, self._kid)
        else:
            # A legacy head without a key id: compare the public keys (loads cryptography).
            if self._public_hex is None:
                self._public_hex = self._signer.public_key().hex()
            same = head.key == self._public_hex
        if not same:
            raise LedgerError(
                f"the ledger {self.directory} was signed by another key "
                f"({head.key[:16]}…) than this user's signing key: it was replaced, or "
                "this ledger is not yours",
                hint=self._key_hint(),
            )

    def _macs(self) -> bytes:
        if self._mac_key is None:
            self._mac_key = self._signer.mac_key()
        return self._mac_key

    def _vouches(self, record: Record) -> bool:
        """Whether ``record`` was written by jhansi with this key (see :meth:`checkpoint`)."""
        body = dict(record.body)
        if record.kind == CHECKPOINT:
            if self._public_hex is None:
                self._public_hex = self._signer.public_key().hex()
            return body.get("key") == self._public_hex and (
                check_checkpoint(record.ledger_id, record.seq, record.prev, body) is None
            )
        mac = body.pop(MAC_MEMBER, None)
        if not isinstance(mac, str):
            return False
        unhashed = {
            "body": body,
            "kind": record.kind,
            "ledger_id": record.ledger_id,
            "prev": record.prev,
            "seq": record.seq,
            "time": record.time,
            "v": record.v,
        }
        return hmac.compare_digest(mac, record_mac(self._macs(), canonical(unhashed)))

    def _records_after(self, seq: int, tail: _Tail) -> list[Record]:
        """The records after ``seq`` (torn lines, already recovered, are skipped)."""
        fd = self._ledger_fd()
        end = tail.size
        window = 1 << 16
        while True:
            start = max(0, end - window)
            data = os.pread(fd, end - start, start)
            if start > 0:
                data = data[data.find(b"\n") + 1 :]
            found: list[Record] = []
            for raw in data.split(b"\n"):
                if raw:
                    with contextlib.suppress(RecordError):
                        found.append(parse_line(raw))
            if start == 0 or (found and found[0].seq <= seq):
                return [r for r in found if r.seq > seq]
            window *= 4

    def _ensure_directory(self) -> None:
        directory = self.directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the ledger directory {directory}: {exc.strerror or exc}",
                hint=_hint_for(exc, directory),
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
                    hint=_hint_for(exc, self.directory),
                ) from None
            try:
                yield
            except OSError as exc:
                self._tail_cache = None
                raise LedgerError(
                    f"cannot write the ledger {self.layout.ledger_file}: {exc.strerror or exc}",
                    hint=_hint_for(exc, self.directory),
                ) from None
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _acquire(self) -> int:
        """flock ``lock``; if it was deleted or replaced meanwhile, lock the new one."""
        path = self.layout.lock_file
        for _ in range(10):
            if self._lock_fd is None:
                self._ensure_directory()
                _not_a_link(path)
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

    def _prepare(self) -> _Tail:
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
            self._require_key()
            self._create()
        else:
            self._require_key()
        tail = self._tail()
        self._check_head(tail)
        head = self._read_head()
        if head is not None:
            self._check_key(head)
        if tail.garbage:
            tail = self._recover(tail)
        return tail

    def _create(self) -> None:
        ledger_id = LedgerId(os.urandom(16).hex())
        genesis = self._make(
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
            _not_a_link(path)
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

    def _tail(self) -> _Tail:
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
        window = min(size, 1 << 16)
        limit = MAX_RECORD_BYTES + MAX_GARBAGE + 2
        while True:
            start = size - window
            data = os.pread(fd, window, start)
            found = find_last_record(data, at_file_start=start == 0)
            if found is not None:
                break
            if window >= limit:
                raise LedgerError(
                    "the end of the ledger is damaged beyond a torn write",
                    hint="Run `jhansi ledger verify`; to keep recording, "
                    "move the ledger directory aside.",
                )
            window = min(size, window * 4)
        last, line_end = found
        ledger_id = self._genesis_id(fd)
        if last.ledger_id != ledger_id:
            raise LedgerError(
                f"the last record belongs to another ledger ({last.ledger_id}, not {ledger_id})",
                hint="Run `jhansi ledger verify`; to keep recording, "
                "move the ledger directory aside.",
            )
        garbage_offset = start + line_end
        tail = _Tail(
            ino=self._fd_ino,
            size=size,
            last=last,
            garbage_offset=garbage_offset,
            garbage=data[line_end:],
        )
        self._tail_cache = tail
        return tail

    def _genesis_id(self, fd: int) -> LedgerId:
        if self._ledger_id is None:
            # The genesis record is a few hundred bytes: read a page, and up to the
            # longest record only if its line is longer (reading 1 MiB costs ~1 ms).
            first = os.pread(fd, 4096, 0)
            if b"\n" not in first:
                first = os.pread(fd, MAX_RECORD_BYTES + 1, 0)
            newline = first.find(b"\n")
            try:
                genesis = parse_line(first[:newline]) if newline >= 0 else None
            except RecordError:
                genesis = None
            if genesis is None or genesis.kind != GENESIS or genesis.seq != 0:
                raise LedgerError(
                    "the ledger's first line is not a valid genesis record",
                    hint="Run `jhansi ledger verify`; to keep recording, "
                    "move the ledger directory aside.",
                )
            self._ledger_id = genesis.ledger_id
        return self._ledger_id

    def _read_head(self) -> SignedHead | None:
        path = self.layout.head_file
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._head_stat, self._head = None, None
            return None
        if stat.S_ISLNK(st.st_mode):
            _not_a_link(path)
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

    def _check_head(self, tail: _Tail) -> None:
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

    def _make(
        self, ledger_id: LedgerId, seq: int, prev: Digest, kind: str, body: dict[str, Any]
    ) -> Record:
        """A record authenticated with this key (``ledger_mac``; a checkpoint is signed)."""
        time = utc_now()
        if kind != CHECKPOINT:
            unhashed = {
                "body": body,
                "kind": kind,
                "ledger_id": ledger_id,
                "prev": prev,
                "seq": seq,
                "time": time,
                "v": 1,
            }
            body = {**body, MAC_MEMBER: record_mac(self._macs(), canonical(unhashed))}
        return make_record(ledger_id=ledger_id, seq=seq, prev=prev, kind=kind, body=body, time=time)

    def _next(self, tail: _Tail, kind: str, body: dict[str, Any]) -> Record:
        last = tail.last
        record = self._make(last.ledger_id, last.seq + 1, last.hash, kind, body)
        if len(record.line) > MAX_RECORD_BYTES:
            raise ValueError(
                f"a {kind} record of {len(record.line)} bytes is too large: "
                "put large content in a blob (put_blob) and reference it"
            )
        return record

    def _write(self, tail: _Tail, data: bytes, *, cut_at: int | None = None) -> None:
        """Append ``data`` in one write (a loop only on a short write), then fdatasync."""
        fd = self._ledger_fd()
        if cut_at is not None:
            _write_all(fd, data[:cut_at])
            _die()
        _write_all(fd, data)
        self._fault("after-write-before-fsync")
        os.fdatasync(fd)
        tail.size += len(data)

    def _write_record(self, record: Record, tail: _Tail) -> None:
        data = record.line + b"\n"
        cut = len(data) // 2 if self._fault_point == "mid-line" else None
        self._write(tail, data, cut_at=cut)
        tail.last = record

    def _recover(self, tail: _Tail) -> _Tail:
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
