"""Who ran it: the local user and, in CI, the workflow run that did.

The result goes into ``exec.start`` and ``exec.denied`` bodies (``actor``) and
the genesis record (``created_by``). In GitHub Actions it carries the claims a
reviewer needs to find the run again (repository, workflow ref, run id and
attempt, commit, actor), read from the documented ``GITHUB_*`` variables
through an allowlist: no token, and nothing from the environment that is not
named here, ever reaches the ledger.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

#: ledger field ← GitHub Actions default environment variable.
GITHUB_CLAIMS: Final = (
    ("server_url", "GITHUB_SERVER_URL"),
    ("repository", "GITHUB_REPOSITORY"),
    ("repository_id", "GITHUB_REPOSITORY_ID"),
    ("workflow_ref", "GITHUB_WORKFLOW_REF"),
    ("workflow_sha", "GITHUB_WORKFLOW_SHA"),
    ("run_id", "GITHUB_RUN_ID"),
    ("run_attempt", "GITHUB_RUN_ATTEMPT"),
    ("run_number", "GITHUB_RUN_NUMBER"),
    ("job", "GITHUB_JOB"),
    ("event_name", "GITHUB_EVENT_NAME"),
    ("ref", "GITHUB_REF"),
    ("sha", "GITHUB_SHA"),
    ("actor", "GITHUB_ACTOR"),
    ("actor_id", "GITHUB_ACTOR_ID"),
    ("triggering_actor", "GITHUB_TRIGGERING_ACTOR"),
)


def _user_name(uid: int, env: Mapping[str, str]) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return env.get("USER") or env.get("LOGNAME") or str(uid)


def ci_identity(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The CI run this process belongs to, if any (GitHub Actions claims in detail)."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") == "true":
        claims: dict[str, Any] = {"provider": "github-actions"}
        for field, variable in GITHUB_CLAIMS:
            value = env.get(variable)
            if value:
                claims[field] = value
        return claims
    if env.get("CI", "").lower() in ("1", "true", "yes"):
        return {"provider": "unknown"}
    return None


def actor_identity(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"user", "uid", "host"}`` plus ``"ci"`` when running in CI."""
    env = os.environ if environ is None else environ
    uid = os.getuid()
    actor: dict[str, Any] = {
        "user": _user_name(uid, env),
        "uid": uid,
        "host": os.uname().nodename,  # gethostname(2), without importing socket
    }
    ci = ci_identity(env)
    if ci is not None:
        actor["ci"] = ci
    return actor
