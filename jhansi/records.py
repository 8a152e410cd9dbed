"""The bodies of the ledger records a run writes: ``exec.start``, ``exec.end``, ``exec.denied``.

Content goes by reference (``{"blob": <BLAKE3>}``): the code, the prompt, the lock
and the output tails are stored as blobs, and the record holds their hashes. No
floats (RFC 8785 canonical bytes must be exact): durations are integer
milliseconds, CPUs integer millicpus. Secrets never appear here: a later step
records secret *names* and hosts only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jhansi._version import __version__

if TYPE_CHECKING:
    from jhansi.errors import JhansiError
    from jhansi.runner import Dependencies, RunRequest, RunResult, Script
    from jhansi.sandbox.interface import BackendInfo, OutputTail, SandboxSpec

PutBlob = Callable[[bytes], str]


def _blob(put: PutBlob, data: bytes) -> dict[str, Any]:
    import blake3

    return {"blob": put(data), "size": len(data), "blake3": blake3.blake3(data).hexdigest()}


def who() -> dict[str, Any]:
    """The actor (user, uid, host; in CI the CI's claims, never a token)."""
    from jhansi.ledger.identity import actor_identity

    return {"actor": actor_identity()}


def script_fields(script: Script, put: PutBlob) -> dict[str, Any]:
    """The code that ran (or was refused), by reference."""
    return {"path": script.display, **_blob(put, script.text.encode("utf-8"))}


def prompt_fields(request: RunRequest, put: PutBlob) -> dict[str, Any] | None:
    """The prompt and model that produced the code, when the caller said."""
    if request.prompt is None and request.model is None:
        return None
    found: dict[str, Any] = {"model": request.model}
    if request.prompt is not None:
        found["prompt"] = _blob(put, request.prompt.encode("utf-8"))
    return found


def dependency_fields(deps: Dependencies | None, put: PutBlob) -> dict[str, Any] | None:
    """Requirements with their provenance, the lock (as a blob) and the environment key."""
    if deps is None:
        return None
    lock = deps.lock
    return {
        "mode": deps.plan.mode,
        "target": deps.target.describe(),
        "target_tags": deps.target.tags,
        "requirements": [
            {
                "name": r.name,
                "spec": r.spec,
                "source": r.source,
                "evidence": r.evidence,
                "imports": list(r.imports),
            }
            for r in deps.plan.requirements
        ],
        "imports": [
            {"import": d.name, "kind": d.kind, "requirement": d.requirement}
            for d in deps.plan.imports
        ],
        "lock": (
            {"path": str(lock.path), **_blob(put, lock.content or lock.path.read_bytes())}
            if lock
            else None
        ),
        "locked": [{"name": p.name, "version": p.version} for p in lock.packages] if lock else [],
        "environment": deps.environment.key if deps.environment else None,
    }


def policy_fields(deps: Dependencies | None) -> dict[str, Any] | None:
    """The policy's report: findings with evidence, ignored ones, the vulnerability source."""
    if deps is None or deps.supply is None:
        return None
    return deps.supply.report.as_dict()


def sandbox_fields(
    name: str, ephemeral: bool, spec: SandboxSpec, info: BackendInfo
) -> dict[str, Any]:
    """Where and how it ran: backend identity, mounts, limits, network."""
    limits = spec.limits
    return {
        "name": name,
        "ephemeral": ephemeral,
        "backend": info.backend,
        "details": dict(info.details),
        "network": spec.network,
        "uid": spec.uid,
        "mounts": [
            {"source": str(m.source), "target": m.target, "read_only": m.read_only, "kind": m.kind}
            for m in spec.mounts
        ],
        "limits": {
            "memory_bytes": limits.memory,
            "millicpus": round(limits.cpus * 1000),
            "pids": limits.pids,
            "tmp_bytes": limits.tmp_size,
            "timeout_ms": round(limits.timeout * 1000),
            "output_limit_bytes": limits.output_limit,
        },
        "env_names": sorted(spec.env),
    }


def start_body(
    request: RunRequest,
    run_id: str,
    script: Script,
    deps: Dependencies | None,
    sandbox: dict[str, Any],
    put: PutBlob,
    *,
    sbom: bytes | None = None,
    secrets: list[dict[str, Any]] | None = None,
    egress: dict[str, Any] | None = None,
    config: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``exec.start``: written before the sandbox starts (a crash leaves it unpaired).

    ``secrets``: the names and hosts of the secrets bound (never a value); ``egress``:
    the hosts the sandbox may reach through the proxy; ``config``: the configuration
    files that applied (:meth:`jhansi.config.ConfigFile.as_record`).
    """
    return {
        "run_id": run_id,
        **who(),
        "jhansi": __version__,
        "host_python": ".".join(map(str, sys.version_info[:3])),
        "pid": os.getpid(),
        "prompt": prompt_fields(request, put),
        "script": script_fields(script, put),
        "argv": list(request.args),
        "interactive": request.interactive,
        "dependencies": dependency_fields(deps, put),
        "sandbox": sandbox,
        "policy": policy_fields(deps),
        "sbom": _blob(put, sbom) if sbom is not None else None,
        "secrets": secrets or [],
        "egress": egress,
        "config": config or [],
    }


def _tail(tail: OutputTail, put: PutBlob) -> dict[str, Any]:
    return {"bytes": tail.total, "truncated": tail.truncated, **_blob(put, tail.data)}


def end_body(result: RunResult, put: PutBlob) -> dict[str, Any]:
    """``exec.end``: how it ended, the output (by reference), what it changed.

    ``rw`` (``--rw`` runs only): the changes to /work applied to the project, those
    refused (with why: configuration, ``.git``, masked ...), those that conflicted with
    changes made on the host, and where the layer was kept, if it was.
    """
    return {
        "run_id": result.run_id,
        "result": {
            "status": result.status,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "duration_ms": result.duration_ms,
            "error": result.error,
        },
        "stdout": _tail(result.stdout, put),
        "stderr": _tail(result.stderr, put),
        "enforcement": dict(result.enforcement),
        "files_changed": [c.as_dict() for c in result.files_changed],
        "egress": [dict(e) for e in result.egress],
        **({"rw": result.rw.as_dict()} if result.rw is not None else {}),
    }


def denied_body(
    request: RunRequest,
    run_id: str,
    script: Script | None,
    error: JhansiError,
    deps: Dependencies | None,
    put: PutBlob,
    *,
    config: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``exec.denied``: a refusal (bad input, unresolved import, policy …), with why, and
    the configuration files that applied (``config``, as in ``exec.start``)."""
    body: dict[str, Any] = {
        "run_id": run_id,
        **who(),
        "jhansi": __version__,
        "prompt": prompt_fields(request, put),
        "script": (
            script_fields(script, put)
            if script is not None
            else {"path": str(request.script) if request.script else "<stdin>"}
        ),
        "argv": list(request.args),
        "reason": {
            "kind": type(error).__name__,
            "message": error.message,
            "hint": error.hint,
            "exit_code": int(error.exit_code),
        },
        "dependencies": dependency_fields(deps, put),
        "policy": policy_fields(deps),
        "config": config or [],
    }
    if deps is not None and deps.plan.unresolved:
        body["unresolved"] = [
            {"import": d.name, "lines": list(d.lines)} for d in deps.plan.unresolved
        ]
    return body
