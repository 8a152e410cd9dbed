"""Reading the ledger for people: the runs (``log``), one run (``show``), ``export``.

These read, they do not verify: lines that are not valid records are skipped
(``jhansi ledger verify`` is what reports them).

The body fields read here (everything else in a body is shown as is) are the
ones the runner writes (:mod:`jhansi.records`):

``exec.start``
    ``run_id`` (str); ``sandbox``: its name, or ``{"name": str, ...}``;
    ``script``: ``{"path": str, "blob": <code>, ...}``; ``prompt``:
    ``{"blob": ...}`` or ``{"model": ..., "prompt": {"blob": ...}}``.
``exec.end``
    ``run_id``; ``result``: ``{"status": str, "exit_code": int | null,
    "duration_ms": int, ...}``; ``stdout`` and ``stderr``: ``{"blob": ...}``.
``exec.denied``
    ``run_id``, ``script``, ``prompt`` as above; ``result`` as above or
    ``reason``: ``{"exit_code": int, "message": str, ...}``.

Either start of a run made by ``jhansi replay`` names the run it replays:
``replay_of`` (str).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from jhansi.errors import UsageError
from jhansi.ledger.blobs import BlobStore
from jhansi.ledger.findings import VerifyReport
from jhansi.ledger.layout import LedgerLayout
from jhansi.ledger.record import (
    EXEC_DENIED,
    EXEC_END,
    EXEC_KINDS,
    EXEC_START,
    HEX64,
    Record,
    RecordError,
    parse_line,
)

#: Blob references ``show`` prints as text: (label, record kind, body path).
TEXT_REFS: Final = (
    ("prompt", EXEC_START, ("prompt",)),
    ("prompt", EXEC_START, ("prompt", "prompt")),
    ("code", EXEC_START, ("script",)),
    ("prompt", EXEC_DENIED, ("prompt",)),
    ("prompt", EXEC_DENIED, ("prompt", "prompt")),
    ("code", EXEC_DENIED, ("script",)),
    ("stdout", EXEC_END, ("stdout",)),
    ("stderr", EXEC_END, ("stderr",)),
)


_UNSAFE: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with every character that could drive a terminal written as an escape.

    Recorded text (a script's output, its file names, hosts, error texts) is
    the script's choice; printed raw, ``ESC [2J``, an OSC 8 link, a bell or a C1
    ``CSI`` would act on the auditor's terminal, and bidirectional or invisible
    format characters would make it show something other than what is recorded.
    So C0 controls (except newline and tab), DEL, C1 controls and those format
    characters become ``\\xNN`` / ``\\uNNNN``. ``--json`` output is exact instead.
    """
    return _UNSAFE.sub(_escape_char, text)


def one_line(text: str) -> str:
    """``text`` as :func:`terminal_safe` writes it, on one line: newlines and tabs are
    escaped too (``\\n``, ``\\t``). For what a script chose (a file name, a link's
    target, a reason quoting them) inside a line of jhansi's own: a name with a newline
    must not print a line that looks like jhansi's."""
    return terminal_safe(text).replace("\n", "\\n").replace("\t", "\\t")


def json_terminal_safe(line: str) -> str:
    """A JSON text with the characters :func:`terminal_safe` escapes written as JSON
    ``\\uXXXX`` escapes: the same JSON value, inert on a terminal (not byte-exact)."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def exists(directory: Path) -> bool:
    """Whether ``directory`` holds a ledger."""
    return LedgerLayout(directory).ledger_file.is_file()


def iter_records(directory: Path) -> Iterator[Record]:
    """The valid records of the ledger in ``directory``, in file order."""
    path = LedgerLayout(directory).ledger_file
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                continue
            try:
                yield parse_line(line[:-1])
            except RecordError:
                continue


def verified_records(directory: Path, report: VerifyReport) -> Iterator[Record]:
    """The records of the ledger exactly as ``report`` (its verification) found them.

    The file is read again after it was verified: each record must chain to the one
    before it (every record's hash is checked as it is parsed) and the last one must be
    the record verification ended on, so what is read is what was verified, not a file
    changed or replaced since. Records appended since are left out. Raises
    :class:`LedgerError` when the ledger changed under the reader.
    """
    from jhansi.errors import LedgerError
    from jhansi.ledger.record import ZERO_HASH

    changed = LedgerError(
        f"the ledger at {directory} changed after it was verified",
        hint="Run the command again (when nothing else writes to the ledger).",
    )
    if report.last_seq is None or report.last_hash is None:
        return
    prev = ZERO_HASH
    for record in iter_records(directory):
        if record.seq > report.last_seq:
            break
        if record.prev != prev:
            raise changed
        prev = record.hash
        yield record
    if prev != report.last_hash:
        raise changed


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run as ``jhansi ledger log`` shows it."""

    run_id: str
    time: str
    sandbox: str | None
    script: str | None
    status: str
    exit_code: int | None
    duration_ms: int | None
    replay_of: str | None = None
    """The run this one replays (``jhansi replay``), if it is a replay."""

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "run_id": self.run_id,
            "time": self.time,
            "sandbox": self.sandbox,
            "script": self.script,
            "status": self.status,
            "exit_code": self.exit_code,
            "duration_ms": self.duration_ms,
            "replay_of": self.replay_of,
        }


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _result(body: Any) -> dict[str, Any]:
    result = body.get("result") if isinstance(body, dict) else None
    return result if isinstance(result, dict) else {}


