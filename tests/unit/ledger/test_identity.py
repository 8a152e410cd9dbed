"""Who ran it: the local user, and GitHub Actions claims without any token."""

from __future__ import annotations

import json
import os

from jhansi.ledger.identity import actor_identity, ci_identity

GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/widgets",
    "GITHUB_WORKFLOW_REF": "acme/widgets/.github/workflows/ci.yml@refs/heads/main",
    "GITHUB_RUN_ID": "1234567890",
    "GITHUB_RUN_ATTEMPT": "2",
    "GITHUB_SHA": "f" * 40,
    "GITHUB_ACTOR": "octocat",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_TOKEN": "ghs_secret_token_value",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "oidc_secret",
    "ACTIONS_RUNTIME_TOKEN": "runtime_secret",
}


def test_local_identity() -> None:
    actor = actor_identity({"USER": "someone"})
    assert actor["uid"] == os.getuid()
    assert actor["user"]
    assert actor["host"]
    assert "ci" not in actor


def test_github_actions_claims_and_never_a_token() -> None:
    actor = actor_identity(GITHUB)
    ci = actor["ci"]
    assert ci == {
        "provider": "github-actions",
        "server_url": "https://github.com",
        "repository": "acme/widgets",
        "workflow_ref": "acme/widgets/.github/workflows/ci.yml@refs/heads/main",
        "run_id": "1234567890",
        "run_attempt": "2",
        "sha": "f" * 40,
        "actor": "octocat",
    }
    text = json.dumps(actor)
    assert "secret" not in text


def test_other_ci() -> None:
    assert ci_identity({"CI": "true"}) == {"provider": "unknown"}
    assert ci_identity({}) is None
