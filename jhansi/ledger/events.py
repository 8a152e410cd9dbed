"""``jhansi ledger export --format jsonl``: the ledger as events a SIEM ingests.

One event per record, one JSON object per line, flat (top-level fields, lists of
flat objects at most), as ``schemas/jhansi-ledger-event-1.schema.json`` defines
it (:data:`SCHEMA_ID`, each event's ``schema_version`` is :data:`SCHEMA_VERSION`).
Each event carries the record's ``seq``, ``hash``, ``prev`` and ``ledger_id``, so
that any line can be checked against the ledger, and the verification state: the
verifier (:func:`jhansi.ledger.verify.verify_ledger`) runs once, and every event
says whether the whole ledger verifies and, when it does not, whether this record
comes before the first failure or not (:class:`Verification`).

Why one event per record, and a run's connections as counts and host lists in its
``exec.end`` event rather than one event per connection: every line then stands for
exactly one record, whose hash it carries and which an auditor can check; the counts
are exact even when the record keeps only the head of a long list (the whole list is
read from its blob) or the proxy dropped events past its cap (``egress_dropped``);
and a SIEM rule ("a run with refusals", "a run that reached a host outside the
list") is a condition on one event. Each connection, with its bytes, status and
reason, stays in the record (``--format records``, ``jhansi ledger show``).

Like the other readers (:mod:`jhansi.ledger.read`), this reads bodies as the
runner writes them (:mod:`jhansi.records`) and tolerates anything else: a field it
cannot find is ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from jhansi.ledger.layout import LedgerLayout
from jhansi.ledger.read import outcome, sandbox_name, script_path
from jhansi.ledger.record import (
    CHECKPOINT,
    EXEC_DENIED,
    EXEC_END,
    EXEC_START,
    GENESIS,
    RECOVERY,
    Record,
    RecordError,
    parse_line,
)

if TYPE_CHECKING:
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.findings import VerifyReport

SCHEMA_VERSION: Final = "1.0"
"""The events' ``schema_version``: a new minor version may add fields (never to an
object whose schema is closed without saying so); a change that removes or changes
the meaning of a field is a new major version, with a new schema file and ``$id``."""
SCHEMA_ID: Final = "urn:jhansi:schema:ledger-event:1"
"""The ``$id`` of ``schemas/jhansi-ledger-event-1.schema.json``."""
APPLY: Final = "sandbox.apply"
"""The record ``jhansi sandbox apply`` writes (:data:`jhansi.layers.APPLY_KIND`)."""

#: Egress decisions that reached (or were on their way to) a host.
_CONNECTED: Final = frozenset({"tunnelled", "intercepted", "forwarded"})


@dataclass(frozen=True, slots=True)
class Verification:
    """The verifier's verdict, to mark each event with.

    ``failed_seq`` / ``failed_line``: the earliest seq, and the earliest line with no
    seq, that an error names; ``everything_failed``: an error names neither (a
    missing or mismatched head, records cut off the end), so no record is vouched for.
    """

    ok: bool
    error: str | None
    failed_seq: int | None
    failed_line: int | None
    everything_failed: bool
    unsigned: tuple[tuple[int, int], ...]

    @classmethod
    def from_report(cls, report: VerifyReport) -> Verification:
        """From one run of :func:`jhansi.ledger.verify.verify_ledger`."""
        seqs = [p.seq for p in report.errors if p.seq is not None]
        lines = [p.line for p in report.errors if p.seq is None and p.line is not None]
        first = report.first_error
        return cls(
            ok=report.ok,
            error=first.describe() if first is not None else None,
            failed_seq=min(seqs) if seqs else None,
            failed_line=min(lines) if lines else None,
            everything_failed=any(p.seq is None and p.line is None for p in report.errors),
            unsigned=tuple((int(a), int(b)) for a, b in report.unsigned_ranges),
        )

    def state(self, seq: int, line: int) -> str:
        """``verified``, ``unsigned`` (the ledger verifies, no signature covers this
        record yet), ``intact`` (the ledger does not verify, but only from a later
        record on) or ``failed``."""
        if self.ok:
            return "unsigned" if any(a <= seq <= b for a, b in self.unsigned) else "verified"
        if self.everything_failed:
            return "failed"
        if (self.failed_seq is not None and seq >= self.failed_seq) or (
            self.failed_line is not None and line >= self.failed_line
        ):
            return "failed"
        return "intact"


def numbered_records(directory: Path) -> Iterator[tuple[int, Record]]:
    """The valid records of the ledger in ``directory`` with their (1-based) line."""
    path = LedgerLayout(directory).ledger_file
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                continue
            try:
                yield number, parse_line(line[:-1])
            except RecordError:
                continue


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _digest(ref: object) -> str | None:
    """The BLAKE3 of a blob reference (``{"blob": ..., "blake3": ...}``)."""
    found = _dict(ref)
    return _str(found.get("blake3")) or _str(found.get("blob"))


def _actor(body: Mapping[str, Any], key: str = "actor") -> dict[str, Any]:
    actor = _dict(body.get(key))
    ci = _dict(actor.get("ci"))
    return {
        "actor_user": _str(actor.get("user")),
        "actor_uid": _int(actor.get("uid")),
        "actor_host": _str(actor.get("host")),
        "actor_ci": {k: v for k, v in ci.items() if isinstance(v, str)} if ci else None,
    }


def _run_context(body: Mapping[str, Any]) -> dict[str, Any]:
    """What an ``exec.start`` or ``exec.denied`` says of who ran what, where."""
    sandbox = _dict(body.get("sandbox"))
    prompt = body.get("prompt")
    prompt_ref = _dict(prompt).get("prompt") if "model" in _dict(prompt) else prompt
    return {
        **_actor(body),
        "sandbox": sandbox_name(body),
        "backend": _str(sandbox.get("backend")),
        "network": _str(sandbox.get("network")),
        "script_path": script_path(body),
        "script_blake3": _digest(body.get("script")),
        "model": _str(_dict(prompt).get("model")),
        "prompt_blake3": _digest(prompt_ref),
        "jhansi_version": _str(body.get("jhansi")),
    }


def _policy(body: Mapping[str, Any]) -> dict[str, Any]:
    policy = body.get("policy")
    if not isinstance(policy, dict):
        return {
            "policy_ok": None,
            "policy_denied": None,
            "policy_warnings": None,
            "policy_packages": None,
            "policy_findings": [],
        }
    findings = []
    for item in [*_list(policy.get("findings")), *_list(policy.get("ignored"))]:
        found = _dict(item)
        ignored = found.get("ignored")
        findings.append(
            {
                "id": _str(found.get("id")),
                "rule": _str(found.get("rule")),
                "severity": _str(found.get("severity")),
                "package": _str(found.get("package")),
                "version": _str(found.get("version")),
                "ignored": ignored if isinstance(ignored, str) else None,
            }
        )
    return {
        "policy_ok": _bool(policy.get("ok")),
        "policy_denied": _int(policy.get("denied")),
        "policy_warnings": _int(policy.get("warnings")),
        "policy_packages": _int(policy.get("packages")),
        "policy_findings": findings,
    }


def _packages(body: Mapping[str, Any]) -> list[str]:
    locked = _list(_dict(body.get("dependencies")).get("locked"))
    out = []
    for item in locked:
        name, version = _str(_dict(item).get("name")), _str(_dict(item).get("version"))
        if name:
            out.append(f"{name}=={version}" if version else name)
    return out


def _full_list(
    body: Mapping[str, Any], name: str, blobs: BlobStore | None
) -> tuple[list[Any], bool]:
    """A list an ``exec.end`` may keep only the head of: the whole of it from its blob
    (:func:`jhansi.records.bounded_list`), and whether it is whole."""
    from jhansi.errors import LedgerError

    head = _list(body.get(name))
    full = _dict(body.get(f"{name}_full"))
    digest = _str(full.get("blob"))
    if digest is None:
        return head, True
    if blobs is None:
        return head, False
    try:
        data = blobs.get(digest)
        return [json.loads(line) for line in data.splitlines() if line.strip()], True
    except (LedgerError, ValueError):
        return head, False


def _start(body: Mapping[str, Any]) -> dict[str, Any]:
    sandbox = _dict(body.get("sandbox"))
    limits = _dict(sandbox.get("limits"))
    egress = _dict(body.get("egress"))
    return {
        "run_id": _str(body.get("run_id")),
        **_run_context(body),
        "status": "started",
        "ephemeral": _bool(sandbox.get("ephemeral")),
        "limit_memory_bytes": _int(limits.get("memory_bytes")),
        "limit_millicpus": _int(limits.get("millicpus")),
        "limit_pids": _int(limits.get("pids")),
        "limit_timeout_ms": _int(limits.get("timeout_ms")),
        **_policy(body),
        "packages": _packages(body),
        "lock_blake3": _digest(_dict(body.get("dependencies")).get("lock")),
        "sbom_blake3": _digest(body.get("sbom")),
        "egress_allow": [h for h in _list(egress.get("allow")) if isinstance(h, str)],
        "secrets": [
            {
                "name": _str(_dict(s).get("name")),
                "hosts": [h for h in _list(_dict(s).get("hosts")) if isinstance(h, str)],
            }
            for s in _list(body.get("secrets"))
        ],
    }


def _end(
    body: Mapping[str, Any], context: Mapping[str, Any], blobs: BlobStore | None
) -> dict[str, Any]:
    status, exit_code, duration = outcome(EXEC_END, body)
    result = _dict(body.get("result"))
    stdout, stderr = _dict(body.get("stdout")), _dict(body.get("stderr"))
    egress, whole = _full_list(body, "egress", blobs)
    reached: set[str] = set()
    refused: set[str] = set()
    counts = {"connected": 0, "refused": 0, "failed": 0}
    for item in egress:
        event = _dict(item)
        decision = _str(event.get("decision"))
        host, port = _str(event.get("host")) or "", _int(event.get("port"))
        where = f"{host}:{port}" if port else host
        if decision in _CONNECTED:
            counts["connected"] += 1
            if host:
                reached.add(where)
        elif decision == "refused":
            counts["refused"] += 1
            if host:
                refused.add(where)
        else:
            counts["failed"] += 1
    files = _list(body.get("files_changed"))
    return {
        "run_id": _str(body.get("run_id")),
        **context,
        "status": status or "ended",
        "exit_code": exit_code,
        "signal": _int(result.get("signal")),
        "duration_ms": duration,
        "error": _str(result.get("error")) or None,
        "stdout_bytes": _int(stdout.get("bytes")),
        "stdout_blake3": _digest(stdout),
        "stderr_bytes": _int(stderr.get("bytes")),
        "stderr_blake3": _digest(stderr),
        "files_changed": _int(body.get("files_changed_count")) or len(files),
        "egress_connections": counts["connected"],
        "egress_refusals": counts["refused"],
        "egress_failures": counts["failed"],
        "egress_dropped": _int(body.get("egress_dropped")) or 0,
        "egress_complete": whole,
        "egress_hosts": sorted(reached),
        "egress_refused_hosts": sorted(refused),
    }


def _denied(body: Mapping[str, Any]) -> dict[str, Any]:
    status, exit_code, duration = outcome(EXEC_DENIED, body)
    reason = _dict(body.get("reason"))
    return {
        "run_id": _str(body.get("run_id")),
        **_run_context(body),
        "status": status or "denied",
        "exit_code": exit_code,
        "duration_ms": duration,
        "reason_kind": _str(reason.get("kind")),
        "reason_message": _str(reason.get("message")),
        **_policy(body),
        "packages": _packages(body),
    }


def _checkpoint(body: Mapping[str, Any]) -> dict[str, Any]:
    ranges = [
        [r[0], r[1]]
        for r in _list(body.get("ranges"))
        if isinstance(r, list) and len(r) == 2 and all(_int(x) is not None for x in r)
    ]
    return {
        "checkpoint_alg": _str(body.get("alg")),
        "checkpoint_key": _str(body.get("key")),
        "checkpoint_ranges": ranges,
        "checkpoint_records": sum(b - a + 1 for a, b in ranges),
    }


def _apply(body: Mapping[str, Any]) -> dict[str, Any]:
    def count(name: str) -> int:
        return _int(body.get(f"{name}_count")) or len(_list(body.get(name)))

    return {
        **_actor(body),
        "jhansi_version": _str(body.get("jhansi")),
        "sandbox": _str(body.get("sandbox")),
        "project": _str(body.get("project")),
        "applied": count("applied"),
        "refused": count("refused"),
        "conflicts": count("conflicts"),
        "error": _str(body.get("error")) or None,
    }


def _kind_fields(
    record: Record, starts: dict[str, dict[str, Any]], blobs: BlobStore | None
) -> dict[str, Any]:
    body = record.body
    kind = record.kind
    if kind == EXEC_START:
        fields = _start(body)
        run_id = fields["run_id"]
        if run_id:
            starts[run_id] = {key: fields[key] for key in _run_context(body)}
        return fields
    if kind == EXEC_END:
        run_id = _str(body.get("run_id"))
        context = starts.pop(run_id, None) if run_id else None
        return _end(body, context or dict.fromkeys(_run_context({})), blobs)
    if kind == EXEC_DENIED:
        return _denied(body)
    if kind == CHECKPOINT:
        return _checkpoint(body)
    if kind == APPLY:
        return _apply(body)
    if kind == GENESIS:
        return {**_actor(body, "created_by"), "jhansi_version": _str(body.get("jhansi"))}
    if kind == RECOVERY:
        return {
            "recovery_offset": _int(body.get("offset")),
            "recovery_length": _int(body.get("length")),
            "recovery_hash": _str(body.get("hash")),
            "recovery_reason": _str(body.get("reason")),
        }
    return {"body": dict(body)}


def ledger_events(
    directory: Path, verification: Verification, blobs: BlobStore | None = None
) -> Iterator[dict[str, Any]]:
    """The events of the ledger in ``directory``, in file order (one per valid record).

    ``blobs``: where to read the whole of a list a record keeps only the head of
    (without it, such counts are of the head, and ``egress_complete`` is false).
    """
    failed_from = verification.failed_seq
    if verification.failed_line is not None:
        # An error on a line with no seq (not a record at all): it fails from the
        # first record after it on.
        after = (r.seq for n, r in numbered_records(directory) if n >= verification.failed_line)
        first = next(after, None)
        if first is not None and (failed_from is None or first < failed_from):
            failed_from = first
    starts: dict[str, dict[str, Any]] = {}
    for line, record in numbered_records(directory):
        yield {
            "schema_version": SCHEMA_VERSION,
            "time": record.time,
            "kind": record.kind,
            "ledger_id": record.ledger_id,
            "seq": record.seq,
            "hash": record.hash,
            "prev": record.prev,
            "ledger_verified": verification.ok,
            "verification": verification.state(record.seq, line),
            "verification_error": verification.error,
            "verification_failed_seq": failed_from,
            **_kind_fields(record, starts, blobs),
        }


def write_events(events: Iterator[dict[str, Any]], out: IO[bytes]) -> int:
    """Write each event as one line of JSON (UTF-8); return how many."""
    count = 0
    for event in events:
        out.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        count += 1
    return count


__all__ = [
    "SCHEMA_ID",
    "SCHEMA_VERSION",
    "Verification",
    "ledger_events",
    "numbered_records",
    "write_events",
]
