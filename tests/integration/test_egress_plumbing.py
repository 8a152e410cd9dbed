"""The sandbox side of egress on every real backend: bwrap, Docker, rootless Podman, gVisor.

The host proxy is not under test here: in its place the test runs a tiny
HTTP-proxy stand-in on the run's unix socket (an absolute-form request gets a
JSON echo of what it received; ``CONNECT`` gets ``200`` and then every byte is
echoed back until the client half-closes). A sandboxed script, given exactly
what :class:`EgressMounts` says, reaches it through ``entry.py``'s forwarder:
with ``urllib.request`` and the proxy variables, and with a raw socket.

Specs are built directly, as the runner builds them, in a 0755 directory under
/tmp (rootless Podman's user must reach it; pytest's ``tmp_path`` is 0700).
"""

from __future__ import annotations

import datetime
import json
import secrets
import socket
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import jhansi.sandbox.entry
from jhansi.egress.sandboxside import (
    BUNDLE_TARGET,
    EGRESS_PORT,
    SOCKET_TARGET,
    EgressMounts,
    make_egress_dir,
)
from jhansi.errors import SandboxError
from jhansi.sandbox.bwrap import BwrapBackend
from jhansi.sandbox.bwrap.binary import find_bwrap
from jhansi.sandbox.docker import DockerBackend
from jhansi.sandbox.docker.container import gvisor_connects_host_sockets
from jhansi.sandbox.engines import connect, describe
from jhansi.sandbox.interface import (
    ENTRY_DIR,
    HOME,
    PYTHON,
    WORKDIR,
    Backend,
    ExecResult,
    ExecStatus,
    Limits,
    Mount,
    SandboxSpec,
    Stream,
)
from tests.conftest import RUNSC, TEST_IMAGE, Engine

ENTRY = Mount(Path(jhansi.sandbox.entry.__file__), f"{ENTRY_DIR}/entry.py")
TEST_LABEL = "org.jhansi.test.egress-plumbing"
LIMITS = Limits(
    memory=256 << 20, cpus=1.0, pids=64, tmp_size=8 << 20, timeout=60.0, output_limit=1 << 20
)
PLACEHOLDER = "jhansi-placeholder-" + "ab" * 16

BACKENDS = [
    pytest.param("bwrap", marks=pytest.mark.bwrap, id="bwrap"),
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
    pytest.param("podman", marks=pytest.mark.podman, id="podman"),
    pytest.param("gvisor", marks=[pytest.mark.docker, pytest.mark.gvisor], id="gvisor"),
]


# -- the proxy stand-in ------------------------------------------------------------------------


@dataclass
class EchoProxy:
    """A unix-socket server speaking just enough HTTP proxy to be reached (see module doc)."""

    path: Path
    requests: list[str] = field(default_factory=list)
    listener: socket.socket | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        """Stop listening; the socket file stays, as it would after a proxy crash."""
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        if self.listener is not None:
            self.listener.close()

    def _serve(self) -> None:
        assert self.listener is not None
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            handler = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            handler.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.requests.append(lines[0])
            if lines[0].startswith("CONNECT "):
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    conn.sendall(rest)
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
                return
            body = json.dumps({"request_line": lines[0], "headers": lines[1:]}).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )


def run_ca() -> bytes:
    """A CA certificate like the proxy's per-run one (only its PEM matters here)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jhansi test run CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# -- backends ----------------------------------------------------------------------------------


class Recorder:
    """An output sink that keeps nothing (the result's tails are enough here)."""

    def write(self, stream: Stream, data: bytes) -> None:
        """Dropped."""


@dataclass
class Target:
    """A backend to run specs on, and how to find what it left behind."""

    kind: str
    backend: Backend
    runtime: str | None
    token: str
    engine: Engine | None

    def leftovers(self) -> list[str]:
        if self.engine is None:
            return []
        found = self.engine.client.api.containers(
            all=True, filters={"label": f"{TEST_LABEL}={self.token}"}
        )
        return [str(c["Id"]) for c in found]

    def runsc_args(self) -> list[str]:
        assert self.engine is not None
        runtimes = self.engine.client.info().get("Runtimes") or {}
        return list((runtimes.get(RUNSC) or {}).get("runtimeArgs") or [])


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, host_python: Path) -> Iterator[Target]:
    kind = request.param
    token = secrets.token_hex(6)
    if kind == "bwrap":
        bwrap = request.getfixturevalue("bwrap_path")
        yield Target(
            kind, BwrapBackend(find_bwrap(str(bwrap)), python=host_python), None, token, None
        )
        return
    fixture = {"docker": "docker_engine", "podman": "podman_engine", "gvisor": "gvisor_engine"}
    engine: Engine = request.getfixturevalue(fixture[kind])
    client = connect(engine.url)
    backend = DockerBackend(client, describe(client, engine.url), pull="never")
    found = Target(kind, backend, RUNSC if kind == "gvisor" else None, token, engine)
    try:
        yield found
    finally:
        left = found.leftovers()
        for container in left:
            engine.client.api.remove_container(container, force=True)
        client.close()
        assert not left, f"containers left behind: {left}"


