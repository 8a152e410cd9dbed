"""No append signs what it did not write; another key or a missing one stops appends.

The attacker here can write the ledger directory but cannot read the signing
key: they append records with the library (the chain recomputed, so every
hash holds) and wait for the next real run to sign over them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jhansi.errors import LedgerError
from jhansi.ledger.checkpoint import key_path, merge_ranges
from jhansi.ledger.record import make_record, parse_line
from jhansi.ledger.store import Ledger
from jhansi.ledger.verify import unsigned_ranges, verify_ledger
from jhansi.paths import Paths
from tests.unit.ledger.conftest import lines, record_run

OpenLedger = Callable[..., Ledger]


def forge(directory: Path, count: int, *, with_mac: str | None = None) -> list[int]:
    """Append ``count`` records as someone without the key would: a valid chain, no MAC."""
    last = parse_line(lines(directory)[-1].rstrip(b"\n"))
    seqs = []
    with (directory / "ledger.jsonl").open("ab") as out:
        for n in range(count):
            body: dict[str, object] = {"run_id": f"forged-{n // 2}", "sandbox": "default"}
            if with_mac is not None:
                body["ledger_mac"] = with_mac
            record = make_record(
                ledger_id=last.ledger_id,
                seq=last.seq + 1,
                prev=last.hash,
                kind="exec.start" if n % 2 == 0 else "exec.end",
                body=body,
            )
            out.write(record.line + b"\n")
            seqs.append(record.seq)
            last = record
    return seqs


def test_a_forged_tail_is_never_adopted_by_the_next_run(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    before = verify_ledger(ledger_dir)
    assert before.ok
    assert before.unsigned_ranges == ()

    forged = forge(ledger_dir, 4)
    # A MAC copied from elsewhere, or made up, does not authenticate either.
    forged += forge(ledger_dir, 2, with_mac="0" * 32)
    waiting = verify_ledger(ledger_dir)
    assert waiting.ok  # at the end, it could be a run in progress: a warning...
    assert waiting.unsigned_ranges == ((forged[0], forged[-1]),)
    assert "unsigned-tail" in [w.kind for w in waiting.warnings]
    assert not verify_ledger(ledger_dir, strict=True).ok  # ...or an error when asked

    with open_ledger() as ledger:
        record_run(ledger, 2)
        head = ledger.head()
    assert head is not None
    assert head.ranges is not None
    assert all(not (a <= forged[0] <= b) for a, b in head.ranges)

    report = verify_ledger(ledger_dir)
    assert not report.ok
    assert report.unsigned_ranges == ((forged[0], forged[-1]),)
    errors = [e for e in report.errors if e.kind == "unsigned-records"]
    assert len(errors) == 1
    assert errors[0].seq == forged[0]
    assert f"seq {forged[0]}-{forged[-1]}" in errors[0].message


def test_concurrent_and_crashed_runs_stay_covered(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    """Another jhansi's records (running, or crashed before signing) carry a valid MAC."""
    with open_ledger() as first, open_ledger() as second:
        first.preflight()
        first.append("exec.start", {"run_id": "a-run"})  # first's run is still going
        record_run(second, 1)  # second signs: first's start is vouched for by its MAC
        first.append("exec.end", {"run_id": "a-run"})
        first.checkpoint()
        second.append("exec.start", {"run_id": "crashed"})  # then second "crashes"
        record_run(first, 2)
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.unsigned_ranges == ()
    assert report.crashed_runs == ("crashed",)  # still visible as a crashed run


def test_another_key_or_no_key_refuses_to_append(
    open_ledger: OpenLedger, ledger_dir: Path, paths: Paths
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    pristine = (ledger_dir / "ledger.jsonl").read_bytes()
    key = key_path(paths)
    original = key.read_bytes()

    key.unlink()
    with open_ledger() as ledger, pytest.raises(LedgerError) as missing:
        ledger.preflight()
    assert "is missing" in missing.value.message
    assert "Restore" in (missing.value.hint or "")
    with open_ledger() as ledger, pytest.raises(LedgerError):
        ledger.append("exec.start", {"run_id": "x"})  # without preflight, too
    assert not key.exists()  # no new key was made

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key.write_bytes(other)
    key.chmod(0o600)
    with open_ledger() as ledger, pytest.raises(LedgerError) as replaced:
        ledger.preflight()
    assert "signed by another key" in replaced.value.message
    with open_ledger() as ledger, pytest.raises(LedgerError):
        ledger.append("exec.start", {"run_id": "x"})
    assert (ledger_dir / "ledger.jsonl").read_bytes() == pristine

    key.write_bytes(original)
    with open_ledger() as ledger:
        record_run(ledger, 2)
    assert verify_ledger(ledger_dir).ok


def test_a_brand_new_ledger_makes_its_key(open_ledger: OpenLedger, paths: Paths) -> None:
    assert not key_path(paths).exists()
    with open_ledger() as ledger:
        ledger.preflight()
    assert key_path(paths).exists()


def test_links_inside_the_ledger_are_refused(
    open_ledger: OpenLedger, ledger_dir: Path, tmp_path: Path
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    real = tmp_path / "elsewhere.jsonl"
    (ledger_dir / "ledger.jsonl").rename(real)
    (ledger_dir / "ledger.jsonl").symlink_to(real)
    before = real.read_bytes()
    with open_ledger() as ledger, pytest.raises(LedgerError) as refused:
        ledger.preflight()
    assert "symbolic link" in refused.value.message
    with open_ledger() as ledger, pytest.raises(LedgerError):
        ledger.append("exec.start", {"run_id": "x"})
    assert real.read_bytes() == before
    assert "symlink" in [e.kind for e in verify_ledger(ledger_dir).errors]


def test_a_linked_ledger_directory_of_ones_own_is_followed_and_resolved(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    real = tmp_path / "disk" / "ledger"
    link = tmp_path / "link"
    real.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    with open_ledger(link) as ledger:
        record_run(ledger, 1)
        assert ledger.directory == real  # the resolved path is used and recorded
    assert verify_ledger(real).ok


def test_a_linked_ledger_directory_in_a_shared_directory_is_refused(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone could have put the link there
    (shared / "ledger").symlink_to(tmp_path / "target", target_is_directory=True)
    with pytest.raises(LedgerError, match="symbolic link that another user"):
        open_ledger(shared / "ledger")


def test_unsigned_ranges() -> None:
    assert unsigned_ranges((), 3) == ((0, 3),)
    assert unsigned_ranges(((0, 3),), 3) == ()
    assert unsigned_ranges(((0, 1), (5, 6), (4, 4)), 9) == ((2, 3), (7, 9))
    assert unsigned_ranges(((2, 2),), 1) == ((0, 1),)
    assert merge_ranges(((0, 1),), (3, 2, 9)) == ((0, 3), (9, 9))


def test_old_style_heads_still_verify_and_cover_everything_before_them(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    """A head written before ranges existed vouches for every record up to it (v1)."""
    from jhansi.ledger.checkpoint import SignedHead, statement

    with open_ledger() as ledger:
        record_run(ledger, 1)
        head = ledger.head()
        signer = ledger._signer
    assert head is not None
    legacy = SignedHead(
        ledger_id=head.ledger_id,
        seq=head.seq,
        hash=head.hash,
        key=head.key,
        sig=signer.sign(statement(head.ledger_id, head.seq, head.hash)).hex(),
    )
    (ledger_dir / "head.json").write_bytes(legacy.to_bytes())
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.unsigned_ranges == ()
    with open_ledger() as ledger:  # and appending goes on (same key, by public key)
        record_run(ledger, 2)
    assert verify_ledger(ledger_dir).ok
