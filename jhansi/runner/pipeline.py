"""The pipeline of one ``jhansi run``, as a readable list of steps.

``Runner.run(request)`` → read and check the script (:mod:`.script`) → plan, lock
and install its dependencies (:mod:`.dependencies`) → hold the named sandbox →
choose the backend (:mod:`.backend`) → build the :class:`SandboxSpec`
(:mod:`.spec`, with the ``--rw`` copy of :mod:`.rw` and the egress proxy of
:mod:`.egress`) → snapshot the writable directories → record ``exec.start`` → run
→ diff and record ``exec.end`` (:mod:`.finish`) → :class:`RunResult`.

Nothing here prints, prompts or exits: progress goes to the :class:`Reporter`,
refusals are :class:`~jhansi.errors.JhansiError`, and how the script ended is
data in the result.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

from jhansi.config import Settings
from jhansi.deps.plan import unresolved_error
from jhansi.deps.result import Dependencies
from jhansi.errors import JhansiError, LedgerError, SandboxError
from jhansi.paths import Paths
from jhansi.report import NullReporter, Reporter
from jhansi.request import RunRequest, Script
from jhansi.result import RunResult
from jhansi.runner.backend import select_backend
from jhansi.runner.dependencies import DependencyStep
from jhansi.runner.egress import Sink, open_egress, report_refusals, scrub_result
from jhansi.runner.finish import changes_of, missing_dependency, record_end
from jhansi.runner.rw import abandon_layer, apply_layer, copy_project
from jhansi.runner.script import new_run_id, prepare_script, remove_quietly, write_file
from jhansi.runner.spec import (
    READ_ONLY_WORK,
    Cow,
    bare_spec,
    build_spec,
    copy_on_write,
    run_limits,
)
from jhansi.sandbox.changes import Snapshot, budget_for, snapshot
from jhansi.sandbox.interface import (
    HOME,
    WORKDIR,
    Backend,
    BackendInfo,
    ExecResult,
    ExecStatus,
    Limits,
    OutputTail,
)
from jhansi.sandbox.workspace import OpenSandbox, Workspace, default_name, validate_name

if TYPE_CHECKING:
    from jhansi.egress.session import EgressSession
    from jhansi.ledger.store import Ledger
    from jhansi.sandbox.layer import Layer


class Runner:
    """Runs scripts with one set of settings."""

    def __init__(
        self,
        *,
        settings: Settings,
        paths: Paths,
        reporter: Reporter,
        backend: Backend | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.settings = settings
        self.paths = paths
        self.reporter = reporter
        self._backend = backend
        self._ledger = ledger
        self.workspace = Workspace.from_paths(paths)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        paths: Paths | None = None,
        reporter: Reporter | None = None,
        backend: Backend | None = None,
        ledger: Ledger | None = None,
    ) -> Runner:
        """A runner for ``settings``; the backend is chosen on first use unless given, and
        the ledger is the one the settings name unless given."""
        return cls(
            settings=settings,
            paths=paths or Paths.from_environment(),
            reporter=reporter or NullReporter(),
            backend=backend,
            ledger=ledger,
        )

    @property
    def ledger(self) -> Ledger:
        """Where every run and refusal is recorded."""
        if self._ledger is None:
            from jhansi.ledger.store import Ledger

            self._ledger = Ledger.from_settings(self.settings, paths=self.paths)
        return self._ledger

    @property
    def backend(self) -> Backend:
        """The sandbox backend (chosen once, on first use)."""
        if self._backend is None:
            self._backend = select_backend(self.settings, self.reporter, self.paths)
        return self._backend

    def limits(self) -> Limits:
        """The resource limits from the settings."""
        return run_limits(self.settings)

    def run(self, request: RunRequest) -> RunResult:
        """Run one script (or an interactive interpreter) in its sandbox, recorded."""
        run_id = new_run_id()
        # 0. the ledger can be written, or nothing runs (fail closed)
        ledger = self.ledger
        ledger.preflight()
        script: Script | None = None
        deps: Dependencies | None = None
        try:
            # 1. the script: read and parsed on the host, so bad input never starts a sandbox
            script, project = self._prepare_script(request, run_id)
            # 2. dependencies: planned, locked and installed before any sandbox starts
            if not request.interactive:
                deps = self._dependencies(request, script, run_id, refuse_unresolved=False)
                if deps.plan.unresolved:
                    raise unresolved_error(deps.plan, script.display)
            # 3. the named sandbox, held for the whole run, and the run itself (recorded
            #    as exec.start before and exec.end after)
            return self._in_sandbox(request, run_id, script, project, deps)
        except JhansiError as refusal:
            deps = getattr(refusal, "dependencies", None) or deps
            if not refusal.recorded and not isinstance(refusal, LedgerError):
                from jhansi.records import denied_body

                ledger.append(
                    "exec.denied",
                    denied_body(
                        request,
                        run_id,
                        script,
                        refusal,
                        deps,
                        ledger.put_blob,
                        config=[f.as_record() for f in self.settings.provenance],
                    ),
                )
                ledger.checkpoint()
            raise
        finally:
            if script is not None and script.from_stdin:
                remove_quietly(script.host_path)

    def refuse(self, request: RunRequest, refusal: JhansiError) -> NoReturn:
        """Record ``refusal``, which came before the run could start (an untrusted project
        configuration: these settings are the user's own, without it), then raise it."""
        from jhansi.records import denied_body

        ledger = self.ledger
        ledger.preflight()
        ledger.append(
            "exec.denied",
            denied_body(
                request,
                new_run_id(),
                None,
                refusal,
                None,
                ledger.put_blob,
                config=[f.as_record() for f in self.settings.provenance],
            ),
        )
        ledger.checkpoint()
        refusal.recorded = True
        raise refusal

    def dependencies(
        self,
        request: RunRequest,
        *,
        install: bool = False,
        refuse_unresolved: bool = True,
        policy: bool = False,
    ) -> Dependencies:
        """Plan and lock (and with ``install``, install) what a script needs; run nothing.

        Without ``refuse_unresolved``, unresolved imports are returned in the plan
        (nothing is locked then) instead of raised: ``jhansi deps`` shows them. With
        ``policy``, the lock is checked against the policy and the verdict returned in
        :attr:`Dependencies.supply` (a denial is data here, not an error: ``jhansi check``).
        """
        run_id = new_run_id()
        script, _ = self._prepare_script(request, run_id)
        try:
            return self._dependencies(
                request,
                script,
                run_id,
                install=install,
                refuse_unresolved=refuse_unresolved,
                policy="report" if policy else "skip",
            )
        finally:
            if script.from_stdin:
                remove_quietly(script.host_path)

    def sbom(self, request: RunRequest) -> bytes:
        """The CycloneDX SBOM of what ``request`` would run (planned, locked, checked)."""
        run_id = new_run_id()
        script, _ = self._prepare_script(request, run_id)
        try:
            deps = self._dependencies(request, script, run_id, install=False, policy="report")
            return self._sbom(script, deps, None)
        finally:
            if script.from_stdin:
                remove_quietly(script.host_path)

    def _sbom(self, script: Script, deps: Dependencies, info: BackendInfo | None) -> bytes:
        from jhansi.supply.sbom_cache import cached_sbom

        # The document kept for these inputs, or made from the template kept for the same
        # dependencies (a new script): without the builder or the CycloneDX library.
        kept = cached_sbom(
            script_name=script.display,
            script_bytes=script.text.encode("utf-8"),
            deps=deps,
            backend=info,
            image=self.settings.sandbox.image,
            cache_dir=self.paths.cache,
        )
        if kept is not None:
            return kept
        from jhansi.supply.sbom import sbom_for_run

        return sbom_for_run(
            script_name=script.display,
            script_bytes=script.text.encode("utf-8"),
            deps=deps,
            backend=info,
            image=self.settings.sandbox.image,
            cache_dir=self.paths.cache,
        )

    def _prepare_script(self, request: RunRequest, run_id: str) -> tuple[Script, Path | None]:
        return prepare_script(
            request, run_id, settings=self.settings, paths=self.paths, reporter=self.reporter
        )

    def _dependencies(
        self,
        request: RunRequest,
        script: Script,
        run_id: str,
        *,
        install: bool = True,
        refuse_unresolved: bool = True,
        policy: Literal["enforce", "report", "skip"] = "enforce",
    ) -> Dependencies:
        backend = self.backend
        target = backend.target(bare_spec(self.settings, backend, run_id))
        return DependencyStep(self.settings, self.paths, self.reporter).resolve(
            request,
            script,
            target,
            install=install,
            refuse_unresolved=refuse_unresolved,
            policy=policy,
        )

    def _in_sandbox(
        self,
        request: RunRequest,
        run_id: str,
        script: Script,
        project: Path | None,
        deps: Dependencies | None,
    ) -> RunResult:
        """Hold the named (or an ephemeral) sandbox and run in it."""
        name = validate_name(request.sandbox) if request.sandbox else None
        opener = (
            self.workspace.ephemeral()
            if request.ephemeral
            else self.workspace.open(
                name or default_name(project or (script.host_path.parent)),
                project=project,
                on_wait=lambda message: self.reporter.step("waiting", message),
                on_warning=self.reporter.warning,
            )
        )
        egress, egress_note = open_egress(
            request,
            settings=self.settings,
            paths=self.paths,
            reporter=self.reporter,
            backend=lambda: self.backend,
        )
        try:
            with opener as sandbox:
                return self._run_in(
                    request, run_id, script, project, sandbox, deps, egress, egress_note
                )
        finally:
            if egress is not None:
                egress.close()

    def _run_in(
        self,
        request: RunRequest,
        run_id: str,
        script: Script,
        project: Path | None,
        sandbox: OpenSandbox,
        deps: Dependencies | None,
        egress: EgressSession | None = None,
        egress_note: str = "",
    ) -> RunResult:
        backend = self.backend
        runtime = self.settings.sandbox.runtime
        if runtime and backend.name != "docker":
            raise SandboxError(
                f"the OCI runtime {runtime!r} needs the docker backend, not {backend.name}",
                hint="Run with --backend docker (an engine with that runtime registered), "
                "or unset [sandbox] runtime.",
            )
        layer = (
            copy_project(project, sandbox, run_id, settings=self.settings, reporter=self.reporter)
            if project is not None and request.rw
            else None
        )
        cow: Cow | None = None
        work = ""
        if layer is not None:
            work = "a copy of the project (--rw), applied to the project when the run ends"
        elif project is not None:
            found = copy_on_write(project, sandbox, run_id, settings=self.settings, backend=backend)
            if isinstance(found, Cow):
                cow = found
            else:
                # Said in enforcement, and in the hint when a write fails (not before
                # every run: most scripts never write there, and -q stays quiet).
                work = f"{READ_ONLY_WORK}{found})"
        try:
            return self._run_with(
                request,
                run_id,
                script,
                project,
                sandbox,
                deps,
                egress,
                backend,
                layer,
                egress_note,
                cow,
                work,
            )
        except BaseException:
            if layer is not None:
                abandon_layer(layer, sandbox, run_id, paths=self.paths, reporter=self.reporter)
            raise
        finally:
            if cow is not None:
                from jhansi.sandbox.overlay import finish_run

                finish_run(cow.dirs)

    def _run_with(
        self,
        request: RunRequest,
        run_id: str,
        script: Script,
        project: Path | None,
        sandbox: OpenSandbox,
        deps: Dependencies | None,
        egress: EgressSession | None,
        backend: Backend,
        layer: Layer | None,
        egress_note: str = "",
        cow: Cow | None = None,
        work: str = "",
    ) -> RunResult:
        spec, masked_top = build_spec(
            request,
            run_id,
            script,
            project,
            sandbox,
            deps,
            egress,
            settings=self.settings,
            reporter=self.reporter,
            layer=layer,
            cow=cow,
        )
        info = backend.info(spec)
        if backend.selection:
            info = replace(info, details={**info.details, "selected": backend.selection})
        self.reporter.step(
            "sandbox",
            f"{sandbox.name}{' (ephemeral)' if sandbox.ephemeral else ''} on {info.backend}",
        )
        watched: list[tuple[Path, str, tuple[str, ...]]] = [(sandbox.home, HOME, ())]
        if layer is not None:
            watched.append((layer.root, WORKDIR, tuple(masked_top)))
        elif cow is not None:
            watched.append((cow.dirs.upper, WORKDIR, ()))
        before: list[Snapshot] = []
        stdin = sys.stdin.buffer if request.interactive else None
        state = {"started": False, "failed": False}

        def record_start() -> None:
            """Snapshot what the run may change and write exec.start: before any of the
            script's code runs, while the sandbox may already be booting (at its gate)."""
            if state["started"]:
                return
            from jhansi.records import sandbox_fields, start_body

            try:
                # Bounded (entries, depth, time): the home may hold what an earlier run
                # left to make this one slow; past the budget the list is incomplete.
                budget = budget_for(spec.limits.timeout)
                before[:] = [
                    snapshot(root, area, skip=skip, budget=budget) for root, area, skip in watched
                ]
                ledger = self.ledger
                where = sandbox_fields(sandbox.name, sandbox.ephemeral, spec, info)
                sbom = self._sbom(script, deps, info) if deps is not None else None
                if sbom is not None and request.sbom is not None:
                    write_file(request.sbom, sbom)
                ledger.append(
                    "exec.start",
                    start_body(
                        request,
                        run_id,
                        script,
                        deps,
                        where,
                        ledger.put_blob,
                        sbom=sbom,
                        secrets=egress.secrets() if egress else [],
                        egress=egress.record() if egress and not egress.no_network else None,
                        config=[f.as_record() for f in self.settings.provenance],
                    ),
                )
            except BaseException:
                state["failed"] = True
                raise
            state["started"] = True

        # Nothing to scrub where no secret is bound (a run with no network, or hosts only).
        scrub = egress if egress is not None and egress.has_secrets else None
        sink = Sink(self.reporter, scrub)
        try:
            result: ExecResult = backend.run(spec, sink, stdin=stdin, before_start=record_start)
            # A backend that gave up before starting anything (an engine error) still
            # ran through the ledger: its start and its end are recorded.
            record_start()
            sink.flush()
            if egress_note:
                result = replace(result, enforcement={**result.enforcement, "egress": egress_note})
            if scrub is not None:
                result = scrub_result(result, scrub)
            if egress is not None:
                report_refusals(egress, self.reporter)
        except (KeyboardInterrupt, JhansiError) as stopped:
            if state["failed"]:
                raise  # exec.start could not be written: nothing ran, nothing to end
            # Started, so it ends in the ledger too: never an unpaired start we caused
            # (and a failure before the start is recorded as a start and its end).
            record_start()
            empty = OutputTail(b"", 0, False)
            why = "interrupted (Ctrl-C)" if isinstance(stopped, KeyboardInterrupt) else str(stopped)
            status = (
                ExecStatus.FAILED
                if isinstance(stopped, KeyboardInterrupt)
                else (ExecStatus.ENGINE_ERROR)
            )
            ended = ExecResult(status, None, None, 0, empty, empty, error=why)
            record_end(
                self.ledger, run_id, script, project, sandbox, info, ended, [], deps, egress, None
            )
            # (the layer, if any, is kept or removed by _run_in: nothing is applied)
            if isinstance(stopped, JhansiError):
                stopped.recorded = True
            raise
        changes, incomplete = changes_of(
            before,
            watched,
            spec.limits.timeout,
            cow.dirs if cow is not None else None,
            reporter=self.reporter,
        )
        missing = missing_dependency(result, deps)
        if missing is not None:
            self.reporter.warning(missing.message())
        if cow is not None:
            from jhansi.sandbox.overlay import note_baselines

            try:
                note_baselines(cow.dirs, [c.path for c in changes if c.area == WORKDIR])
            except OSError as exc:
                self.reporter.warning(f"cannot note what the project held: {exc}")
        if work and "work" not in result.enforcement:
            result = replace(result, enforcement={**result.enforcement, "work": work})
        applied = None
        if layer is not None:
            try:
                applied = apply_layer(
                    layer, sandbox, run_id, paths=self.paths, reporter=self.reporter
                )
            except OSError as exc:  # keeping the layer failed (disk full): it stays put
                from jhansi.sandbox.layer import ApplyReport

                applied = ApplyReport(kept=layer.root, error=f"{exc.strerror or exc}")
        return record_end(
            self.ledger,
            run_id,
            script,
            project,
            sandbox,
            info,
            result,
            changes,
            deps,
            egress,
            applied,
            incomplete=incomplete,
            missing=missing,
            layer=str(cow.dirs.upper) if cow is not None else None,
        )
