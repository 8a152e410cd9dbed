"""The run CA: constrained to its hosts, short-lived, and unable to vouch for anything else."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from jhansi.egress.ca import RunCA
from jhansi.egress.hostpolicy import EgressRefusal

HOSTS = ("api.test.example", "other.test.example")


@pytest.fixture(scope="module")
def ca() -> RunCA:
    return RunCA.create(HOSTS, dt.timedelta(minutes=30))


def _verify(ca: RunCA, leaf: x509.Certificate, name: str) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store([ca.certificate]))
        .time(dt.datetime.now(dt.UTC))
        .build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(leaf, [])


def _forge(ca: RunCA, san: x509.GeneralName) -> x509.Certificate:
    """A leaf signed with the CA's own key for a name outside its constraints."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca._key.public_key()),
            critical=False,
        )
        .sign(ca._key, hashes.SHA256())
    )


def test_ca_shape(ca: RunCA) -> None:
    cert = ca.certificate
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert sorted(n.value for n in constraints.value.permitted_subtrees or []) == sorted(HOSTS)
    assert all(isinstance(n, x509.IPAddress) for n in constraints.value.excluded_subtrees or [])
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" not in ca.ca_pem


def test_lifetime_is_bounded_by_the_run(ca: RunCA) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = ca.certificate
    assert now - dt.timedelta(minutes=2) < cert.not_valid_before_utc <= now
    assert cert.not_valid_after_utc <= now + dt.timedelta(minutes=30)
    assert cert.not_valid_after_utc > now + dt.timedelta(minutes=29)
    leaf, _ = ca.issue_leaf("api.test.example")
    assert leaf.not_valid_after_utc == cert.not_valid_after_utc
    with pytest.raises(ValueError, match="positive"):
        RunCA.create(HOSTS, dt.timedelta(0))


def test_leaf_verifies_for_its_host(ca: RunCA) -> None:
    leaf, _ = ca.issue_leaf("API.test.example")
    _verify(ca, leaf, "api.test.example")
    with pytest.raises(VerificationError):
        _verify(ca, leaf, "other.test.example")


@pytest.mark.parametrize(
    "san",
    [
        x509.DNSName("evil.example"),
        x509.DNSName("api.test.example.evil"),
        x509.DNSName("test.example"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ],
)
def test_a_forged_leaf_outside_the_constraints_does_not_verify(
    ca: RunCA, san: x509.GeneralName, tmp_path: Path
) -> None:
    leaf = _forge(ca, san)
    with pytest.raises(VerificationError):
        _verify(ca, leaf, str(san.value))
    # OpenSSL (what the sandbox's clients use) refuses it too.
    openssl = shutil.which("openssl")
    assert openssl, "openssl is part of the test image and CI"
    (tmp_path / "ca.pem").write_bytes(ca.ca_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    proc = subprocess.run(
        [openssl, "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "subtree violation" in (proc.stdout + proc.stderr).lower()


def test_openssl_accepts_a_real_leaf(ca: RunCA, tmp_path: Path) -> None:
    leaf, _ = ca.issue_leaf("other.test.example")
    (tmp_path / "ca.pem").write_bytes(ca.ca_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    openssl = shutil.which("openssl")
    assert openssl
    proc = subprocess.run(
        [openssl, "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_leaf_context_refuses_other_hosts_and_is_cached(ca: RunCA) -> None:
    with pytest.raises(EgressRefusal):
        ca.leaf_context("evil.example")
    with pytest.raises(EgressRefusal):
        ca.leaf_context("sub.api.test.example")  # constraints would allow it; we do not sign it
    context = ca.leaf_context("api.test.example")
    assert context is ca.leaf_context("API.test.example")
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_a_ca_without_hosts_signs_nothing_real() -> None:
    empty = RunCA.create([], dt.timedelta(minutes=5))
    constraints = empty.certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert [n.value for n in constraints.value.permitted_subtrees or []] == ["invalid"]
    with pytest.raises(EgressRefusal):
        empty.leaf_context("api.test.example")
    with pytest.raises(ValueError, match="DNS names"):
        RunCA.create(["10.0.0.1"], dt.timedelta(minutes=5))


def test_leaf_keys_never_touch_a_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = RunCA.create(HOSTS, dt.timedelta(minutes=5))
    # memfd path: a temporary directory that does not exist would break any file use.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "absent"))
    assert ca.leaf_context("api.test.example") is not None
    # fallback path (no memfd): a 0700 directory, emptied right after loading.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delattr(os, "memfd_create")
    assert ca.leaf_context("other.test.example") is not None
    assert list(tmp_path.iterdir()) == []
