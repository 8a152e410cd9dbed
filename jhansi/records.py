"""The bodies of the ledger records a run writes: ``exec.start``, ``exec.end``, ``exec.denied``.

Content goes by reference (``{"blob": <BLAKE3>}``): the code, the prompt, the lock
and the output tails are stored as blobs, and the record holds their hashes. No
floats (RFC 8785 canonical bytes must be exact): durations are integer
milliseconds, CPUs integer millicpus. Secrets never appear here: a later step
records secret *names* and hosts only.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from jhansi._version import __version__

if TYPE_CHECKING:
    from jhansi.deps.result import Dependencies
    from jhansi.errors import JhansiError
    from jhansi.request import RunRequest, Script
    from jhansi.result import RunResult
    from jhansi.sandbox.interface import BackendInfo, OutputTail, SandboxSpec

PutBlob = Callable[[bytes], str]

#: A list in a record keeps at most this many items in the record itself ...
LIST_HEAD_ITEMS = 100
#: ... and at most this many bytes of them (canonical JSON); the whole list is a blob.
LIST_HEAD_BYTES = 64 << 10
#: Longest error text kept in a record (the engine's message; the rest is cut).
MAX_ERROR_CHARS = 4096


def _blob(put: PutBlob, data: bytes) -> dict[str, Any]:
    import blake3

    return {"blob": put(data), "size": len(data), "blake3": blake3.blake3(data).hexdigest()}


def recordable(value: Any) -> Any:
    """``value`` with every string that is not UTF-8 made recordable, reversibly.

    Names from the file system (a script's file name, a file the script made, a
    path in an error message) and arguments arrive as :func:`os.fsdecode` gives
    them: bytes that are not UTF-8 are lone surrogates, which the ledger's canonical
    JSON cannot hold. In a dict, such a string ``key`` becomes its ``\\xNN``-escaped
    text and ``key_b64`` holds the exact bytes (:func:`jhansi.sandbox.changes.name_fields`);
    in a list, the item becomes ``{"text": ..., "text_b64": ...}``. Anything else is
    returned as it is.
    """
    from jhansi.sandbox.changes import name_fields

    if isinstance(value, str):
        return value if _utf8(value) else name_fields("text", value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, str) and not _utf8(item):
                out.update(name_fields(str(key), item))
            else:
                out[key] = recordable(item)
        return out
    if isinstance(value, (list, tuple)):
        return [recordable(item) for item in value]
    return value


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bounded_list(name: str, items: list[Any], put: PutBlob) -> dict[str, Any]:
    """``{name: items}`` for a short list; else its head, its count and the whole list.

    A script decides how long these lists are (the files it makes, the connections
    it opens); a record must stay small whatever it did. Past :data:`LIST_HEAD_ITEMS`
    items or :data:`LIST_HEAD_BYTES` bytes, ``name`` holds the first items that fit,
    ``name_count`` the length of the whole list, and ``name_full`` a blob of the whole
    list as JSON Lines (one canonical JSON item per line, in order): nothing is lost.
    """
    from jhansi.ledger.record import canonical

    items = [recordable(item) for item in items]
    head: list[Any] = []
    used = 2
    for item in items:
        if len(head) >= LIST_HEAD_ITEMS:
            break
        size = len(canonical(item)) + 1
        if used + size > LIST_HEAD_BYTES:
            break
        head.append(item)
        used += size
    if len(head) == len(items):
        return {name: items}
    lines = b"".join(canonical(item) + b"\n" for item in items)
    return {
        name: head,
        f"{name}_count": len(items),
        f"{name}_full": {**_blob(put, lines), "format": "jsonl"},
    }


def who() -> dict[str, Any]:
    """The actor (user, uid, host; in CI the CI's claims, never a token)."""
    from jhansi.ledger.identity import actor_identity

    return {"actor": actor_identity()}


def script_fields(script: Script, put: PutBlob) -> dict[str, Any]:
    """The code that ran (or was refused), by reference."""
    return {"path": script.display, **_blob(put, script.text.encode("utf-8", "surrogateescape"))}


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
            {
                "source": str(m.source),
                "target": m.target,
                "read_only": m.read_only,
                "kind": m.kind,
                **(
                    {
                        "lower": [str(p) for p in m.overlay.lower],
                        "upper": str(m.overlay.upper),
                    }
                    if m.overlay is not None
                    else {}
                ),
            }
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
    body = {
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
        **env_fields(request.env, put),
        **replay_fields(request),
    }
    return dict(recordable(body))


#: Words that make a variable's name look like a credential: its value is not recorded.
_SECRET_WORDS = frozenset(
    {"KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASS", "PWD", "CREDENTIAL",
     "CREDENTIALS", "CREDS", "AUTH", "COOKIE", "SESSION", "PRIVATE", "APIKEY", "DSN",
     "PASSPHRASE", "PAT", "JWT", "BEARER", "WEBHOOK", "SIGNING"}
)  # fmt: skip
#: A name's words: whatever is not a letter or a digit separates them (``api.key``, ``a-b``).
_WORD_BREAK: Final = re.compile(r"[^A-Z0-9]+")
#: Values that are credentials whatever their variable is called: a URL with a password
#: in it (``postgres://user:pw@db``), a private key, a bearer token, and the prefixes of
#: the tokens common services issue (GitHub, GitLab, Slack, OpenAI, Stripe, AWS, Google,
#: Hugging Face, npm, PyPI) and of JSON Web Tokens.
_SECRET_VALUE: Final = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s@:]*:[^/?#\s@]+@"
    r"|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
    r"|\bBearer\s+\S{8,}"
    r"|(?<![A-Za-z0-9])(?:gh[pousr]_|github_pat_|glpat-|xox[abposr]-|sk-|sk_live_|rk_live_"
    r"|AKIA|ASIA|AIza|hf_|npm_|pypi-)[A-Za-z0-9_-]{12,}"
    r"|(?<![A-Za-z0-9])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\."
)


