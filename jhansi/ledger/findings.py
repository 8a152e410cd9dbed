"""What ``jhansi ledger verify`` reports: each :class:`Problem`, and the :class:`VerifyReport`.

The kinds of problem, and which are errors and which warnings, are listed in
:mod:`jhansi.ledger.verify`. At most :data:`MAX_PROBLEMS` of each are listed; a report
says when more were found (:attr:`VerifyReport.truncated_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jhansi.ledger.checkpoint import Ranges

MAX_PROBLEMS = 100
"""Errors (and warnings) listed in one report at most."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: what (``kind``), why, and where."""

    kind: str
    message: str
    line: int | None = None
    seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {"kind": self.kind, "message": self.message, "line": self.line, "seq": self.seq}

    def describe(self) -> str:
        """One line for a person."""
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of one verification."""

    path: str
    ledger_id: str | None
    lines: int
    records: int
    last_seq: int | None
    last_hash: str | None
    checkpoints: int
    last_checkpoint_seq: int | None
    unsigned_records: int
    unsigned_ranges: Ranges
    head: dict[str, Any] | None
    anchors: tuple[str, ...]
    runs: int
    denied: int
    crashed_runs: tuple[str, ...]
    recoveries: int
    blobs_checked: int
    keys: tuple[str, ...]
    pinned_keys: bool
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    seconds: float
    truncated_report: bool = False
    """More problems were found than are listed."""

    @property
    def ok(self) -> bool:
        """The ledger verifies (warnings allowed)."""
        return not self.errors

    def signed(self, seq: int) -> bool:
        """Whether the record at ``seq`` is one verification found, covered by a valid
        signature (of a trusted key, when keys were pinned)."""
        if self.last_seq is None or not 0 <= seq <= self.last_seq:
            return False
        return not any(start <= seq <= end for start, end in self.unsigned_ranges)

    @property
    def first_error(self) -> Problem | None:
        """The first failure, in file order as far as possible."""
        return self.errors[0] if self.errors else None

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` (without ``status``, which the CLI adds)."""
        return {
            "valid": self.ok,
            "path": self.path,
            "ledger_id": self.ledger_id,
            "first_error": self.first_error.as_dict() if self.first_error else None,
            "errors": [p.as_dict() for p in self.errors],
            "warnings": [p.as_dict() for p in self.warnings],
            "summary": {
                "lines": self.lines,
                "records": self.records,
                "last_seq": self.last_seq,
                "last_hash": self.last_hash,
                "checkpoints": self.checkpoints,
                "last_checkpoint_seq": self.last_checkpoint_seq,
                "unsigned_records": self.unsigned_records,
                "unsigned_ranges": [list(r) for r in self.unsigned_ranges],
                "head": self.head,
                "anchors": list(self.anchors),
                "runs": self.runs,
                "denied": self.denied,
                "crashed_runs": list(self.crashed_runs),
                "recoveries": self.recoveries,
                "blobs_checked": self.blobs_checked,
                "keys": list(self.keys),
                "pinned_keys": self.pinned_keys,
                "more_problems_not_listed": self.truncated_report,
                "seconds": round(self.seconds, 3),
            },
        }


@dataclass(slots=True)
class Findings:
    """The problems found so far, in the order found (at most MAX_PROBLEMS of each)."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    dropped: bool = False

    def error(
        self, kind: str, message: str, line: int | None = None, seq: int | None = None
    ) -> None:
        """One more error (the ledger does not verify)."""
        if len(self.errors) < MAX_PROBLEMS:
            self.errors.append(Problem(kind, message, line, seq))
        else:
            self.dropped = True

    def warn(
        self, kind: str, message: str, line: int | None = None, seq: int | None = None
    ) -> None:
        """One more warning (the ledger still verifies)."""
        if len(self.warnings) < MAX_PROBLEMS:
            self.warnings.append(Problem(kind, message, line, seq))
        else:
            self.dropped = True


__all__ = ["MAX_PROBLEMS", "Findings", "Problem", "VerifyReport"]
