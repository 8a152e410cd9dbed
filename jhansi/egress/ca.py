"""The per-run certificate authority that lets the proxy terminate TLS for bound hosts.

One CA per run, created in memory and never written anywhere: ECDSA P-256,
``basicConstraints CA:TRUE, pathlen:0`` (critical), ``keyUsage keyCertSign``
(critical), and critical ``nameConstraints`` that permit only the intercepted DNS
names and exclude every IP address; valid from one minute ago for the run's
lifetime only. Even if the sandbox stole the certificate it trusts, nothing it could
do with it works beyond those names and that time. (A DNS name constraint also
covers subdomains by RFC 5280; :meth:`RunCA.leaf_context` signs exact names only.)

Loading a key into :class:`ssl.SSLContext` needs a path. The leaf's key and chain
are handed over through an anonymous in-memory file (``memfd_create``, read via
``/proc/self/fd``), which exists on no file system and vanishes on close; where that
is unavailable, a 0600 file in a fresh 0700 directory that is removed immediately
after loading. The CA key itself is never serialised at all: only leaves are loaded.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from jhansi.egress.hostpolicy import EgressRefusal

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

PLACEHOLDER_DOMAIN = "invalid"
"""Permitted by a CA that intercepts nothing (RFC 6761: never resolves)."""


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """Load a PEM key + chain into ``context`` without it touching a file system."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and Path("/proc/self/fd").is_dir():
        fd = memfd("jhansi-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="jhansi-leaf-") as scratch:  # mode 0700
        path = Path(scratch) / "leaf.pem"
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(handle, pem)
        finally:
            os.close(handle)
        try:
            context.load_cert_chain(path)
        finally:
            path.unlink()


class RunCA:
    """A throw-away CA for one run; sign leaves only for the hosts it was made for."""

    def __init__(
        self,
        *,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        hosts: tuple[str, ...],
    ) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding

        self._key = key
        self._certificate = certificate
        self.hosts = hosts
        self.ca_pem: bytes = certificate.public_bytes(Encoding.PEM)
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return self._certificate

    @property
    def not_after(self) -> dt.datetime:
        """When the CA (and every leaf) stops being valid (UTC)."""
        return self._certificate.not_valid_after_utc

    @classmethod
    def create(cls, hosts: Sequence[str], lifetime: timedelta) -> RunCA:
        """A new CA constrained to ``hosts`` (DNS names), valid for ``lifetime`` from now."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        if lifetime <= timedelta(0):
            raise ValueError("the CA lifetime must be positive")
        names = tuple(dict.fromkeys(h.lower() for h in hosts))
        for host in names:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                continue
            raise ValueError(f"the run CA signs DNS names only, not {host}")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jhansi"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"jhansi run CA {os.urandom(6).hex()}"),
            ]
        )
        permitted: list[x509.GeneralName] = [
            x509.DNSName(h) for h in (names or (PLACEHOLDER_DOMAIN,))
        ]
        excluded: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ]
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate=certificate, hosts=names)

    def issue_leaf(self, host: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf certificate and its key for exactly ``host`` (one of the CA's hosts)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        host = host.lower()
        if host not in self.hosts:
            raise EgressRefusal(
                f"the run CA does not sign for {host}",
                hint="only hosts with a bound secret are intercepted",
            )
        key = ec.generate_private_key(ec.SECP256R1())
        ca = self._certificate
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(ca.not_valid_before_utc)
            .not_valid_after(ca.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return leaf, key

    def leaf_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a leaf for ``host``; cached per host.

        TLS 1.2 or later, ALPN ``http/1.1`` only, and a handshake whose SNI is not
        exactly ``host`` (or has none) is aborted with ``unrecognized_name``.
        Raises :class:`EgressRefusal` for a host outside the CA's names.
        """
        host = host.lower()
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None:
                return cached
            from cryptography.hazmat.primitives.serialization import (
                Encoding,
                NoEncryption,
                PrivateFormat,
            )

            leaf, key = self.issue_leaf(host)
            pem = (
                key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
                + leaf.public_bytes(Encoding.PEM)
                + self.ca_pem
            )
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.set_alpn_protocols(["http/1.1"])
            _load_chain(context, pem)

            def check_sni(_sock: object, server_name: str | None, _ctx: object) -> int | None:
                if server_name is None or server_name.lower().rstrip(".") != host:
                    return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
                return None

            context.sni_callback = check_sni
            self._contexts[host] = context
            return context
