"""``jhansi ledger verify``: prove the ledger is what was written, or say where it is not.

One pass over ``ledger.jsonl``, line by line, checks that every line is UTF-8
canonical JSON (re-encoding gives the same bytes) with the record schema and a
matching hash; that all records carry the genesis record's ledger id; that
``seq`` is contiguous and ``prev`` chains; every checkpoint signature (against
pinned keys when given); that the ledger still reaches the signed head
(``head.json``) and every ``--anchor``, so records cut off the end are found;
that lines which are not records are exactly the torn writes a
``ledger.recovery`` record names; that every referenced blob is present and
matches its hash; and that runs pair up (a start without an end is a crashed
run: a warning).

Problems are :class:`Problem` values with a ``kind``, a message and the line
(1-based) and seq where known; errors mean the ledger does not verify,
warnings do not. Error kinds: ``not-utf8``, ``not-json``, ``not-canonical``,
``bad-schema``, ``bad-hash``, ``bad-genesis``, ``foreign-record``,
``missing-records``, ``out-of-order``, ``duplicate-record``, ``broken-chain``,
``bad-checkpoint``, ``bad-signature``, ``untrusted-key``, ``bad-recovery``,
``bad-body``, ``duplicate-run``, ``unpaired-end``, ``head-missing``,
``head-invalid``, ``head-mismatch``, ``truncated``, ``anchor-mismatch``,
``blob-missing``, ``blob-altered``, ``unsigned-records`` (records no signature
covers, followed by signed ones), ``symlink``. Warning kinds: ``recovered``,
``torn-tail``, ``crashed-run``, ``unsigned-tail``, ``key-unpinned``.

Problems are collected and reported as :mod:`jhansi.ledger.findings` describes.

Speed matters (a ledger grows by three records a run). Verification runs in
two stages. Stage one (:mod:`jhansi.ledger.scan`), in worker processes for large
ledgers, checks each chunk of whole lines on its own and sums up the usual chunk
in a :class:`~jhansi.ledger.scan.ChunkSummary`. Stage two, here, in order, joins
each summary to what came before; a chunk with anything unusual in it (any
finding at all, a recovery, a run that pairs with one outside it in a way a
summary cannot tell) is walked record by record from
:func:`~jhansi.ledger.scan.scan_chunk`'s per-line results instead.
``bench/ledger.py`` measures it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from jhansi.errors import LedgerError
from jhansi.ledger.checkpoint import Ranges, SignedHead, merge_ranges
from jhansi.ledger.findings import Findings, Problem, VerifyReport
from jhansi.ledger.layout import LedgerLayout
from jhansi.ledger.record import (
    CHECKPOINT,
    EXEC_END,
    EXEC_KINDS,
    EXEC_START,
    GENESIS,
    RECOVERY,
    ZERO_HASH,
)
from jhansi.ledger.scan import ChunkReader, ChunkSummary, auto_workers, scan_chunk, stage_one
from jhansi.ledger.tail import TORN_MARKER


@dataclass(slots=True)
class _Target:
    """A (seq, hash) the ledger must still contain: the signed head or an anchor."""

    seq: int
    hash: str
    label: str
    found: bool = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Millions of short-lived acyclic dicts: garbage collection only costs time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _in_file_order(problem: Problem) -> tuple[bool, int]:
    return (problem.line is None, problem.line or 0)


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` → (seq, hash); ``ValueError`` with the reason otherwise."""
    seq_text, sep, digest = text.strip().partition(":")
    digest = digest.strip().lower()
    if not sep or not seq_text.isdigit() or len(digest) != 64:
        raise ValueError(f"{text!r} is not SEQ:HASH (a record number and 64 hex digits)")
    try:
        bytes.fromhex(digest)
    except ValueError:
        raise ValueError(f"{text!r}: the hash is not hex") from None
    return int(seq_text), digest


def _read_head(path: Path, findings: Findings) -> SignedHead | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        findings.error(
            "head-missing",
            f"{path.name} is missing: it is written before the ledger is created and never "
            "removed, so it was deleted (records may also have been cut off)",
        )
        return None
    except OSError as exc:
        findings.error("head-invalid", f"cannot read {path.name}: {exc.strerror or exc}")
        return None
    try:
        return SignedHead.parse(raw)
    except ValueError as exc:
        findings.error("head-invalid", f"{path.name}: {exc}")
        return None