def sandbox_name(body: Any) -> str | None:
    """The sandbox a body names: ``sandbox`` itself, or ``sandbox.name``."""
    sandbox = body.get("sandbox") if isinstance(body, dict) else None
    if isinstance(sandbox, dict):
        return _str(sandbox.get("name"))
    return _str(sandbox)


def outcome(kind: str, body: Any) -> tuple[str | None, int | None, int | None]:
    """(status, exit code, duration in ms) that an ``exec.end`` or ``exec.denied`` records."""
    result = _result(body)
    status = _str(result.get("status"))
    exit_code = _int(result.get("exit_code"))
    if kind == EXEC_DENIED:
        reason = body.get("reason") if isinstance(body, dict) else None
        if exit_code is None and isinstance(reason, dict):
            exit_code = _int(reason.get("exit_code"))
        status = status or "denied"
    return status, exit_code, _int(result.get("duration_ms"))


def script_path(body: dict[str, Any] | Any) -> str | None:
    """The script a body names: ``script.path``, or ``script`` itself when a string."""
    script = body.get("script") if isinstance(body, dict) else None
    if isinstance(script, dict):
        return _str(script.get("path"))
    return _str(script)


def summarize_runs(records: Iterable[Record]) -> list[RunSummary]:
    """The runs in ``records``, in the order they started (or were denied)."""
    runs: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.kind not in EXEC_KINDS:
            continue
        body = record.body
        run_id = _str(body.get("run_id"))
        if not run_id:
            continue
        if record.kind == EXEC_END:
            run = runs.setdefault(
                run_id,
                {"time": record.time, "sandbox": None, "script": None},
            )
            status, run["exit_code"], run["duration_ms"] = outcome(record.kind, body)
            run["status"] = status or "ended"
            continue
        run = runs.setdefault(run_id, {"time": record.time})
        run["sandbox"] = sandbox_name(body)
        run["script"] = script_path(body)
        run["replay_of"] = _str(body.get("replay_of"))
        if record.kind == EXEC_DENIED:
            run["status"], run["exit_code"], run["duration_ms"] = outcome(record.kind, body)
        else:
            run.setdefault("status", "unfinished")
    return [
        RunSummary(
            run_id=run_id,
            time=run["time"],
            sandbox=run.get("sandbox"),
            script=run.get("script"),
            status=run.get("status", "unfinished"),
            exit_code=run.get("exit_code"),
            duration_ms=run.get("duration_ms"),
            replay_of=run.get("replay_of"),
        )
        for run_id, run in runs.items()
    ]


def parse_since(text: str, *, now: _dt.datetime | None = None) -> str:
    """A ``--since`` value as a record time to compare with.

    Accepts a date (``2025-01-31``), a date and time (``2025-01-31T12:00``,
    with an optional zone; UTC when none), or an age (``7d``, ``12h``, ``90m``).
    """
    from jhansi.config import parse_duration

    value = text.strip()
    moment: _dt.datetime | None = None
    try:
        moment = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise UsageError(
                f"--since {text!r} is neither a date nor an age",
                hint="Use a date (2025-01-31), a date and time (2025-01-31T12:00Z), "
                "or an age (7d, 12h).",
            ) from None
        moment = (now or _dt.datetime.now(_dt.UTC)) - _dt.timedelta(seconds=seconds)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def filter_runs(
    runs: Iterable[RunSummary], *, sandbox: str | None = None, since: str | None = None
) -> list[RunSummary]:
    """Runs in ``sandbox`` that started at or after ``since`` (a record time)."""
    return [
        run
        for run in runs
        if (sandbox is None or run.sandbox == sandbox) and (since is None or run.time >= since)
    ]


