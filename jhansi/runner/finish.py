"""The end of a run: what it changed, what it was missing, and its ``exec.end`` record.

Whatever the script did, the run ends in the ledger: the files it changed in the
watched directories (within a time budget, never raising for what the script left
behind), the distribution its ImportError names, and the result, recorded before it
is returned.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from jhansi.deps.result import Dependencies
from jhansi.errors import JhansiError, LedgerError
from jhansi.report import Reporter
from jhansi.request import Script
from jhansi.result import RunResult
from jhansi.sandbox.changes import FileChange, Snapshot, budget_for, compare, snapshot
from jhansi.sandbox.interface import WORKDIR, BackendInfo, ExecResult, ExecStatus
from jhansi.sandbox.workspace import OpenSandbox

if TYPE_CHECKING:
    from jhansi.deps.missing import MissingDependency
    from jhansi.egress.session import EgressSession
    from jhansi.ledger.store import Ledger
    from jhansi.sandbox.layer import ApplyReport
    from jhansi.sandbox.overlay import LayerDirs

#: Warnings of one kind shown per run (refused egress, refused --rw changes); the rest
#: are counted in one more line and listed in the ledger.
WARNED = 20


def changes_of(
    before: list[Snapshot],
    watched: list[tuple[Path, str, tuple[str, ...]]],
    timeout: float,
    layer: LayerDirs | None = None,
    *,
    reporter: Reporter,
) -> tuple[list[FileChange], str]:
    """What the run changed in the watched directories, and why that list may be
    incomplete. Within one budget (:func:`~jhansi.sandbox.changes.budget_for`: a
    quarter of the timeout, 5-60 s) for the snapshots, the diff and the hashing;
    never raises for what the script left behind (the run must still be recorded).
    With a copy-on-write ``layer``, /work's changes are read from its upper directory
    and said as the sandbox saw /work (:func:`~jhansi.sandbox.overlay.merged_changes`).
    """
    budget = budget_for(timeout)
    changes: list[FileChange] = []
    reasons: list[str] = []
    for old, (root, area, skip) in zip(before, watched, strict=True):
        try:
            after = snapshot(root, area, skip=skip, budget=budget)
            found = compare(old, after, budget)
            if layer is not None and area == WORKDIR:
                from jhansi.sandbox.overlay import merged_changes

                found = replace(found, changes=merged_changes(layer, found.changes, old, after))
        except (OSError, ValueError, RecursionError, MemoryError) as exc:
            reasons.append(f"{area}: the changes could not be listed ({exc})")
            continue
        changes += found.changes
        if found.incomplete:
            reasons.append(f"{area}: {found.incomplete}")
        if found.not_hashed:
            reporter.warning(
                f"{area}: {found.not_hashed} changed file(s) not hashed (over the hashing "
                "budget, or changed while read): recorded with their size and why"
            )
    if reasons:
        reporter.warning("the list of changed files is incomplete: " + "; ".join(reasons))
    return changes, "; ".join(reasons)


def record_end(
    ledger: Ledger,
    run_id: str,
    script: Script,
    project: Path | None,
    sandbox: OpenSandbox,
    info: BackendInfo,
    result: ExecResult,
    changes: list[FileChange],
    deps: Dependencies | None,
    egress: EgressSession | None = None,
    rw: ApplyReport | None = None,
    *,
    incomplete: str = "",
    missing: MissingDependency | None = None,
    layer: str | None = None,
) -> RunResult:
    """The result, once its ``exec.end`` record and a signed checkpoint are on disk.

    Whatever the script did, the record is written or this raises a
    :class:`LedgerError` (two lines, exit 5): a body that still cannot be recorded
    (a bug: :func:`~jhansi.records.end_body` bounds lists and escapes names) is
    stored whole as a blob, referenced from a minimal ``exec.end``.
    """
    from jhansi.records import end_body, fallback_end_body

    outcome = RunResult(
        run_id=run_id,
        status=result.status.value,
        exit_code=result.exit_code,
        signal=result.signal,
        duration_ms=result.duration_ms,
        script=script.display,
        project=str(project) if project else None,
        sandbox=sandbox.name,
        ephemeral=sandbox.ephemeral,
        home=str(sandbox.home),
        backend=info,
        stdout=result.stdout,
        stderr=result.stderr,
        files_changed=tuple(changes),
        enforcement=result.enforcement,
        error=result.error,
        dependencies=deps,
        ledger=str(ledger.directory),
        egress=tuple(egress.events()) if egress is not None else (),
        rw=rw,
        files_incomplete=incomplete,
        egress_dropped=egress.dropped_events() if egress is not None else 0,
        missing_dependency=missing,
        layer=layer,
    )
    try:
        try:
            record = ledger.append("exec.end", end_body(outcome, ledger.put_blob))
        except (ValueError, TypeError) as problem:
            record = ledger.append(
                "exec.end", fallback_end_body(outcome, ledger.put_blob, str(problem))
            )
        ledger.checkpoint()
    except JhansiError as exc:
        raise LedgerError(
            f"the run finished ({outcome.status}, exit {outcome.exit_code}) but its end "
            f"record could not be written: {exc.message}",
            hint="The ledger has an unpaired exec.start for run "
            f"{run_id}; fix the ledger's disk ({exc.hint}) before running again.",
        ) from exc
    except OSError as exc:  # a write the ledger did not wrap (disk full mid-append)
        raise LedgerError(
            f"the run finished ({outcome.status}, exit {outcome.exit_code}) but its end "
            f"record could not be written: {exc.strerror or exc}",
            hint="The ledger has an unpaired exec.start for run "
            f"{run_id}; free space on the ledger's disk, then run `jhansi ledger verify`.",
        ) from None
    return replace(outcome, record=record.hash)


def missing_dependency(result: ExecResult, deps: Dependencies | None) -> MissingDependency | None:
    """For a failed run, the distribution its ImportError names and it did not have."""
    data = result.stderr.data
    if result.status is not ExecStatus.FAILED or (
        b"ImportError" not in data and b"ModuleNotFoundError" not in data
    ):
        return None
    from jhansi.deps.missing import recognize

    locked = deps.lock.packages if deps is not None and deps.lock is not None else ()
    return recognize(data, installed=[package.name for package in locked])
