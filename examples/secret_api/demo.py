"""A sandboxed script calls an HTTPS API with a token it never sees.

    $ uv run python examples/secret_api/demo.py

1. Starts a demo API on https://HOST:PORT: this machine's loopback, a random
   port, a certificate from a CA made for the demo (written to demo-ca.pem
   beside this file, removed at the end). It accepts only
   ``Authorization: Bearer <the real token>`` and echoes that header back.
   HOST is ``localhost`` (or DEMO_API_HOST): the sandbox's requests go through the
   egress proxy on the host, which resolves it there.
2. Puts the token (DEMO_TOKEN if set, else a random one) in DEMO_TOKEN in the
   environment jhansi runs in. Where there is no OS keyring (CI, servers),
   jhansi reads a secret NAME from the variable NAME; on a desktop,
   `jhansi secret set DEMO_TOKEN` keeps it in the keyring instead (and a stored
   DEMO_TOKEN wins over the variable).
3. Runs ``jhansi run --secret DEMO_TOKEN@HOST:PORT examples/secret_api/call.py URL``.
   The sandbox's DEMO_TOKEN is a placeholder; the egress proxy swaps in the real
   token only on requests to HOST:PORT, and scrubs it from the answer.
   jhansi.toml beside this file allows the loopback address and trusts the demo CA;
   the demo first runs ``jhansi trust`` on it, as a project file may open the
   network only once its content is trusted.
4. Stops the API and says whether it received the real token.

Arguments are passed on to `jhansi run` (for example ``--backend docker``).
It runs on the host, in jhansi's own environment (it needs ``cryptography``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
CA_FILE = HERE / "demo-ca.pem"  # jhansi.toml: [network] upstream_ca = "demo-ca.pem"


def make_certificates(host: str) -> tuple[bytes, bytes, bytes]:
    """A demo CA and a certificate for ``host`` it signed: (CA PEM, cert PEM, key PEM)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jhansi demo CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(host)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


class DemoAPI(BaseHTTPRequestHandler):
    """Accepts ``Bearer <token>`` only; echoes the Authorization header it got."""

    token = ""
    saw_token: list[bool] = []  # noqa: RUF012 - one list per run, shared by the threads

    def do_GET(self) -> None:
        """Answer 200 to the real token, 401 to anything else."""
        auth = self.headers.get("Authorization", "")
        accepted = hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode())
        self.saw_token.append(accepted)
        message = "token accepted" if accepted else "wrong token"
        body = json.dumps({"message": message, "echo": auth}).encode()
        self.send_response(200 if accepted else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the demo's output to what matters."""


def api_host() -> tuple[str, str]:
    """A name of this machine that resolves to a loopback address, and that address.

    ``localhost`` unless DEMO_API_HOST names another: every request from the sandbox
    goes through the egress proxy, which resolves the name on the host.
    """
    host = os.environ.get("DEMO_API_HOST") or "localhost"
    try:
        infos = socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        infos = []
    addresses = {str(info[4][0]) for info in infos}
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        sys.exit(
            f"{host!r} does not resolve to a loopback address only ({sorted(addresses)}): "
            "set DEMO_API_HOST to a name that does"
        )
    return host, min(addresses)


def main(jhansi_args: list[str]) -> int:
    """Start the API, run call.py through jhansi, stop the API; jhansi's exit code."""
    host, address = api_host()
    ca_pem, cert_pem, key_pem = make_certificates(host)
    DemoAPI.token = os.environ.get("DEMO_TOKEN") or secrets.token_urlsafe(24)
    DemoAPI.saw_token = []
    server = ThreadingHTTPServer((address, 0), DemoAPI)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as keys:
        (Path(keys) / "cert.pem").write_bytes(cert_pem + key_pem)
        context.load_cert_chain(Path(keys) / "cert.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    CA_FILE.write_bytes(ca_pem)
    command = [
        "run",
        "--secret",
        f"DEMO_TOKEN@{host}:{port}",
        *jhansi_args,
        os.path.relpath(HERE / "call.py"),
        f"https://{host}:{port}/hello",
    ]
    print(f"demo API on https://{host}:{port} ({address}); DEMO_TOKEN is in jhansi's environment")
    try:
        env = {**os.environ, "DEMO_TOKEN": DemoAPI.token}
        # The example's jhansi.toml opens the network (a loopback address, the demo CA):
        # a project file may do that only once you trust its exact content.
        trust = ["trust", os.path.relpath(HERE / "jhansi.toml")]
        print("+ jhansi " + " ".join(trust), flush=True)
        code = subprocess.run([sys.executable, "-m", "jhansi", *trust], env=env).returncode
        if code == 0:
            print("+ jhansi " + " ".join(command), flush=True)
            code = subprocess.run([sys.executable, "-m", "jhansi", *command], env=env).returncode
    finally:
        server.shutdown()
        server.server_close()
        CA_FILE.unlink(missing_ok=True)
    seen = "yes" if DemoAPI.saw_token and all(DemoAPI.saw_token) else "no"
    print(f"the API received the real token: {seen} ({len(DemoAPI.saw_token)} request(s))")
    return code if seen == "yes" else code or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