@dataclass
class Run:
    """A project with ``script.py``, the egress directory and its stand-in proxy."""

    base: Path
    egress_dir: Path
    proxy: EchoProxy
    ca: bytes


@pytest.fixture
def egress(shared_dir: Path) -> Iterator[Run]:
    """An egress directory as the runner makes it, with the stand-in proxy listening."""
    runtime = shared_dir / "run"
    runtime.mkdir()
    runtime.chmod(0o711)  # as `prepare_jhansi_home` does for rootless Podman's user
    egress_dir = make_egress_dir(runtime)
    proxy = EchoProxy(egress_dir / "proxy.sock")
    proxy.start()
    try:
        yield Run(shared_dir, egress_dir, proxy, run_ca())
    finally:
        proxy.close()


def spec_for(
    target: Target,
    base: Path,
    script: str,
    *,
    egress: EgressMounts | None = None,
) -> SandboxSpec:
    project = base / "project"
    project.mkdir(mode=0o755)
    (project / "script.py").write_text(textwrap.dedent(script))
    home = base / "home"
    home.mkdir(mode=0o700)
    entry_args = egress.entry_args if egress is not None else ()
    return SandboxSpec(
        run_id=f"egress-{target.token}",
        argv=(PYTHON, "-I", "-S", ENTRY.target, *entry_args, "--", f"{WORKDIR}/script.py"),
        mounts=(
            ENTRY,
            Mount(project, WORKDIR),
            Mount(home, HOME, read_only=False, owned=True),
            *(egress.mounts if egress is not None else ()),
        ),
        env={
            "HOME": HOME,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **(egress.env if egress is not None else {}),
        },
        limits=LIMITS,
        image=TEST_IMAGE,
        python=None,
        labels={TEST_LABEL: target.token},
        runtime=target.runtime,
    )


def run(target: Target, spec: SandboxSpec) -> ExecResult:
    return target.backend.run(spec, Recorder())


def report(result: ExecResult) -> dict[str, object]:
    assert result.status is ExecStatus.SUCCEEDED, (
        result.error,
        result.stderr.data.decode(errors="replace"),
    )
    found = json.loads(result.stdout.data.decode().strip().splitlines()[-1])
    assert isinstance(found, dict)
    return found


def gvisor_refuses(target: Target) -> bool:
    """gVisor as registered here cannot connect to host sockets (CI registers it so)."""
    return target.kind == "gvisor" and not gvisor_connects_host_sockets(target.runsc_args())


# -- the tests ---------------------------------------------------------------------------------

REACH_SCRIPT = """
import json, os, socket, threading, urllib.request

port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
out = {"placeholder": os.environ.get("API_TOKEN")}
with open(os.environ["SSL_CERT_FILE"]) as handle:
    out["bundle"] = handle.read()
out["ca_vars"] = sorted({os.environ[v] for v in (
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS")})
out["listing"] = sorted(os.listdir("/opt/jhansi/egress"))

# An HTTP client with nothing but the environment: the request goes to the proxy.
with urllib.request.urlopen("http://api.example.test/v1/things?q=1", timeout=20) as response:
    out["http"] = json.loads(response.read())

# A tunnel, and 3 MiB through it both ways, ended by a half-close.
payload = bytes(range(256)) * (12 * 1024)
conn = socket.create_connection(("127.0.0.1", port), timeout=20)
conn.sendall(b"CONNECT api.example.test:443 HTTP/1.1\\r\\nHost: api.example.test:443\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += conn.recv(1)
out["connect_status"] = head.split(b"\\r\\n")[0].decode()

def send():
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)

writer = threading.Thread(target=send)
writer.start()
received = bytearray()
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    received += chunk
writer.join()
out["echo_ok"] = bytes(received) == payload
out["echo_len"] = len(received)
print(json.dumps(out))
"""


