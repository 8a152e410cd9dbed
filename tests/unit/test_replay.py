"""What a run records for its replay (its ``--env`` values), how a replay says where
an output differs, and what a replay trusts of a ledger (jhansi.records, jhansi.replay):
ledgers written through the library, no sandbox, no mocks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import blake3
import pytest

from jhansi.config import load_settings
from jhansi.errors import LedgerError, ReplayError
from jhansi.ledger.blobs import BlobStore
from jhansi.ledger.read import verified_records
from jhansi.ledger.record import make_record, parse_line
from jhansi.ledger.store import Ledger
from jhansi.ledger.verify import verify_ledger
from jhansi.paths import Paths
from jhansi.records import env_fields, secret_like
from jhansi.replay.compare import first_difference
from jhansi.replay.plan import (
    Original,
    Plan,
    _backend_overrides,
    _no_looser,
    _refuse_foreign_secrets,
    load,
    restore_egress,
)
from jhansi.replay.run import own_key
from jhansi.request import RunRequest
from tests.unit.ledger.conftest import lines, record_run, write_lines


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


def test_names_split_on_any_separator_and_more_credential_words() -> None:
    for name in ("api.key", "gpg-passphrase", "GITHUB_PAT", "my.jwt", "SLACK_WEBHOOK_URL",
                 "DB_CREDS", "apiKey", "Bearer"):  # fmt: skip
        assert secret_like(name), name
    for name in ("PATH_PREFIX", "KEYBOARD", "PATTERN", "COMPASS"):
        assert not secret_like(name), name


def test_values_that_are_credentials_are_not_recorded_whatever_their_name() -> None:
    stored: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        stored[digest] = data
        return digest

    credentials = {
        "DATABASE_URL": "postgres://app:hunter2-pw@db.internal:5432/prod",
        "UPSTREAM": "https://user:p%40ss@mirror.example/simple",
        "GH": "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "OPENAI": "sk-proj-" + "Ab12Cd34Ef56Gh78Ij90Kl12",
        "AWS_ID": "AKIA" + "IOSFODNN7EXAMPLE",
        "HEADER": "Authorization: Bearer abcdefgh12345678",
        "ID_JWT_LIKE": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
        "PEM": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...\n",
    }
    plain = {
        "SITE": "https://docs.example/path?q=1",
        "EMAIL": "someone@example.org",
        "MODE": "sk-learn",
        "TIME": "12:30",
        "PROXYLESS": "ssh://git@host/repo.git",
    }
    fields = env_fields(tuple({**credentials, **plain}.items()), put)
    assert fields["env_withheld"] == sorted(credentials)
    assert json.loads(stored[fields["env_values"]["blob"]]) == plain
    recorded = b"".join(stored.values())
    for value in credentials.values():
        assert value.encode() not in recorded


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


def test_someone_elses_run_reaches_only_the_hosts_the_user_grants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A ledger from elsewhere names hosts: an internal service, a metadata address.
    paths = Paths.from_environment()
    body = {
        "egress": {
            "allow": ["169.254.169.254:80", "files.example.org:443"],
            "allow_http": ["intranet.example:80"],
        },
        "secrets": [],
    }
    _, allow, notes = restore_egress(body, paths, foreign=True)
    assert allow == ()
    assert "169.254.169.254:80, files.example.org:443, http://intranet.example:80" in notes[0]
    assert "--allow-host HOST" in notes[0]
    _, allow, notes = restore_egress(
        body,
        paths,
        foreign=True,
        granted=["FILES.example.org:443", "intranet.example:80", "other.example:443"],
    )
    assert allow == ("files.example.org:443", "http://intranet.example:80")
    assert notes[0].endswith("(grant a host with --allow-host HOST, as recorded)")
    assert "169.254.169.254:80" in notes[0]
    assert notes[1] == (
        "--allow-host grants only hosts the run was allowed: other.example:443 ignored"
    )
    # This machine's own runs get what they were allowed, as recorded.
    _, allow, _ = restore_egress(body, paths)
    assert len(allow) == 3


# -- what a replay trusts: records a trusted key signed, never their word on the host ------


def _signed_ledger(directory: Path) -> str:
    """A ledger written through the library with this test's key: one run, signed."""
    with Ledger.open(directory, paths=Paths.from_environment()) as ledger:
        return record_run(ledger, 1)


def _append_unsigned_run(directory: Path, run_id: str) -> None:
    """Records appended by someone without the key: the chain recomputed, no MAC."""
    last = parse_line(lines(directory)[-1][:-1])
    code = BlobStore(directory / "blobs").put(b"print('not what was recorded')\n")
    body = {"run_id": run_id, "script": {"path": "x.py", "blob": code}}
    start = make_record(
        ledger_id=last.ledger_id, seq=last.seq + 1, prev=last.hash, kind="exec.start", body=body
    )
    end = make_record(
        ledger_id=last.ledger_id,
        seq=start.seq + 1,
        prev=start.hash,
        kind="exec.end",
        body={"run_id": run_id, "result": {"status": "succeeded", "exit_code": 0}},
    )
    write_lines(directory, [*lines(directory), start.line + b"\n", end.line + b"\n"])