def secret_like(name: str) -> bool:
    """Whether ``name`` looks like it holds a credential (``API_KEY``, ``GH_TOKEN`` ...)."""
    upper = name.upper()
    words = _WORD_BREAK.split(upper)
    return any(word in _SECRET_WORDS for word in words) or upper.endswith(
        ("KEY", "TOKEN", "SECRET", "PASSWORD")
    )


def secret_value(value: str) -> bool:
    """Whether ``value`` looks like a credential whatever its name (a URL with a password,
    a private key, a known service's token)."""
    return _SECRET_VALUE.search(value) is not None


def env_fields(env: tuple[tuple[str, str], ...], put: PutBlob) -> dict[str, Any]:
    """The values of the variables the user passed (``--env``), so that a replay can
    restore them: a JSON blob (``env_values``) of every variable whose name does not look
    like a credential (:func:`secret_like`) and whose value does not either
    (:func:`secret_value`); those are named only (``env_withheld``).
    Nothing when none was passed. Secrets bound with ``--secret`` are never here: the
    sandbox holds only a placeholder for them."""
    if not env:
        return {}
    import json

    given = dict(env)
    withheld = sorted(
        name for name, value in given.items() if secret_like(name) or secret_value(value)
    )
    kept = {name: value for name, value in given.items() if name not in withheld}
    out: dict[str, Any] = {}
    if kept:
        data = json.dumps(kept, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
        out["env_values"] = {**_blob(put, data.encode("ascii")), "format": "json"}
    if withheld:
        out["env_withheld"] = withheld
    return out


def replay_fields(request: RunRequest) -> dict[str, Any]:
    """``replay_of`` (and what the replay ran differently) for a ``jhansi replay`` run."""
    if request.replay_of is None:
        return {}
    out: dict[str, Any] = {"replay_of": request.replay_of}
    if request.replay_notes:
        out["replay_notes"] = list(request.replay_notes)
    return out


def _tail(tail: OutputTail, put: PutBlob) -> dict[str, Any]:
    return {"bytes": tail.total, "truncated": tail.truncated, **_blob(put, tail.data)}


def end_body(result: RunResult, put: PutBlob) -> dict[str, Any]:
    """``exec.end``: how it ended, the output (by reference), what it changed.

    ``layer`` (copy-on-write /work): the sandbox's layer the /work changes landed in.
    ``rw`` (``--rw`` runs only): the changes to /work applied to the project, those
    refused (with why: configuration, ``.git``, masked ...), those that conflicted with
    changes made on the host, and where the layer was kept, if it was.

    Bounded whatever the script did: long lists keep a head and a blob of the whole
    (:func:`bounded_list`), ``files_incomplete`` says why the file list may miss
    changes (a budget ran out), ``egress_dropped`` counts connections past the
    proxy's event cap, and names that are not UTF-8 are kept reversibly
    (:func:`recordable`).
    """
    body = {
        "run_id": result.run_id,
        "result": {
            "status": result.status,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "duration_ms": result.duration_ms,
            "error": result.error[:MAX_ERROR_CHARS],
        },
        "stdout": _tail(result.stdout, put),
        "stderr": _tail(result.stderr, put),
        "enforcement": dict(result.enforcement),
        **bounded_list("files_changed", [c.as_dict() for c in result.files_changed], put),
        **({"files_incomplete": result.files_incomplete} if result.files_incomplete else {}),
        **bounded_list("egress", [dict(e) for e in result.egress], put),
        **({"egress_dropped": result.egress_dropped} if result.egress_dropped else {}),
        **({"rw": rw_fields(result.rw.as_dict(), put)} if result.rw is not None else {}),
        **({"layer": result.layer} if result.layer else {}),
    }
    return dict(recordable(body))


def fallback_end_body(result: RunResult, put: PutBlob, problem: str) -> dict[str, Any]:
    """A minimal ``exec.end`` for when :func:`end_body` cannot be recorded: how the run
    ended, and everything else as one JSON blob (``full``), with why (``fallback``)."""
    import json

    from jhansi.result import result_document

    document = json.dumps(result_document(result), ensure_ascii=True, default=str)
    return dict(
        recordable(
            {
                "run_id": result.run_id,
                "result": {
                    "status": result.status,
                    "exit_code": result.exit_code,
                    "signal": result.signal,
                    "duration_ms": result.duration_ms,
                    "error": result.error[:MAX_ERROR_CHARS],
                },
                "fallback": problem[:MAX_ERROR_CHARS],
                "full": {**_blob(put, document.encode("ascii")), "format": "json"},
            }
        )
    )


def rw_fields(report: dict[str, Any], put: PutBlob) -> dict[str, Any]:
    """The ``rw`` part of ``exec.end``: each of its lists bounded (:func:`bounded_list`)."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        if isinstance(value, list):
            out.update(bounded_list(key, value, put))
        else:
            out[key] = value
    return out


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
        **replay_fields(request),
    }
    if deps is not None and deps.plan.unresolved:
        body["unresolved"] = [
            {"import": d.name, "lines": list(d.lines)} for d in deps.plan.unresolved
        ]
    return dict(recordable(body))