def test_script_reaches_the_host_socket_through_the_forwarder(target: Target, egress: Run) -> None:
    prepared = EgressMounts.prepare(
        egress.egress_dir, ca_pem=egress.ca, placeholders={"API_TOKEN": PLACEHOLDER}
    )
    spec = spec_for(target, egress.base, REACH_SCRIPT, egress=prepared)
    if gvisor_refuses(target):
        with pytest.raises(SandboxError) as caught:
            run(target, spec)
        assert "--host-uds=open" in caught.value.hint
        assert egress.proxy.requests == []
        return
    found = report(run(target, spec))
    assert found["placeholder"] == PLACEHOLDER
    bundle = str(found["bundle"])
    assert egress.ca.decode().strip() in bundle
    assert prepared.roots is not None
    assert prepared.roots.read_text().strip() in bundle  # the host's roots come first
    assert found["ca_vars"] == [BUNDLE_TARGET]
    assert found["listing"] == ["ca-bundle.pem", "proxy.sock"]
    http = found["http"]
    assert isinstance(http, dict)
    assert http["request_line"] == "GET http://api.example.test/v1/things?q=1 HTTP/1.1"
    assert "Host: api.example.test" in http["headers"]
    assert found["connect_status"] == "HTTP/1.1 200 Connection established"
    assert found["echo_ok"] is True, found["echo_len"]
    assert egress.proxy.requests == [
        "GET http://api.example.test/v1/things?q=1 HTTP/1.1",
        "CONNECT api.example.test:443 HTTP/1.1",
    ]


FAIL_CLOSED_SCRIPT = """
import json, os, socket
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
conn = socket.create_connection(("127.0.0.1", port), timeout=20)
try:
    conn.sendall(b"CONNECT api.example.test:443 HTTP/1.1\\r\\n\\r\\n")
    answer = conn.recv(100)
    print(json.dumps({"answer": answer.decode("latin-1")}))
except OSError as exc:
    print(json.dumps({"answer": "", "error": type(exc).__name__}))
"""


def test_without_the_proxy_the_connection_is_closed(target: Target, egress: Run) -> None:
    prepared = EgressMounts.prepare(egress.egress_dir, ca_pem=egress.ca, placeholders={})
    egress.proxy.close()  # the socket file stays; nothing listens on it
    spec = spec_for(target, egress.base, FAIL_CLOSED_SCRIPT, egress=prepared)
    if gvisor_refuses(target):
        with pytest.raises(SandboxError):
            run(target, spec)
        return
    found = report(run(target, spec))
    assert found["answer"] == ""


NO_EGRESS_SCRIPT = f"""
import json, os, socket
out = {{"interfaces": sorted(name for _, name in socket.if_nameindex())}}
out["proxy_vars"] = sorted(k for k in os.environ if "proxy" in k.lower() or "CERT" in k)
try:
    socket.create_connection(("127.0.0.1", {EGRESS_PORT}), timeout=5).close()
    out["listener"] = "reached"
except OSError as exc:
    out["listener"] = type(exc).__name__
out["egress_dir"] = os.path.exists("/opt/jhansi/egress")
print(json.dumps(out))
"""


def test_without_egress_there_is_no_listener_and_no_network(
    target: Target, shared_dir: Path
) -> None:
    found = report(run(target, spec_for(target, shared_dir, NO_EGRESS_SCRIPT)))
    assert found == {
        "interfaces": ["lo"],
        "proxy_vars": [],
        "listener": "ConnectionRefusedError",
        "egress_dir": False,
    }


def test_socket_mount_paths_are_the_ones_entry_is_told(egress: Run) -> None:
    prepared = EgressMounts.prepare(egress.egress_dir, ca_pem=egress.ca, placeholders={})
    socket_mount = next(m for m in prepared.mounts if m.kind == "socket")
    assert socket_mount.target == SOCKET_TARGET
    assert prepared.entry_args == ("--egress-socket", SOCKET_TARGET, "--egress-port", "3128")


# -- which gVisor settings allow host sockets ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        ([], False),
        (["--platform=ptrace", "--network=none"], False),
        (["--network=none", "--host-uds=open"], True),
        (["-host-uds=all"], True),
        (["--host-uds", "open"], True),
        (["--host-uds=create"], False),
        (["--host-uds=open", "--host-uds=none"], False),
        (["--fsgofer-host-uds"], True),
        (["--fsgofer-host-uds=false"], False),
    ],
)
def test_gvisor_host_socket_settings(args: list[str], allowed: bool) -> None:
    assert gvisor_connects_host_sockets(args) is allowed
