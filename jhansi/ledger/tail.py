"""The end of ``ledger.jsonl``: its last record, and what a crashed appender leaves there.

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

Reading it is cheap: a window at the end of the file, grown only when the last
record's line does not fit in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from jhansi.errors import LedgerError
from jhansi.ledger.record import GENESIS, LedgerId, Record, RecordError, parse_line

TORN_MARKER: Final = b" (torn)\n"
"""Written after unterminated torn bytes, in the same write as the recovery record."""
MAX_RECORD_BYTES: Final = 1 << 20
"""A record line larger than this is refused: put content in a blob."""
MAX_GARBAGE: Final = 1 << 20
"""More damage than this at the end of the ledger is not a torn write."""


@dataclass(slots=True)
class Tail:
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


def read_tail(fd: int, size: int, ino: int) -> Tail:
    """The :class:`Tail` of the ledger open at ``fd`` (``size`` bytes, inode ``ino``).

    Reads a window at the end, four times larger each time the last record is not in
    it, up to the largest record and the most damage a crash leaves.
    """
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
    return Tail(
        ino=ino,
        size=size,
        last=last,
        garbage_offset=start + line_end,
        garbage=data[line_end:],
    )


def read_genesis_id(fd: int) -> LedgerId:
    """The ledger id of the genesis record, the first line of the ledger open at ``fd``."""
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
            hint="Run `jhansi ledger verify`; to keep recording, move the ledger directory aside.",
        )
    return genesis.ledger_id


def records_after(fd: int, seq: int, size: int) -> list[Record]:
    """The records after ``seq`` in the first ``size`` bytes of the ledger open at ``fd``
    (torn lines, already recovered, are skipped)."""
    end = size
    window = 1 << 16
    while True:
        start = max(0, end - window)
        data = os.pread(fd, end - start, start)
        if start > 0:
            data = data[data.find(b"\n") + 1 :]
        # Parsed from the end back, only as far as needed: a window holds dozens of
        # runs' records, and a checkpoint wants the two or three since the last head.
        found: list[Record] = []
        reached = False
        for raw in reversed(data.split(b"\n")):
            if not raw:
                continue
            try:
                record = parse_line(raw)
            except RecordError:
                continue
            if record.seq <= seq:
                reached = True
                break
            found.append(record)
        if reached or start == 0:
            found.reverse()
            return found
        window *= 4


__all__ = [
    "MAX_GARBAGE",
    "MAX_RECORD_BYTES",
    "TORN_MARKER",
    "Tail",
    "find_last_record",
    "read_genesis_id",
    "read_tail",
    "records_after",
]
