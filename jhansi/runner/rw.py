"""``--rw``: /work is a copy of the project, whose changes are applied to the
project as the invoking user when the run ends (what is refused or conflicts is
said, and kept for the user), or kept unapplied when the run did not finish."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from jhansi.config import Settings
from jhansi.errors import SandboxError
from jhansi.paths import Paths, ensure_private_dir
from jhansi.report import Reporter
from jhansi.runner.finish import WARNED
from jhansi.runner.spec import masked_paths
from jhansi.sandbox.changes import shown_name
from jhansi.sandbox.workspace import OpenSandbox

if TYPE_CHECKING:
    from jhansi.sandbox.layer import ApplyReport, Layer


def _layer_dir(sandbox: OpenSandbox, run_id: str) -> Path:
    if sandbox.directory is None:  # pragma: no cover - every OpenSandbox has one
        raise SandboxError("the sandbox has no directory for a --rw layer", hint="")
    return sandbox.directory / f"rw-{run_id}"


def copy_project(
    project: Path, sandbox: OpenSandbox, run_id: str, *, settings: Settings, reporter: Reporter
) -> Layer:
    """Copy the project into the sandbox's staging directory (mounted at /work)."""
    from jhansi.sandbox.layer import make_layer

    def progress(files: int, size: int) -> None:
        reporter.step("rw", f"copying the project: {files} files, {size >> 20} MiB")

    root = _layer_dir(sandbox, run_id)
    try:
        # As root, every backend runs the sandbox as another uid (1000, or a rootless
        # engine's subordinate uid), to whom the copy is handed: it must not show
        # what the read-only project would not.
        layer = make_layer(
            project,
            root,
            masked_paths(settings, project),
            progress=progress,
            others_only=os.getuid() == 0,
        )
    except OSError as exc:
        from jhansi.sandbox.workspace import remove_tree

        remove_tree(root)
        raise SandboxError(
            f"--rw: cannot copy the project into {root}: {exc.strerror or exc}",
            hint="Free space in jhansi's data directory, or run without --rw.",
        ) from None
    reporter.step(
        "rw",
        f"/work is a copy of the project ({layer.files} files, {layer.bytes >> 20} MiB, "
        f"{layer.seconds:.2f} s); its changes are applied when the run ends",
    )
    return layer


def _keep(layer: Layer, sandbox: OpenSandbox, run_id: str, paths: Paths) -> Path:
    """Where a layer that must outlive the run is kept (an ephemeral sandbox's
    directory is deleted, so its layer moves to the data directory)."""
    if not sandbox.ephemeral:
        return layer.root
    import shutil

    target = ensure_private_dir(paths.data / "rw-kept") / run_id
    shutil.move(layer.root, target)
    return target


def abandon_layer(
    layer: Layer, sandbox: OpenSandbox, run_id: str, *, paths: Paths, reporter: Reporter
) -> None:
    """The run did not finish: apply nothing; keep the layer only if it holds changes."""
    from jhansi.sandbox.layer import plan_changes
    from jhansi.sandbox.workspace import remove_tree

    try:
        pending = plan_changes(layer)
    except OSError:
        pending = []
    if not pending:
        remove_tree(layer.root)
        return
    where = _keep(layer, sandbox, run_id, paths)
    reporter.warning(
        f"--rw: the run did not finish, so none of its {len(pending)} change(s) to /work "
        f"were applied; they are in {where}"
    )


def apply_layer(
    layer: Layer, sandbox: OpenSandbox, run_id: str, *, paths: Paths, reporter: Reporter
) -> ApplyReport:
    """Apply the layer's changes to the project as the invoking user, and say what
    was refused or conflicted; remove the layer unless something must be kept."""
    from jhansi.sandbox.layer import ApplyReport, apply_changes, plan_changes
    from jhansi.sandbox.workspace import remove_tree

    try:
        report = apply_changes(layer, plan_changes(layer))
    except OSError as exc:
        report = ApplyReport(error=f"{exc.strerror or exc}")
    refused = report.by("refused")
    for outcome in refused[:WARNED]:
        reporter.warning(f"--rw: not applied: {shown_name(outcome.path)} ({outcome.reason})")
    if len(refused) > WARNED:
        reporter.warning(
            f"--rw: {len(refused) - WARNED} more change(s) not applied (refused); "
            "`jhansi ledger show` lists them all"
        )
    conflicts = report.by("conflict")
    if not conflicts and not report.error:
        remove_tree(layer.root)
        return report
    where = _keep(layer, sandbox, run_id, paths)
    for outcome in conflicts[:WARNED]:
        reporter.warning(
            f"--rw: not applied: {shown_name(outcome.path)} ({outcome.reason}); the "
            f"sandbox's version is in {shown_name(str(where / outcome.path))}"
        )
    if len(conflicts) > WARNED:
        reporter.warning(
            f"--rw: {len(conflicts) - WARNED} more conflict(s); the sandbox's versions "
            f"are in {shown_name(str(where))}"
        )
    if report.error:
        reporter.warning(
            f"--rw: applying the changes stopped ({report.error}); what was not applied "
            f"is in {where}: fix the cause, copy what you need from there, then delete it"
        )
    return replace(report, kept=where)