def _covers(body: dict[str, Any], start: int, garbage: bytes) -> bool:
    """Whether a recovery ``body`` names exactly the ``garbage`` bytes found at ``start``."""
    length, digest = body.get("length"), body.get("hash")
    if body.get("offset") != start or type(length) is not int or not isinstance(digest, str):
        return False
    if len(garbage) == length:
        covered = garbage
    elif len(garbage) == length + len(TORN_MARKER) and garbage.endswith(TORN_MARKER):
        covered = garbage[:length]
    else:
        return False
    return blake3.blake3(covered).hexdigest() == digest


def unsigned_ranges(signed: Ranges, last_seq: int) -> Ranges:
    """The seq ranges in ``0..last_seq`` that none of the ``signed`` ranges covers."""
    gaps: list[tuple[int, int]] = []
    nxt = 0
    for start, end in merge_ranges(signed, ()):
        if start > last_seq:
            break
        if start > nxt:
            gaps.append((nxt, start - 1))
        nxt = max(nxt, end + 1)
    if nxt <= last_seq:
        gaps.append((nxt, last_seq))
    return tuple(gaps)


def verify_ledger(
    directory: Path,
    *,
    anchors: Sequence[tuple[int, str]] = (),
    trusted_keys: Collection[str] | None = None,
    check_blobs: bool = True,
    workers: int | None = None,
    strict: bool = False,
) -> VerifyReport:
    """Verify the ledger in ``directory``.

    ``trusted_keys`` (hex): when given, every checkpoint must be signed by one
    of them; ``None`` accepts any valid signature (and warns). ``workers``:
    processes for stage one (default: one per CPU, up to four, for ledgers
    over 16 MiB; one otherwise). ``strict``: records at the end that no
    signature covers yet are an error, not a warning. Raises :class:`LedgerError`
    only when there is no ledger to verify.

    The signature rule: a record is authenticated when a valid signature (a
    checkpoint record or the head) names it in its ``ranges``; records no
    signature covers are reported by seq range, as an error when signed
    records follow them (jhansi never leaves such a gap), as a warning at the
    end (a run in progress or crashed), unless ``strict``.
    """
    from concurrent.futures.process import BrokenProcessPool

    def run(workers: int | None) -> VerifyReport:
        return _verify(
            directory,
            anchors=anchors,
            trusted_keys=trusted_keys,
            check_blobs=check_blobs,
            workers=workers,
            strict=strict,
        )

    try:
        return run(workers)
    except (BrokenProcessPool, OSError):
        if workers == 1:
            raise
        # No processes here (a sandbox without /dev/shm, a worker killed for memory):
        # the same verification, in this process only.
        return run(1)


