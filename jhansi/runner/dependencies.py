"""A run's dependencies: planned, locked, checked against the policy and installed
before any sandbox starts, or reused from an earlier decision (the warm path).

What the script imports is planned for the sandbox's target; when the same needs
were decided before (for this script or another), the lock, the verdict and the
environment are reused with no uv call (:mod:`jhansi.deps.warm`); otherwise each
step is done and its outcome kept for the next run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jhansi.config import Settings
from jhansi.deps.plan import DependencyPlan, plan, unresolved_error
from jhansi.deps.result import Dependencies
from jhansi.deps.target import Target
from jhansi.paths import Paths, ensure_private_dir
from jhansi.report import Reporter
from jhansi.request import RunRequest, Script

if TYPE_CHECKING:
    from jhansi.deps.pylock import LockResult
    from jhansi.supply.policy import SupplyCheck


@dataclass(frozen=True, slots=True)
class DependencyStep:
    """Decides what a script needs, with one set of settings, reporting progress."""

    settings: Settings
    paths: Paths
    reporter: Reporter

    def resolve(
        self,
        request: RunRequest,
        script: Script,
        target: Target,
        *,
        install: bool = True,
        refuse_unresolved: bool = True,
        policy: Literal["enforce", "report", "skip"] = "enforce",
    ) -> Dependencies:
        """What ``script`` needs on ``target``: planned, then reused from an earlier
        decision for the same needs (no uv call), or locked, checked against the
        policy (``policy``) and, with ``install``, installed."""
        roots: tuple[Path, ...] = (
            (script.host_path.parent,) if not script.from_stdin else (Path.cwd(),)
        )
        if request.project is not None:
            roots = (*roots, request.project)
        # The script's own part: the only per-script work when its needs were met before.
        decided = plan(
            script.text,
            where=script.display,
            target=target,
            local_roots=roots,
            with_requirements=request.with_requirements,
            requirements_file=request.requirements_file,
        )
        warm = (
            install
            and policy == "enforce"
            and not request.upgrade
            and decided.requirements
            and not decided.unresolved
        )
        if not warm:
            return self._decide(
                request, script, decided, target, install, refuse_unresolved, policy
            )
        # What it needs was decided before (for this script or another): the lock, the
        # verdict and the environment are reused with no uv call (deps/warm.py).
        from jhansi.deps import warm as warm_cache
        from jhansi.deps.uv import resolver_settings

        today = time.strftime("%Y-%m-%d", time.gmtime())
        lock_path = self._lock_path(request, script, decided, target)
        try:
            lock_bytes: bytes | None = lock_path.read_bytes()
        except OSError:
            lock_bytes = None
        resolver = resolver_settings()

        def key_for(content: bytes | None) -> str:
            return warm_cache.decision_key(
                requirements=decided.specs,
                target=target,
                lock_bytes=content,
                frozen=request.frozen,
                exclude_newer=request.exclude_newer,
                resolver=resolver,
                policy=self.settings.policy,
                today=today,
            )

        key = key_for(lock_bytes)
        reused = warm_cache.load(
            self.paths.cache,
            key,
            plan=decided,
            target=target,
            lock_path=lock_path,
            lock_bytes=lock_bytes,
        )
        if reused is not None and lock_bytes is None and reused.lock is not None:
            # A new script: the lock made before for the same needs, where it expects it.
            from jhansi.deps.lock import write_atomically

            try:
                write_atomically(lock_path, reused.lock.content)
            except OSError:
                reused = None  # the slow way says what is wrong with the place
        if reused is not None:
            self._replay(reused)
            return reused
        checked = self._decide(
            request, script, decided, target, install, refuse_unresolved, policy, lock_path
        )
        if today == time.strftime("%Y-%m-%d", time.gmtime()):
            after = checked.lock.content if checked.lock is not None else lock_bytes
            warm_cache.store(self.paths.cache, key, checked, with_lock=lock_bytes is None)
            if after != lock_bytes:
                warm_cache.store(self.paths.cache, key_for(after), checked)
        return checked

    def _replay(self, deps: Dependencies) -> None:
        """Tell the reporter what deciding ``deps`` anew would have told it."""
        if deps.lock is not None:
            self.reporter.step(
                "lock", f"{len(deps.plan.requirements)} requirement(s) for {deps.target.describe()}"
            )
            self.reporter.step("policy", f"checking {len(deps.lock.packages)} locked package(s)")
        if deps.supply is not None:
            for finding in deps.supply.report.warnings:
                self.reporter.warning(f"policy: {finding.message}")

    def _decide(
        self,
        request: RunRequest,
        script: Script,
        decided: DependencyPlan,
        target: Target,
        install: bool,
        refuse_unresolved: bool,
        policy: Literal["enforce", "report", "skip"],
        lock_path: Path | None = None,
    ) -> Dependencies:
        """Lock, check and install what ``decided`` needs (the slow way, every step done)."""
        if decided.unresolved:
            if refuse_unresolved:
                raise unresolved_error(decided, script.display)
            return Dependencies(plan=decided, target=target)
        if not decided.requirements:
            return Dependencies(plan=decided, target=target, supply=self._policy(None, policy))
        from jhansi.deps.lock import lock

        self.reporter.step(
            "lock", f"{len(decided.requirements)} requirement(s) for {target.describe()}"
        )
        locked = lock(
            decided.specs,
            target,
            lock_file=lock_path or self._lock_path(request, script, decided, target),
            frozen=request.frozen,
            upgrade=request.upgrade,
            exclude_newer=request.exclude_newer,
            reporter=self.reporter,
            fix_command=f"jhansi lock {script.display}",
            cache_dir=self.paths.cache,
        )
        supply = self._policy(locked, policy)
        checked = Dependencies(plan=decided, target=target, lock=locked, supply=supply)
        if policy == "enforce" and supply is not None and supply.report.denied:
            from jhansi.supply.policy import PolicyDenied

            denial = PolicyDenied(supply.report, script.display)
            denial.dependencies = checked
            raise denial
        if policy == "enforce" and supply is not None:
            for finding in supply.report.warnings:
                self.reporter.warning(f"policy: {finding.message}")
        if not install:
            return checked
        from jhansi.deps.install import install as install_environment

        environment = install_environment(
            locked, target, cache_dir=self.paths.cache, reporter=self.reporter
        )
        return replace(checked, environment=environment)

    def _policy(
        self, locked: LockResult | None, mode: Literal["enforce", "report", "skip"]
    ) -> SupplyCheck | None:
        """The policy's verdict on a lock (before anything is installed)."""
        if mode == "skip":
            return None
        from jhansi.supply.policy import check_lock

        return check_lock(
            locked,
            settings=self.settings.policy,
            cache_dir=self.paths.cache,
            reporter=self.reporter,
        )

    def _lock_path(
        self, request: RunRequest, script: Script, decided: DependencyPlan, target: Target
    ) -> Path:
        if request.lock_file is not None:
            return request.lock_file.absolute()
        if script.from_stdin:
            # Code from stdin has no place of its own: its lock is kept in the cache, one
            # per requirement set and target (every new snippet that needs numpy shares it).
            from jhansi.deps.lock import inputs_digest, normalize_requirement

            needs = sorted({normalize_requirement(r) for r in decided.specs})
            digest = inputs_digest(needs, target, request.exclude_newer)[:16]
            return ensure_private_dir(self.paths.cache / "locks") / f"pylock.stdin-{digest}.toml"
        # PEP 751 names are pylock.<name>.toml with no dots in <name>.
        name = script.host_path.stem.replace(".", "-")
        return script.host_path.with_name(f"pylock.{name}.toml")