def test_a_replay_loads_only_runs_a_trusted_key_signed(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    signed = _signed_ledger(directory)
    own = own_key(Paths.from_environment())
    assert own is not None
    assert load(directory, signed, trusted_keys={own}, own_key=own).foreign is False
    # Trusted with --key on a machine whose own key is another: someone else's run.
    assert load(directory, signed, trusted_keys={own}, own_key="ab" * 32).foreign is True

    forged = "0018c0000000f-00000000000000ff"
    _append_unsigned_run(directory, forged)
    assert verify_ledger(directory, trusted_keys={own}).ok  # an unsigned tail: a warning
    with pytest.raises(LedgerError) as raised:
        load(directory, forged, trusted_keys={own}, own_key=own)
    assert raised.value.message.startswith(
        f"run {forged}: no signature of a trusted key covers its record(s) at seq "
    )
    load(directory, signed, trusted_keys={own}, own_key=own)  # the signed run still loads

    with pytest.raises(LedgerError) as raised:
        load(directory, signed, trusted_keys=None, own_key=None)
    assert raised.value.message.startswith("cannot tell who wrote the ledger at ")
    assert raised.value.hint.startswith("Pass --key")
    with pytest.raises(LedgerError, match="untrusted-key"):
        load(directory, signed, trusted_keys={"cd" * 32}, own_key=own)


def test_what_is_read_is_what_was_verified(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    _signed_ledger(directory)
    report = verify_ledger(directory)
    assert [r.seq for r in verified_records(directory, report)] == list(
        range((report.last_seq or 0) + 1)
    )
    # Replaced after verification by another ledger (each record valid on its own).
    other = tmp_path / "other"
    _signed_ledger(other)
    shutil.copyfile(other / "ledger.jsonl", directory / "ledger.jsonl")
    with pytest.raises(LedgerError, match="changed after it was verified"):
        list(verified_records(directory, report))


def _plan(tmp_path: Path, details: dict[str, str], **given: bool) -> tuple[Plan, dict[str, Any]]:
    plan = Plan(request=RunRequest(script=tmp_path / "x.py"))
    paths = Paths.from_environment()
    today = load_settings(start=tmp_path, paths=paths)
    sandbox = {"backend": details.pop("backend", "bwrap"), "details": details}
    out = _backend_overrides(sandbox, given.get("allow", False), plan, today, paths)
    return plan, out


def test_a_recorded_interpreter_runs_only_when_the_user_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jhansi.sandbox.bwrap.interpreter import default_python, resolve_python

    # The record names a file that jhansi would run on the host to probe it.
    planted = tmp_path / "python3"
    planted.write_text("#!/bin/sh\ntouch /tmp/should-not-exist\n")
    planted.chmod(0o755)
    with pytest.raises(ReplayError) as raised:
        _plan(tmp_path, {"python": str(planted)})
    assert raised.value.message.startswith(f"the run used the interpreter {planted}, and ")
    assert f"JHANSI_SANDBOX_PYTHON={planted}" in raised.value.hint
    plan, out = _plan(tmp_path, {"python": str(planted)}, allow=True)
    assert "python" not in out
    assert plan.allowed[0].startswith(f"interpreter: the recorded {planted} is not the one")
    # Today's interpreter, as recorded: nothing is taken from the record.
    current = resolve_python(default_python(), Paths.from_environment().cache)
    assert _plan(tmp_path, {"python": current})[1] == {"backend": "bwrap"}
    # Named by the user: today's settings run it (the record is not what chose it).
    monkeypatch.setenv("JHANSI_SANDBOX_PYTHON", current)
    assert _plan(tmp_path, {"python": current})[1] == {"backend": "bwrap"}


def test_the_recorded_engine_is_not_used(tmp_path: Path) -> None:
    details = {"backend": "docker", "url": "ssh://someone@elsewhere", "image": "img:1"}
    _, out = _plan(tmp_path, details)
    assert "engine_url" not in out
    assert out == {"backend": "docker", "image": "img:1"}


def test_someone_elses_run_gets_no_secret_and_no_looser_limit(tmp_path: Path) -> None:
    original = Original("r", None, None, None, foreign=True, signers=("ab" * 32,))
    body = {"secrets": [{"name": "GH_TOKEN", "hosts": ["collector.example"]}]}
    with pytest.raises(ReplayError) as raised:
        _refuse_foreign_secrets(original, body)
    assert "GH_TOKEN@collector.example" in raised.value.message
    _refuse_foreign_secrets(original, {"secrets": []})
    plan = Plan(request=RunRequest(script=tmp_path / "x.py"))
    today = load_settings(start=tmp_path, paths=Paths.from_environment())
    recorded = {"memory": 1 << 40, "pids": 8, "timeout": 10 * 86400.0, "cpus": None}
    kept = _no_looser(recorded, today, plan)
    assert kept == {"memory": None, "pids": 8, "timeout": None, "cpus": None}
    assert [note.split(":")[0] for note in plan.notes] == ["memory", "timeout"]