def _verify(
    directory: Path,
    *,
    anchors: Sequence[tuple[int, str]],
    trusted_keys: Collection[str] | None,
    check_blobs: bool,
    workers: int | None,
    strict: bool,
) -> VerifyReport:
    started = time.perf_counter()
    layout = LedgerLayout(directory)
    path = layout.ledger_file
    if not path.is_file():
        raise LedgerError(
            f"no ledger at {directory} (no {path.name})",
            hint="Check the path (--ledger DIR, JHANSI_LEDGER, [ledger] path); "
            "a ledger is created by the first `jhansi run`.",
        )
    findings = Findings()
    error, warn = findings.error, findings.warn
    for linked in (path, layout.head_file):
        if linked.is_symlink():
            error("symlink", f"{linked.name} is a symbolic link (to {linked.readlink()})")
    trusted = frozenset(k.lower() for k in trusted_keys) if trusted_keys is not None else None

    head = _read_head(layout.head_file, findings)
    targets: dict[int, list[_Target]] = {}
    if head is not None:
        targets.setdefault(head.seq, []).append(_Target(head.seq, head.hash, "head"))
    for seq, digest in anchors:
        targets.setdefault(seq, []).append(_Target(seq, digest, f"anchor {seq}:{digest}"))

    ledger_id: str | None = None
    expected = 0  # the next seq; only ever grows, so the last seq is expected - 1
    last_hash: str = ZERO_HASH
    gap: tuple[int, int, int] | None = None  # (line, seq expected, seq found), decided next
    garbage: list[bytes] = []  # lines that are not records, since the last record
    garbage_start = 0
    garbage_problem: Problem | None = None
    unterminated = False
    open_runs: dict[str, tuple[int, int]] = {}
    refs: set[bytes] = set()
    keys: set[str] = set()
    records = runs = denied = checkpoints = recoveries = 0
    signed: list[tuple[int, int]] = []  # the seq ranges valid signatures vouch for
    last_checkpoint: int | None = None
    lineno = 0
    offset = 0  # of the next line

    def gap_missing(found_at: tuple[int, int, int]) -> None:
        line, want, got = found_at
        error(
            "missing-records",
            f"expected seq {want}, found {got}: {got - want} record(s) deleted",
            line,
            got,
        )

    def walk(results: list[tuple[Any, ...]]) -> None:
        """Stage two, record by record: everything that relates lines to each other."""
        nonlocal lineno, offset, ledger_id, expected, last_hash, gap, garbage, garbage_start
        nonlocal garbage_problem, records, runs, denied, checkpoints, recoveries, last_checkpoint
        for item in results:
            lineno += 1
            line_start = offset
            offset += item[0] + 1
            seq = item[1]
            if seq is None:  # not a valid record
                _, _, problem_kind, message, claimed_seq, claimed_hash, claimed_id, raw = item
                if raw is not None:  # maybe a torn write: a recovery record must follow
                    if not garbage:
                        garbage_start = line_start
                        garbage_problem = Problem(
                            problem_kind,
                            f"{message}; no ledger.recovery record accounts for this line",
                            lineno,
                        )
                    garbage.append(raw + b"\n")
                    continue
                error(
                    problem_kind,
                    message,
                    lineno,
                    claimed_seq if type(claimed_seq) is int else None,
                )
                # Follow the chain with what the damaged record claims, so that
                # one damaged record is reported once.
                if (
                    type(claimed_seq) is int
                    and claimed_seq >= expected
                    and isinstance(claimed_hash, str)
                    and claimed_id == ledger_id
                ):
                    expected = claimed_seq + 1
                    last_hash = claimed_hash
                continue

            _, seq, kind, record_id, prev, digest, extra, found_refs, sig_problem = item
            records += 1

            if garbage or kind == RECOVERY:
                if not garbage:
                    error(
                        "bad-recovery",
                        "recovers nothing: no torn bytes precede it",
                        lineno,
                        seq,
                    )
                elif kind == RECOVERY and _covers(extra, garbage_start, b"".join(garbage)):
                    recoveries += 1
                    warn(
                        "recovered",
                        f"{sum(map(len, garbage))} byte(s) at offset {garbage_start} left "
                        "by a write that did not finish, kept in place and recorded here",
                        lineno,
                        seq,
                    )
                else:
                    if garbage_problem is not None:
                        error(
                            garbage_problem.kind,
                            garbage_problem.message,
                            garbage_problem.line,
                        )
                    if kind == RECOVERY:
                        error("bad-recovery", "does not match the bytes before it", lineno, seq)
                garbage = []

            if record_id != ledger_id:
                if ledger_id is not None:
                    error(
                        "foreign-record",
                        f"belongs to ledger {record_id}, not {ledger_id}: spliced in",
                        lineno,
                        seq,
                    )
                    continue
                ledger_id = record_id
                if lineno != 1 or kind != GENESIS or seq != 0 or prev != ZERO_HASH:
                    error(
                        "bad-genesis",
                        "the first line must be the ledger.genesis record (seq 0, prev zeros)",
                        lineno,
                        seq,
                    )
            elif kind == GENESIS:
                error("bad-genesis", "a second genesis record", lineno, seq)

            at_gap = False
            if seq != expected or gap is not None or prev != last_hash:
                if seq == expected:
                    if gap is not None:
                        gap_missing(gap)
                        gap = None
                    if prev != last_hash:
                        error(
                            "broken-chain",
                            "prev is not the hash of the record before it: that record "
                            "was changed (its hash recomputed) or replaced",
                            lineno,
                            seq,
                        )
                elif seq > expected:
                    if gap is not None:
                        gap_missing(gap)
                    gap = (lineno, expected, seq)
                    at_gap = True
                else:
                    if gap is not None and seq == gap[1]:
                        error(
                            "out-of-order",
                            f"seq {gap[2]} comes before seq {seq} (line {lineno}): records swapped",
                            gap[0],
                            gap[2],
                        )
                        gap = None
                    elif seq == expected - 1 and digest == last_hash:
                        error("duplicate-record", f"a second copy of seq {seq}", lineno, seq)
                    else:
                        error(
                            "out-of-order",
                            f"seq {seq} comes after seq {expected - 1}: moved or duplicated",
                            lineno,
                            seq,
                        )
                    continue
            expected = seq + 1
            last_hash = digest

            if seq in targets:
                for target in targets[seq]:
                    target.found = True
                    if target.hash != digest:
                        error(
                            "head-mismatch" if target.label == "head" else "anchor-mismatch",
                            f"the {target.label} names hash {target.hash}, the ledger has {digest}",
                            lineno,
                            seq,
                        )

            if kind in EXEC_KINDS:
                run_id = extra
                if type(run_id) is not str or not run_id:
                    error("bad-body", f"a {kind} record needs a run_id string", lineno, seq)
                elif at_gap:
                    pass  # its partner may be what is missing: the gap is the finding
                elif kind == EXEC_START:
                    if run_id in open_runs:
                        error("duplicate-run", f"run {run_id} starts twice", lineno, seq)
                    open_runs[run_id] = (lineno, seq)
                    runs += 1
                elif kind == EXEC_END:
                    if open_runs.pop(run_id, None) is None:
                        error(
                            "unpaired-end",
                            f"run {run_id} ends but never started (its exec.start is missing)",
                            lineno,
                            seq,
                        )
                else:
                    denied += 1
            elif kind == CHECKPOINT:
                checkpoints += 1
                last_checkpoint = seq
                if sig_problem is not None:
                    error(sig_problem[0], sig_problem[1], lineno, seq)
                else:
                    signer_key, vouched = extra
                    keys.add(signer_key)
                    if trusted is not None and signer_key not in trusted:
                        error(
                            "untrusted-key",
                            f"signed by {signer_key}, which is not a trusted key "
                            "(pass it with --key if you trust it)",
                            lineno,
                            seq,
                        )
                    else:
                        signed.extend(vouched)
                        signed.append((seq, seq))  # a valid signature speaks for itself
            if found_refs is not None:
                refs.update(found_refs)

    def join(summary: ChunkSummary, size: int) -> bool:
        """Stage two for a whole chunk that stage one summarised: what :func:`walk` would do
        with its records, or ``False`` (nothing changed) when the chunk does not simply
        continue the ledger so far (then it is walked record by record)."""
        nonlocal lineno, offset, ledger_id, expected, last_hash, records, runs, denied
        nonlocal checkpoints, last_checkpoint
        if summary.genesis:  # the chunk at offset 0: it starts the ledger
            if ledger_id is not None or lineno != 0:
                return False
        elif summary.ledger_id != ledger_id:
            return False
        if (
            garbage
            or gap is not None
            or summary.first_seq != expected
            or summary.first_prev != last_hash
            # Runs it ends were open, runs it starts were not (else: unpaired, duplicate).
            or not all(run_id in open_runs for run_id in summary.ended)
            or not open_runs.keys().isdisjoint(summary.started)
        ):
            return False
        base = lineno + 1  # the line number of the chunk's first line
        ledger_id = summary.ledger_id
        for run_id in summary.ended:
            del open_runs[run_id]
        for run_id, index, seq in summary.open_starts:
            open_runs[run_id] = (base + index, seq)
        for event in summary.events:
            if len(event) == 3:  # a record the head or an anchor names
                index, seq, digest = event
                for target in targets[seq]:
                    target.found = True
                    if target.hash != digest:
                        error(
                            "head-mismatch" if target.label == "head" else "anchor-mismatch",
                            f"the {target.label} names hash {target.hash}, the ledger has {digest}",
                            base + index,
                            seq,
                        )
                continue
            index, seq, signer_key, vouched = event
            checkpoints += 1
            last_checkpoint = seq
            keys.add(signer_key)
            if trusted is not None and signer_key not in trusted:
                error(
                    "untrusted-key",
                    f"signed by {signer_key}, which is not a trusted key "
                    "(pass it with --key if you trust it)",
                    base + index,
                    seq,
                )
            else:
                signed.extend(vouched)
                signed.append((seq, seq))  # a valid signature speaks for itself
        refs.update(summary.refs)
        runs += summary.runs
        denied += summary.denied
        records += summary.lines
        lineno += summary.lines
        offset += size
        expected = summary.first_seq + summary.lines
        last_hash = summary.last_hash
        return True

    try:
        handle = path.open("rb")
    except OSError as exc:
        raise LedgerError(
            f"cannot read {path}: {exc.strerror or exc}", hint="Check its permissions."
        ) from None
    if workers is None:
        workers = auto_workers(path.stat().st_size)
    reader = ChunkReader(handle)
    with handle, _gc_paused():
        for chunk, result in stage_one(reader.chunks(), workers, targets):
            if isinstance(result, list):
                walk(result)
            elif not join(result, len(chunk)):
                walk(scan_chunk(chunk))
        if reader.tail:  # the last line has no newline: what a torn write leaves
            lineno += 1
            if not garbage:
                garbage_start = offset
                garbage_problem = Problem("torn-tail", "the last line has no newline", lineno)
            garbage.append(reader.tail)
            unterminated = True

    max_seq = expected - 1
    if garbage and garbage_problem is not None:
        if unterminated:
            warn(
                "torn-tail",
                f"{sum(map(len, garbage))} byte(s) at offset {garbage_start} were left by a "
                "write that did not finish; the next append records them (ledger.recovery)",
                garbage_problem.line,
            )
        else:
            error(garbage_problem.kind, garbage_problem.message, garbage_problem.line)
    if gap is not None:
        gap_missing(gap)
    if ledger_id is None:
        error("bad-genesis", "the ledger holds no valid record")

    head_info: dict[str, Any] | None = None
    if head is not None:
        head_info = {"seq": head.seq, "hash": head.hash, "key": head.key}
        problem = head.problem()
        if ledger_id is not None and head.ledger_id != ledger_id:
            error("head-invalid", f"the signed head belongs to ledger {head.ledger_id}")
        elif problem is not None:
            error("head-invalid", f"the signed head: {problem}")
        else:
            keys.add(head.key)
            if trusted is not None and head.key not in trusted:
                error("untrusted-key", f"the signed head is signed by untrusted key {head.key}")
            else:
                signed.extend(head.covered)
    for wanted in targets.values():
        for target in wanted:
            if target.found:
                continue
            if target.seq > max_seq:
                error(
                    "truncated",
                    f"the {target.label} is at seq {target.seq} but the ledger ends at seq "
                    f"{max_seq}: records were cut off the end",
                    seq=target.seq,
                )
            else:
                error(
                    "head-mismatch" if target.label == "head" else "anchor-mismatch",
                    f"the ledger has no record at seq {target.seq} that the {target.label} names",
                    seq=target.seq,
                )
    for run_id, (line, seq) in open_runs.items():
        warn(
            "crashed-run",
            f"run {run_id} started but has no exec.end (it crashed, or is still running)",
            line,
            seq,
        )
    uncovered = unsigned_ranges(tuple(signed), max_seq)
    unsigned = sum(b - a + 1 for a, b in uncovered)
    last_signed = max((b for _, b in signed), default=-1)
    for start, end in uncovered:
        span = f"seq {start}" if start == end else f"seq {start}-{end}"
        count = end - start + 1
        if end < last_signed:
            error(
                "unsigned-records",
                f"{span}: {count} record(s) that no signature covers, followed by signed "
                "ones: appended by someone without the signing key (jhansi authenticates "
                "every record it writes, and signs only those)",
                seq=start,
            )
        elif strict:
            error(
                "unsigned-tail",
                f"{span}: {count} record(s) at the end that no signature covers yet "
                "(--strict: a run in progress, a crashed one, or records appended by "
                "someone without the key)",
                seq=start,
            )
        else:
            warn(
                "unsigned-tail",
                f"{span}: {count} record(s) at the end that no signature covers yet (a run "
                "in progress, one that crashed before its checkpoint, or records appended by "
                "someone without the key: the next run's signature will not cover those)",
                seq=start,
            )
    if trusted is None and keys:
        warn(
            "key-unpinned",
            "signatures were checked but not against a trusted key: pass --key "
            "(from `jhansi ledger key` on the machine that wrote the ledger)",
        )

    blobs_checked = 0
    if check_blobs and refs:
        from jhansi.ledger.blobs import BlobStore

        store = BlobStore(layout.blobs_dir)
        for ref in sorted(refs):
            name = ref.decode()
            blobs_checked += 1
            state = store.check(name)
            if state == "missing":
                error("blob-missing", f"blob {name} is referenced but missing")
            elif state == "altered":
                error("blob-altered", f"blob {name} no longer matches its hash")

    return VerifyReport(
        path=str(directory),
        ledger_id=ledger_id,
        lines=lineno,
        records=records,
        last_seq=max_seq if max_seq >= 0 else None,
        last_hash=last_hash if max_seq >= 0 else None,
        checkpoints=checkpoints,
        last_checkpoint_seq=last_checkpoint,
        unsigned_records=unsigned,
        unsigned_ranges=uncovered,
        head=head_info,
        anchors=tuple(f"{s}:{h}" for s, h in anchors),
        runs=runs,
        denied=denied,
        crashed_runs=tuple(open_runs),
        recoveries=recoveries,
        blobs_checked=blobs_checked,
        keys=tuple(sorted(keys)),
        pinned_keys=trusted is not None,
        errors=tuple(sorted(findings.errors, key=_in_file_order)),
        warnings=tuple(findings.warnings),
        seconds=time.perf_counter() - started,
        truncated_report=findings.dropped,
    )


# VerifyReport is what verify_ledger returns: importable from here with it.
__all__ = ["parse_anchor", "unsigned_ranges", "verify_ledger"]
