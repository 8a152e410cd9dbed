"""What a run records for its replay (its ``--env`` values), and how a replay says where
an output differs (jhansi.records, jhansi.replay): no sandbox, no mocks."""

from __future__ import annotations

import json
import os

import blake3
import pytest

from jhansi.errors import ReplayError
from jhansi.records import env_fields, secret_like
from jhansi.replay import first_difference, restore_egress


def test_env_values_are_a_blob_and_credentials_are_named_only() -> None:
    stored: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        stored[digest] = data
        return digest

    assert env_fields((), put) == {}
    weird = os.fsdecode(b"caf\xe9")  # an argument that is not UTF-8 survives the blob
    fields = env_fields(
        (("MODE", "fast"), ("MODE", "slow"), ("OPENAI_API_KEY", "sk-x"), ("NAME", weird)), put
    )
    assert fields["env_withheld"] == ["OPENAI_API_KEY"]
    values = json.loads(stored[fields["env_values"]["blob"]])
    assert values == {"MODE": "slow", "NAME": weird}  # the last --env of a name wins
    assert b"sk-x" not in b"".join(stored.values())
    only_secret = env_fields((("GH_TOKEN", "t"),), put)
    assert only_secret == {"env_withheld": ["GH_TOKEN"]}


def test_names_that_look_like_credentials() -> None:
    for name in ("API_KEY", "GH_TOKEN", "DB_PASSWORD", "AUTH", "SENTRY_DSN", "apikey", "MYTOKEN"):
        assert secret_like(name), name
    for name in ("MODE", "GREETING", "KEYBOARD_LAYOUT", "TOKENIZERS_PARALLELISM_X", "AUTHOR"):
        assert not secret_like(name), name


def test_the_first_differing_line_is_named() -> None:
    assert first_difference(b"a\nb\n", b"a\nb\n") is None
    assert first_difference(b"a\nb\n", b"a\nc\n") == (2, "b", "c")
    assert first_difference(b"a\n", b"a\nmore\n") == (2, None, "more")
    long = b"x" * 500
    number, left, right = first_difference(long, b"y") or (0, None, None)
    assert number == 1
    assert left is not None
    assert len(left) == 200
    assert left.endswith("…")
    assert right == "y"


def test_the_recorded_egress_is_given_again_and_a_missing_secret_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jhansi.paths import Paths

    monkeypatch.delenv("DEMO_SECRET", raising=False)
    paths = Paths.from_environment()
    body = {
        "egress": {"allow": ["files.example.org:443"], "allow_http": ["plain.example.org:80"]},
        "secrets": [],
        "_end": {"egress": [{"host": "files.example.org", "decision": "allowed"}]},
    }
    secrets, allow, notes = restore_egress(body, paths)
    assert secrets == ()
    assert allow == ("files.example.org:443", "http://plain.example.org:80")
    assert "what the other end answers is not in the ledger" in notes[0]
    assert "(it reached files.example.org)" in notes[0]
    body["secrets"] = [{"name": "DEMO_SECRET", "hosts": ["api.example.com"]}]
    with pytest.raises(ReplayError) as raised:
        restore_egress(body, paths)
    assert raised.value.message.startswith("the run used the secret(s) DEMO_SECRET")
    assert raised.value.hint == "Store each again (`jhansi secret set NAME`), then replay."
    monkeypatch.setenv("DEMO_SECRET", "a-long-enough-value")
    secrets, _, _ = restore_egress(body, paths)
    assert secrets == ("DEMO_SECRET@api.example.com",)
