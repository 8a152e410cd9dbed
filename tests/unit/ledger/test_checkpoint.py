"""The signing key and checkpoint signatures."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from jhansi.errors import LedgerError
from jhansi.ledger.checkpoint import (
    CHECKPOINT_DOMAIN,
    KeyFileSigner,
    check_checkpoint,
    checkpoint_body,
    load_or_create_key,
    parse_public_keys,
    public_key_pem,
    read_public_key,
    read_seed,
    statement,
    verify_signature,
)

LEDGER_ID = "ab" * 16
DIGEST = "cd" * 32


def test_the_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ledger-ed25519.pem"
    assert read_public_key(path) is None  # reading never creates
    first = KeyFileSigner(path).public_key()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert KeyFileSigner(path).public_key() == first
    assert read_public_key(path) == first
    assert len(first) == 32
    assert not list(path.parent.glob(".*tmp"))


def test_a_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    path.chmod(0o600)
    with pytest.raises(LedgerError, match="cannot load"):
        load_or_create_key(path)
    with pytest.raises(LedgerError, match="no ledger signing key"):
        load_or_create_key(tmp_path / "absent.pem", create=False)


def test_the_seed_read_without_cryptography_is_the_key_cryptography_reads(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "key.pem"
    key = load_or_create_key(path)
    seed = read_seed(path)
    assert seed == key.private_bytes_raw()
    signer = KeyFileSigner(path)
    signer.prepare()
    signer.warm_up()
    assert signer.public_key() == key.public_key().public_bytes_raw()
    assert verify_signature(signer.public_key().hex(), b"m", signer.sign(b"m").hex())
    # Another encoding of the same key (OpenSSH): read by cryptography, same key.
    other = tmp_path / "other.pem"
    other.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    other.chmod(0o600)
    assert read_seed(other) is None


def test_a_damaged_or_exposed_key_fails_prepare(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    load_or_create_key(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:-8] + "AAAAAAA=", lines[-1]]) + "\n")
    assert read_seed(path) is None  # not 48 bytes of PKCS #8 Ed25519
    with pytest.raises(LedgerError, match="cannot load"):
        KeyFileSigner(path).prepare()
    path.chmod(0o644)
    with pytest.raises(LedgerError, match="accessible by other users"):
        KeyFileSigner(path).prepare()


def test_statements_are_domain_separated_canonical_json() -> None:
    message = statement(LEDGER_ID, 4, DIGEST)
    assert message.startswith(CHECKPOINT_DOMAIN)
    assert message.endswith(
        b'{"hash":"' + DIGEST.encode() + b'","ledger_id":"' + LEDGER_ID.encode() + b'","seq":4}'
    )


def test_checkpoint_bodies_verify_and_any_change_breaks_them(tmp_path: Path) -> None:
    signer = KeyFileSigner(tmp_path / "key.pem")
    body = checkpoint_body(signer, LEDGER_ID, 5, DIGEST, ((0, 2), (4, 4)))
    assert body["alg"] == "ed25519"
    assert body["ranges"] == [[0, 2], [4, 4]]
    assert body["key"] == signer.public_key().hex()
    assert check_checkpoint(LEDGER_ID, 5, DIGEST, body) is None
    assert check_checkpoint(LEDGER_ID, 6, DIGEST, body) == (
        "bad-signature",
        "the signature over seq 5 does not verify",
    )
    assert check_checkpoint(LEDGER_ID, 5, "ef" * 32, body) is not None
    assert check_checkpoint("ef" * 16, 5, DIGEST, body) is not None
    assert check_checkpoint(LEDGER_ID, 5, DIGEST, {**body, "extra": 1}) is not None
    assert check_checkpoint(LEDGER_ID, 5, DIGEST, {**body, "alg": "rsa"}) is not None
    assert check_checkpoint(LEDGER_ID, 5, DIGEST, {**body, "sig": "00"}) is not None
    # What a signature vouches for is signed too: widening it breaks the signature.
    assert check_checkpoint(LEDGER_ID, 5, DIGEST, {**body, "ranges": [[0, 4]]}) == (
        "bad-signature",
        "the signature over seq 4 does not verify",
    )
    # Ranges must be sorted, disjoint, and before the checkpoint.
    for bad in ([[0, 5]], [[2, 1]], [[0, 1], [2, 3]], [], [[3, 4], [0, 1]]):
        assert check_checkpoint(LEDGER_ID, 5, DIGEST, {**body, "ranges": bad}) == (
            "bad-checkpoint",
            "ranges are not sorted, disjoint seq ranges before it",
        )
    assert not verify_signature("zz", b"m", body["sig"])


def test_public_keys_parse_from_hex_and_pem(tmp_path: Path) -> None:
    raw = KeyFileSigner(tmp_path / "key.pem").public_key()
    assert parse_public_keys(raw.hex().upper()) == [raw.hex()]
    assert parse_public_keys(f"ed25519:{raw.hex()}\n{'ab' * 32}") == [raw.hex(), "ab" * 32]
    assert parse_public_keys(public_key_pem(raw)) == [raw.hex()]
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        parse_public_keys("abc")
