"""How one run ended: :class:`RunResult`, and its JSON form.

The runner makes it; the CLI (``--json``), the Python API and the ledger's records
read it. :func:`result_document` is the ``jhansi run --json`` document, which the
ledger also keeps whole when a run's full ``exec.end`` cannot be recorded
(:func:`jhansi.records.fallback_end_body`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jhansi.deps.result import dependencies_document

if TYPE_CHECKING:
    from collections.abc import Mapping

    from jhansi.deps.missing import MissingDependency
    from jhansi.deps.result import Dependencies
    from jhansi.sandbox.changes import FileChange
    from jhansi.sandbox.interface import BackendInfo, OutputTail
    from jhansi.sandbox.layer import ApplyReport

__all__ = ["RunResult", "network_hints", "result_document"]


@dataclass(frozen=True, slots=True)
class RunResult:
    """How the run ended; frozen, so that what is shown is what is recorded."""

    run_id: str
    status: str
    exit_code: int | None
    signal: int | None
    duration_ms: int
    script: str
    project: str | None
    sandbox: str
    ephemeral: bool
    home: str
    backend: BackendInfo
    stdout: OutputTail
    stderr: OutputTail
    files_changed: tuple[FileChange, ...]
    enforcement: Mapping[str, str] = field(default_factory=dict)
    error: str = ""
    dependencies: Dependencies | None = None
    ledger: str | None = None
    """The ledger directory the run was recorded in."""
    record: str | None = None
    """The hash of the run's ``exec.end`` record."""
    egress: tuple[Mapping[str, object], ...] = ()
    """Every connection through the egress proxy: host, decision, reason, bytes."""
    rw: ApplyReport | None = None
    """With ``--rw``: which of the script's changes to /work were applied to the project,
    which refused and why, which conflicted with changes made on the host."""
    files_incomplete: str = ""
    """Why ``files_changed`` may miss changes (a snapshot's entry, depth or time budget
    ran out, or it failed); empty when the list is complete."""
    egress_dropped: int = 0
    """Connections through the proxy past its event cap: counted, not listed."""
    missing_dependency: MissingDependency | None = None
    """A failed run's ImportError named a known distribution it did not have: which,
    and the requirement that adds it (:mod:`jhansi.deps.missing`)."""
    layer: str | None = None
    """Where the run's writes to /work landed (the sandbox's layer over the project, its
    upper directory) when /work was copy-on-write; ``None`` otherwise."""


def result_document(result: RunResult) -> dict[str, Any]:
    """The ``--json`` document of a run."""

    def tail(t: Any) -> dict[str, Any]:
        return {
            "text": t.data.decode("utf-8", "replace"),
            "bytes": t.total,
            "truncated": t.truncated,
        }

    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "duration_ms": result.duration_ms,
        "run_id": result.run_id,
        "script": result.script,
        "project": result.project,
        "sandbox": result.sandbox,
        "ephemeral": result.ephemeral,
        "home": result.home,
        "backend": result.backend.backend,
        "backend_details": dict(result.backend.details),
        "enforcement": dict(result.enforcement),
        "stdout": tail(result.stdout),
        "stderr": tail(result.stderr),
        "files_changed": [c.as_dict() for c in result.files_changed],
        "files_incomplete": result.files_incomplete,
        **({"rw": result.rw.as_dict()} if result.rw is not None else {}),
        "error": "\n".join(part for part in (result.error, *network_hints(result)) if part),
        "missing_dependency": (
            result.missing_dependency.as_dict() if result.missing_dependency else None
        ),
        "layer": result.layer,
        "dependencies": dependencies_document(result.dependencies),
        "policy": (
            result.dependencies.supply.report.as_dict()
            if result.dependencies and result.dependencies.supply
            else None
        ),
        "egress": [dict(e) for e in result.egress],
        "egress_dropped": result.egress_dropped,
        "ledger": result.ledger,
        "record": result.record,
    }


def network_hints(result: RunResult) -> list[str]:
    """What a run with no network tried to reach, one line per destination, and the
    ``--allow-host`` that would allow it (the script itself saw only a refusal)."""
    if not result.egress:
        return []
    from jhansi.egress.attempts import run_hints

    more = f"`jhansi ledger show {result.run_id}` lists them all"
    return run_hints(result.egress, more=more, dropped=result.egress_dropped)
