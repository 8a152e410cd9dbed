"""What the dependency steps made for one script: :class:`Dependencies`.

Planning (:mod:`jhansi.deps.plan`), locking (:mod:`jhansi.deps.lock`), installing
(:mod:`jhansi.deps.install`) and the policy's check of the lock
(:mod:`jhansi.supply.policy`) each add their part; the runner composes them, and
the warm cache (:mod:`jhansi.deps.warm`), the SBOM and the ledger records read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jhansi.deps.install import Environment
    from jhansi.deps.plan import DependencyPlan
    from jhansi.deps.pylock import LockResult
    from jhansi.deps.target import Target
    from jhansi.supply.policy import SupplyCheck

__all__ = ["Dependencies", "dependencies_document"]


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What a script needs and what was locked and installed for it."""

    plan: DependencyPlan
    target: Target
    lock: LockResult | None = None
    environment: Environment | None = None
    supply: SupplyCheck | None = None
    """The policy's verdict on the lock, and the evidence it looked at."""


def dependencies_document(deps: Dependencies | None) -> dict[str, Any] | None:
    """The dependency part of ``--json`` documents (``run``, ``deps``, ``lock``)."""
    if deps is None:
        return None
    plan = deps.plan
    return {
        "mode": plan.mode,
        "python": deps.target.python_version,
        "target": deps.target.describe(),
        "platform": deps.target.uv_platform,
        "requires_python": plan.requires_python,
        "requirements": [
            {
                "name": r.name,
                "spec": r.spec,
                "source": r.source,
                "evidence": r.evidence,
                "imports": list(r.imports),
            }
            for r in plan.requirements
        ],
        "imports": [
            {
                "import": d.name,
                "kind": d.kind,
                "lines": list(d.lines),
                "requirement": d.requirement,
                "evidence": d.evidence,
                "alternatives": list(d.alternatives),
            }
            for d in plan.imports
        ],
        "unresolved": [
            {"import": d.name, "lines": list(d.lines), "reason": d.evidence}
            for d in plan.unresolved
        ],
        "lock_file": str(deps.lock.path) if deps.lock else None,
        "lock_reused": deps.lock.reused if deps.lock else None,
        "locked": [
            {"name": p.name, "version": p.version}
            for p in (deps.lock.packages if deps.lock else ())
        ],
        "environment": deps.environment.key if deps.environment else None,
        "environment_reused": deps.environment.reused if deps.environment else None,
    }