def run_records(
    directory: Path, run_id: str, records: Iterable[Record] | None = None
) -> tuple[str, list[Record]]:
    """Every record of one run (``run_id`` may be a unique prefix); the full id first.

    ``records``: the ledger's records as already read (default: read the file)."""
    wanted = run_id.strip()
    if not wanted:
        raise UsageError("no run id given", hint="`jhansi ledger log` lists the runs.")
    by_run: dict[str, list[Record]] = {}
    for record in iter_records(directory) if records is None else records:
        rid = record.body.get("run_id")
        if isinstance(rid, str) and rid.startswith(wanted):
            by_run.setdefault(rid, []).append(record)
    if wanted in by_run:
        return wanted, by_run[wanted]
    if not by_run:
        raise UsageError(
            f"no run {wanted!r} in the ledger at {directory}",
            hint="`jhansi ledger log` lists the runs.",
        )
    if len(by_run) > 1:
        raise UsageError(
            f"{wanted!r} matches {len(by_run)} runs: " + ", ".join(sorted(by_run)[:5]),
            hint="Give more of the run id.",
        )
    ((full, records),) = by_run.items()
    return full, records


@dataclass(frozen=True, slots=True)
class BlobText:
    """A blob ``show`` prints: its text when it is UTF-8, else why not."""

    label: str
    digest: str
    text: str | None
    size: int | None
    problem: str | None

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "label": self.label,
            "blob": self.digest,
            "bytes": self.size,
            "text": self.text,
            "problem": self.problem,
        }


def _dig(body: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def run_texts(records: Iterable[Record], blobs: BlobStore) -> list[BlobText]:
    """The prompt, code, stdout and stderr of a run, read (and checked) from their blobs."""
    from jhansi.errors import LedgerError

    texts: list[BlobText] = []
    for record in records:
        for label, kind, path in TEXT_REFS:
            if record.kind != kind:
                continue
            ref = _dig(record.body, path)
            digest = ref.get("blob") if isinstance(ref, dict) else None
            if not isinstance(digest, str) or not HEX64.fullmatch(digest):
                continue
            try:
                data = blobs.get(digest)
            except LedgerError as exc:
                texts.append(BlobText(label, digest, None, None, exc.message))
                continue
            try:
                texts.append(BlobText(label, digest, data.decode("utf-8"), len(data), None))
            except UnicodeDecodeError:
                texts.append(BlobText(label, digest, None, len(data), "not UTF-8 text"))
    return texts


# -- export -------------------------------------------------------------------------------

CSV_COLUMNS: Final = (
    "seq",
    "time",
    "kind",
    "run_id",
    "sandbox",
    "script",
    "status",
    "exit_code",
    "duration_ms",
    "hash",
    "prev",
    "ledger_id",
    "body",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str | None) -> str:
    """A text cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def export_jsonl(records: Iterable[Record], out: IO[bytes]) -> int:
    """Write each record's canonical line; return how many."""
    count = 0
    for record in records:
        out.write(record.line + b"\n")
        count += 1
    return count


def export_csv(records: Iterable[Record], out: IO[str]) -> int:
    """One row per record (:data:`CSV_COLUMNS`; ``body`` as canonical JSON); return how many.

    Text cells that a spreadsheet would read as a formula get a leading ``'``.
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for record in records:
        body = record.body
        status, exit_code, duration = (
            outcome(record.kind, body) if record.kind in EXEC_KINDS else (None, None, None)
        )
        writer.writerow(
            (
                record.seq,
                record.time,
                record.kind,
                _cell(_str(body.get("run_id"))),
                _cell(sandbox_name(body)),
                _cell(script_path(body)),
                _cell(status),
                "" if exit_code is None else exit_code,
                "" if duration is None else duration,
                record.hash,
                record.prev,
                record.ledger_id,
                json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
            )
        )
        count += 1
    return count
