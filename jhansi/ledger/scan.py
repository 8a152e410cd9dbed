"""Stage one of ``jhansi ledger verify``: each chunk of the ledger checked on its own.

The ledger file is read in chunks of whole lines (:class:`ChunkReader`), and each
chunk is checked without looking at any other, so that chunks can be checked in
worker processes (:func:`stage_one`). :func:`summarize_chunk` checks each line
(canonical form, schema, hash, checkpoint signature: only the body goes through the
C JSON decoder and encoder, see :func:`jhansi.ledger.record.split_record`) and, for
a chunk that simply continues itself (contiguous seqs, chained hashes, runs that
pair up), also what relates its lines to each other, returning a
:class:`ChunkSummary`. A chunk with anything unusual in it gets
:func:`scan_chunk`'s per-line results instead: the reference the tests compare
summaries with. Stage two, which joins the chunks in order, is
:mod:`jhansi.ledger.verify`.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from jhansi.ledger.checkpoint import check_checkpoint, checkpoint_ranges
from jhansi.ledger.record import (
    BLOB_REF,
    CHECKPOINT,
    EXEC_END,
    EXEC_KINDS,
    EXEC_START,
    GENESIS,
    RECOVERY,
    ZERO_HASH,
    RecordError,
    parse_object,
    split_record,
)

_CHUNK = 1 << 22
_PARALLEL_MIN_BYTES = 16 << 20
_MAX_WORKERS = 4


def scan_chunk(chunk: bytes) -> list[tuple[Any, ...]]:
    """Stage one of verification: check each line of ``chunk`` on its own.

    ``chunk`` is whole lines, each ending with a newline. Everything that needs
    no other line happens here (canonical form, schema, hash, signature), so
    that it can run in parallel; the result per line is a small tuple that
    stage two (:func:`jhansi.ledger.verify.verify_ledger`) checks in order:

    - a record: ``(length, seq, kind, ledger_id, prev, hash, extra, blob_refs,
      signature_problem)`` where ``extra`` is the ``run_id`` of ``exec.*``, the
      key of a checkpoint, the body of a recovery;
    - anything else: ``(length, None, problem_kind, message, claimed_seq,
      claimed_hash, claimed_ledger_id, raw line if it may be a torn write)``.
    """
    parse = parse_object
    marker = b'"blob":"'
    find_blobs = BLOB_REF.findall
    exec_kinds = EXEC_KINDS
    out: list[tuple[Any, ...]] = []
    append = out.append
    lines = chunk.split(b"\n")
    lines.pop()  # what follows the last newline: nothing
    for raw in lines:
        try:
            obj = parse(raw)
        except RecordError as exc:
            if exc.kind == "not-json" or exc.kind == "not-utf8":
                append((len(raw), None, exc.kind, str(exc), None, None, None, raw))
                continue
            claimed = exc.obj or {}
            append(
                (
                    len(raw),
                    None,
                    exc.kind,
                    str(exc),
                    claimed.get("seq"),
                    claimed.get("hash"),
                    claimed.get("ledger_id"),
                    None,
                )
            )
            continue
        kind = obj["kind"]
        extra: Any = None
        problem = None
        if kind in exec_kinds:
            extra = obj["body"].get("run_id")
        elif kind == CHECKPOINT:
            body = obj["body"]
            problem = check_checkpoint(obj["ledger_id"], obj["seq"], obj["prev"], body)
            extra = (body.get("key"), None if problem else checkpoint_ranges(obj["seq"], body))
        elif kind == RECOVERY:
            extra = obj["body"]
        append(
            (
                len(raw),
                obj["seq"],
                kind,
                obj["ledger_id"],
                obj["prev"],
                obj["hash"],
                extra,
                find_blobs(raw) if marker in raw else None,
                problem,
            )
        )
    return out


@dataclass(slots=True)
class ChunkReader:
    """Whole-line chunks of a file, and the unterminated last line left over."""

    handle: BinaryIO
    tail: bytes = b""

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.handle.read(_CHUNK):
            if self.tail:
                chunk = self.tail + chunk
            cut = chunk.rfind(b"\n") + 1
            self.tail = chunk[cut:]
            if cut:
                yield chunk[:cut]


class ChunkSummary(NamedTuple):
    """Stage one's result for a chunk of records that relate to each other as they should.

    Every line is a valid record (:func:`jhansi.ledger.record.split_record`) of one
    ledger, seqs are contiguous and each ``prev`` is the hash before it; no
    recovery, no second genesis, every checkpoint signature verifies, and runs
    pair up inside the chunk or name a run started before it. What remains for
    stage two is only what relates the chunk to the rest: how it joins the
    record before it, which runs it ends or leaves open, which keys signed what,
    the head and anchors it holds, the blobs it names. So the per-record walk of
    stage two (and pickling one tuple per record between processes) is skipped
    for the usual chunk; a chunk stage two cannot join as a whole is checked
    again line by line (:func:`scan_chunk`), so every finding stays the same.
    """

    lines: int
    genesis: bool
    """The chunk starts with a genesis record (only the chunk at offset 0 may)."""
    ledger_id: str
    first_seq: int
    first_prev: str
    last_hash: str
    started: frozenset[str]
    """The run ids of every ``exec.start`` in the chunk."""
    open_starts: tuple[tuple[str, int, int], ...]
    """``(run_id, index, seq)`` of the starts the chunk does not end, in order."""
    ended: tuple[str, ...]
    """The run ids of the ``exec.end`` records whose start precedes the chunk."""
    runs: int
    denied: int
    events: tuple[tuple[Any, ...], ...]
    """In order: ``(index, seq, hash)`` of a record at a head or anchor seq;
    ``(index, seq, key, ranges)`` of a checkpoint (its signature verified)."""
    refs: frozenset[bytes]


def summarize_chunk(
    chunk: bytes, first: bool = False, targets: Collection[int] = ()
) -> ChunkSummary | list[tuple[Any, ...]]:
    """Stage one of verification for ``chunk`` (whole lines): a :class:`ChunkSummary`
    when it holds nothing unusual, else :func:`scan_chunk`'s per-line results.

    ``first``: the chunk starts the file. ``targets``: the seqs of the signed
    head and the anchors (stage two checks their hashes).
    """
    summary = _summarize(chunk, first, targets)
    return scan_chunk(chunk) if summary is None else summary


def _summarize(chunk: bytes, first: bool, targets: Collection[int]) -> ChunkSummary | None:
    """The :class:`ChunkSummary` of ``chunk``; ``None`` at the first thing out of the ordinary."""
    split = split_record
    marker = b'"blob":"'
    find_blobs = BLOB_REF.findall
    exec_kinds = EXEC_KINDS
    lines = chunk.split(b"\n")
    lines.pop()  # what follows the last newline: nothing
    open_runs: dict[str, tuple[int, int]] = {}
    started: set[str] = set()
    seen: set[str] = set()  # run ids started or ended in the chunk
    ended: list[str] = []
    events: list[tuple[Any, ...]] = []
    refs: set[bytes] = set()
    runs = denied = 0
    genesis = False
    first_seq, first_prev, ledger_id = -1, "", ""
    expected, last = -1, ""
    for index, raw in enumerate(lines):
        fields = split(raw)
        if fields is None:
            return None
        seq, kind, record_id, prev, digest, _, body = fields
        if seq != expected or prev != last or record_id != ledger_id:
            if index:
                return None
            first_seq, first_prev, ledger_id = seq, prev, record_id
        expected = seq + 1
        last = digest
        if seq in targets:
            events.append((index, seq, digest))
        if kind in exec_kinds:
            run_id = body.get("run_id")
            if type(run_id) is not str or not run_id:
                return None
            if kind == EXEC_START:
                if run_id in seen:
                    return None
                seen.add(run_id)
                started.add(run_id)
                open_runs[run_id] = (index, seq)
                runs += 1
            elif kind == EXEC_END:
                if open_runs.pop(run_id, None) is None:
                    if run_id in seen:
                        return None
                    seen.add(run_id)
                    ended.append(run_id)
            else:
                denied += 1
        elif kind == CHECKPOINT:
            if check_checkpoint(record_id, seq, prev, body) is not None:
                return None
            events.append((index, seq, body["key"], checkpoint_ranges(seq, body)))
        elif kind == GENESIS:
            if not (first and index == 0 and seq == 0 and prev == ZERO_HASH):
                return None
            genesis = True
        elif kind == RECOVERY:
            return None
        if marker in raw:
            refs.update(find_blobs(raw))
    if not lines or (first and not genesis):
        return None
    return ChunkSummary(
        lines=len(lines),
        genesis=genesis,
        ledger_id=ledger_id,
        first_seq=first_seq,
        first_prev=first_prev,
        last_hash=last,
        started=frozenset(started),
        open_starts=tuple((run_id, i, seq) for run_id, (i, seq) in open_runs.items()),
        ended=tuple(ended),
        runs=runs,
        denied=denied,
        events=tuple(events),
        refs=frozenset(refs),
    )


StageOne = ChunkSummary | list[tuple[Any, ...]]


def stage_one(
    chunks: Iterator[bytes], workers: int, targets: Collection[int]
) -> Iterator[tuple[bytes, StageOne]]:
    """``(chunk, summarize_chunk(chunk))`` over ``chunks``, in order; in ``workers``
    processes when > 1 (a summary pickles to little: the runs and keys, not the records)."""
    targets = frozenset(targets)
    if workers <= 1:
        first = True
        for chunk in chunks:
            yield chunk, summarize_chunk(chunk, first, targets)
            first = False
        return
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[tuple[bytes, Future[StageOne]]] = deque()
        first = True
        for chunk in chunks:
            pending.append((chunk, pool.submit(summarize_chunk, chunk, first, targets)))
            first = False
            if len(pending) > 2 * workers:  # bounded read-ahead: memory stays flat
                chunk, future = pending.popleft()
                yield chunk, future.result()
        while pending:
            chunk, future = pending.popleft()
            yield chunk, future.result()


def auto_workers(size: int) -> int:
    if size < _PARALLEL_MIN_BYTES or not sys.platform.startswith("linux"):
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_WORKERS))


__all__ = [
    "ChunkReader",
    "ChunkSummary",
    "StageOne",
    "auto_workers",
    "scan_chunk",
    "stage_one",
    "summarize_chunk",
]
