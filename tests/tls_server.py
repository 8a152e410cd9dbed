"""A real HTTPS (and plain HTTP) test server on 127.0.0.1 with its own test CA.

Usage::

    with TLSServer(tmp_path) as server:
        server.port, server.ca_path, server.plain_port, server.seen

The server presents a certificate for :data:`TEST_NAMES` (and ``localhost`` /
127.0.0.1) issued by a fresh test CA written to ``ca_path``. Handlers (GET or POST):

``/echo``                  the request (method, path, headers, body) as JSON
``/auth-echo``             the Authorization value echoed raw, base64 (standard and
                           url-safe, and inside longer base64 blobs at every
                           alignment), hex (lower/upper) and URL-encoded, in the
                           JSON body and in ``X-Echo-*`` headers
``/auth-echo-chunked``     the same body, chunked in 7-byte chunks
``/big``                   2 MiB with a Content-Length and the Authorization value
                           near the start, the middle and the end
``/basic-echo``            the password of Basic credentials, raw and base64
``/echo-form/FORM``        the Authorization value disguised: ``json`` (``\\/`` and some
                           ``\\uXXXX``), ``percent`` (every byte, mixed case), ``html``
                           (entities of every kind), ``gzip`` (an application/gzip body),
                           ``split`` (halves in two headers), ``folded`` (an obs-fold header)
``/stream?size=N``         N bytes made on the fly (never held in memory)
``/sink``                  reads a body of any size without keeping it; answers its size
Every request the server saw is appended to ``seen`` (a thread-safe list of dicts).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import ipaddress
import json
import ssl
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

TEST_NAMES = ("api.test.example", "other.test.example", "plain.test.example")


class TestCA:
    """A CA for tests (ECDSA P-256), able to issue server and client certificates."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jhansi test CA")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        """The CA certificate in PEM."""
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.certificate.public_bytes(Encoding.PEM)

    def issue(
        self, names: Sequence[str], ips: Sequence[str] = (), *, client: bool = False
    ) -> tuple[bytes, bytes]:
        """A server certificate and key (PEM) for ``names`` and ``ips`` (with ``client``: a
        client certificate for ``names[0]``)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return (
            cert.public_bytes(Encoding.PEM),
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        )


def auth_echo_body(auth: bytes) -> bytes:
    """Every encoding of ``auth`` the /auth-echo handlers send back (JSON bytes)."""
    forms: dict[str, str] = {
        "raw": auth.decode("latin-1"),
        "base64": base64.b64encode(auth).decode(),
        "base64url": base64.urlsafe_b64encode(auth).decode(),
        "hex": auth.hex(),
        "HEX": auth.hex().upper(),
        "urlencoded": quote(auth, safe=""),
    }
    for pad in range(3):  # the value inside a longer base64 blob, at every alignment
        blob = b"<" * (pad + 1) + auth + b">" * 5
        forms[f"blob{pad}"] = base64.b64encode(blob).decode()
        forms[f"bloburl{pad}"] = base64.urlsafe_b64encode(blob).decode()
    return json.dumps(forms).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests look at ``seen``."""

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, size: int) -> None:
        """``size`` bytes made on the fly (never held): load tests of the proxy."""
        block = (b"0123456789abcdef" * 4096)[:65536]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        left = size
        while left > 0:
            self.wfile.write(block[: min(left, len(block))])
            left -= len(block)

    def _sink(self) -> None:
        """Read a request body of any size without keeping it; answer with its size."""
        left, total = int(self.headers.get("Content-Length") or 0), 0
        while left > 0:
            got = self.rfile.read(min(left, 1 << 20))
            if not got:
                break
            left -= len(got)
            total += len(got)
        self._send(200, str(total).encode())

    def _echo_form(self, form: str, auth: bytes) -> None:
        """The Authorization value echoed in a disguise ``form``."""
        text = auth.decode("latin-1")
        headers: dict[str, str] = {"Content-Type": "application/json"}
        if form == "json":
            # JSON as PHP and others write it: \/ for every slash, some characters \u-escaped
            escaped = "".join(
                f"\\u{ord(c):04x}" if i % 3 == 0 else c for i, c in enumerate(text)
            ).replace("/", "\\/")
            body = ('{"echo": "' + escaped + '"}').encode()
            headers["X-Echo"] = escaped
        elif form == "percent":
            every = "".join(f"%{b:02X}" if i % 2 else f"%{b:02x}" for i, b in enumerate(auth))
            body, headers["X-Echo"] = every.encode(), every
        elif form == "html":
            entities = "".join(
                (f"&#{ord(c)};", f"&#x{ord(c):X}", f"&#00{ord(c)}", c)[i % 4]
                for i, c in enumerate(text)
            ).replace("/", "&sol;")
            body = f"<p>{entities}</p>".encode()
            headers["Content-Type"] = "text/html"
            headers["X-Echo"] = entities
        elif form == "gzip":
            body = gzip.compress(b"echo: " + auth + b"\n")
            headers["Content-Type"] = "application/gzip"
        elif form == "split":
            half = len(text) // 2
            body = b"{}"
            headers["X-Part-1"], headers["X-Part-2"] = text[:half], text[half:]
        elif form == "folded":
            half = len(text) // 2
            body = b"{}"
            headers["X-Folded"] = text[:half] + "\r\n " + text[half:]
        else:
            self._send(404, b"no such form\n")
            return
        self._send(200, body, headers)

    def _handle(self) -> None:
        route = self.path.split("?")[0]
        if route == "/stream":
            self._stream(int(self.path.partition("size=")[2] or 0))
            return
        if route == "/sink":
            self._sink()
            return
        body = self._body()
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("latin-1"),
            "tls": self.server.tls,
        }
        with self.server.lock:
            self.server.seen.append(seen)
        auth = (self.headers.get("Authorization") or "").encode("latin-1")
        route = self.path.split("?")[0]
        if route == "/echo":
            self._send(200, json.dumps(seen).encode(), {"Content-Type": "application/json"})
        elif route == "/auth-echo":
            self._send(
                200,
                auth_echo_body(auth),
                {
                    "Content-Type": "application/json",
                    "X-Echo-Authorization": auth.decode("latin-1"),
                    "X-Echo-Base64": base64.b64encode(auth).decode(),
                    "X-Echo-Hex": auth.hex(),
                },
            )
        elif route == "/auth-echo-chunked":
            data = auth_echo_body(auth)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for at in range(0, len(data), 7):
                part = data[at : at + 7]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif route == "/big":
            filler = b"." * (1024 * 1024)
            data = auth + filler + auth + filler + auth
            self._send(200, data, {"Content-Type": "application/octet-stream"})
        elif route.startswith("/echo-form/"):
            self._echo_form(route.removeprefix("/echo-form/"), auth)
        elif route == "/basic-echo":
            scheme, _, credentials = auth.partition(b" ")
            decoded = base64.b64decode(credentials) if scheme.lower() == b"basic" else b""
            password = decoded.partition(b":")[2]
            self._send(200, password + b"\n" + base64.b64encode(password))
        else:
            self._send(404, b"not found\n")

    do_GET = do_POST = do_PUT = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[dict[str, Any]]
    lock: threading.Lock
    tls: bool


class TLSServer:
    """A real HTTPS server (and a plain HTTP one) on 127.0.0.1, in threads."""

    def __init__(self, directory: Path, names: Sequence[str] = TEST_NAMES) -> None:
        self.ca = TestCA()
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_path = directory / "test-ca.pem"
        self.ca_path.write_bytes(self.ca.pem)
        cert, key = self.ca.issue([*names, "localhost"], ["127.0.0.1"])
        cert_path, key_path = directory / "server.pem", directory / "server.key"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        context.set_alpn_protocols(["http/1.1"])
        self.seen: list[dict[str, Any]] = []
        lock = threading.Lock()
        self._servers: list[_Server] = []
        for tls in (True, False):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.seen, server.lock, server.tls = self.seen, lock, tls
            if tls:
                # The handshake happens on first read, in the handler's thread (a stalled
                # client must not block the accepting loop).
                server.socket = context.wrap_socket(
                    server.socket, server_side=True, do_handshake_on_connect=False
                )
            self._servers.append(server)
        self.port = int(self._servers[0].server_address[1])
        self.plain_port = int(self._servers[1].server_address[1])
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for s in self._servers
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Stop both servers."""
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> TLSServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
