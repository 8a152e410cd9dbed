"""The egress proxy end to end: real TLS clients, a real HTTPS server, all on loopback.

The test server listens on 127.0.0.1, but the proxy only connects to DNS names. This
machine has no DNS for the test names, so a resolver injected into the proxy stands
in for DNS (mapping ``*.test.example`` to 127.0.0.1) and the policy allows
127.0.0.0/8 explicitly. Everything else is real: sockets, TLS handshakes, the run
CA, certificate verification on both sides, HTTP parsing.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import blake3
import pytest

from jhansi.egress.events import EgressEvent
from jhansi.egress.hostpolicy import EgressPolicy, HostPort, SecretBinding
from jhansi.egress.proxy import EgressProxy
from tests.tls_server import TLSServer

API = "api.test.example"
OTHER = "other.test.example"
PLAIN = "plain.test.example"
VALUE = "sk-live-0123456789abcdefXYZ"
OTHER_VALUE = "other-secret-value-4242"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class FakeDNS:
    """Stands in for DNS (there is none here for test names); records every lookup."""

    def __init__(self, answers: dict[str, Sequence[Sequence[str]]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.calls.append((host, port))
            seq = self.answers.get(host)
            if seq is not None:
                turn = sum(1 for h, _ in self.calls if h == host) - 1
                return list(seq[min(turn, len(seq) - 1)])
        if host.endswith(".test.example"):
            return ["127.0.0.1"]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    with TLSServer(tmp_path_factory.mktemp("tls")) as running:
        yield running


@pytest.fixture
def dns() -> FakeDNS:
    return FakeDNS()


@pytest.fixture
def make_proxy(server: TLSServer, dns: FakeDNS) -> Iterator[Callable[..., tuple[EgressProxy, int]]]:
    started: list[EgressProxy] = []

    def make(**overrides: Any) -> tuple[EgressProxy, int]:
        resolver = overrides.pop("resolver", dns)
        fields: dict[str, Any] = {
            "allow": (HostPort(OTHER + "-tunnel", server.port),),
            "secrets": (SecretBinding(name="KEY", value=VALUE, hosts=(f"{API}:{server.port}",)),),
            "allow_private": LOOPBACK,
            "upstream_ca": server.ca_path,
        }
        fields.update(overrides)
        proxy = EgressProxy(EgressPolicy(**fields), resolver=resolver)
        started.append(proxy)
        return proxy, proxy.start_tcp()

    yield make
    for proxy in started:
        proxy.stop()


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def connect(
    port: int, target: str, *, unix: Path | None = None
) -> tuple[int, dict[str, str], bytes, socket.socket]:
    """Send CONNECT; the proxy's answer (status, headers, body) and the socket."""
    if unix is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(unix))
    else:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status, headers, body = _read_head(sock)
    return status, headers, body, sock


def tls(
    sock: socket.socket,
    host: str | None,
    *,
    cadata: bytes | None = None,
    cafile: Path | None = None,
) -> ssl.SSLSocket:
    context = ssl.create_default_context(cadata=cadata.decode() if cadata else None, cafile=cafile)
    if host is None:
        context.check_hostname = False
    return context.wrap_socket(sock, server_hostname=host)


def request(
    sock: ssl.SSLSocket | socket.socket,
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    *,
    chunks: Sequence[bytes] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.sock = sock
    if chunks is not None:
        conn.request(method, path, body=iter(chunks), headers=headers or {}, encode_chunked=True)
    else:
        conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def intercepted(proxy: EgressProxy, port: int, server: TLSServer, host: str = API) -> ssl.SSLSocket:
    status, _, body, sock = connect(port, f"{host}:{server.port}")
    assert status == 200, body
    return tls(sock, host, cadata=proxy.ca_pem)


def _b64_cores(value: bytes) -> list[bytes]:
    """The base64 characters of ``value`` at each offset mod 3 (independent of scrub.py)."""
    cores = []
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * pad + value)
            cores.append(text[(0, 2, 3)[pad] : (pad + len(value)) * 4 // 3])
    return cores


def assert_no_leak(data: bytes, value: str = VALUE) -> None:
    raw = value.encode()
    assert raw not in data
    assert raw.hex().encode() not in data.lower()
    assert quote(raw, safe="").encode() not in data
    for core in _b64_cores(raw):
        assert core not in data


def wait_for_events(proxy: EgressProxy, count: int) -> tuple[EgressEvent, ...]:
    import time

    deadline = time.monotonic() + 5
    while len(proxy.events()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return proxy.events()


# -- substitution and scrubbing ------------------------------------------------------


@pytest.mark.parametrize("path", ["/auth-echo", "/auth-echo-chunked"])
def test_the_server_gets_the_key_and_the_client_never_sees_it(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer, path: str
) -> None:
    proxy, port = make_proxy()
    placeholder = proxy.placeholders["KEY"]
    sock = intercepted(proxy, port, server)
    status, headers, body = request(
        sock, API, server.port, "GET", path, {"Authorization": f"Bearer {placeholder}"}
    )
    assert status == 200
    seen = server.seen[-1]
    assert ["Authorization", f"Bearer {VALUE}"] in seen["headers"]
    assert ["Accept-Encoding", "identity"] in seen["headers"]
    everything = body + json.dumps(headers).encode()
    assert_no_leak(everything)
    echoed = json.loads(body)
    assert echoed["raw"] == f"Bearer {placeholder}"
    assert bytes.fromhex(echoed["hex"]) == f"Bearer {placeholder}".encode()
    assert bytes.fromhex(echoed["HEX"]) == f"Bearer {placeholder}".encode()
    if path == "/auth-echo":
        assert headers["x-echo-authorization"] == f"Bearer {placeholder}"
    # base64 of "Bearer <value>" (and longer blobs): the value sits at an offset, so the
    # characters at its edges mix with neighbours and what comes back may not decode;
    # whatever does decode must not hold the value.
    for key, text in echoed.items():
        if key.startswith(("blob", "base64")):
            decode = base64.urlsafe_b64decode if "url" in key else base64.b64decode
            try:
                decoded = decode(text + "=" * (-len(text) % 4))
            except ValueError:
                continue
            assert VALUE.encode() not in decoded
    event = wait_for_events(proxy, 1)[0]
    assert event.decision == "intercepted"
    assert event.secrets == ("KEY",)
    assert event.path_hash == blake3.blake3(path.encode()).hexdigest()
    assert (event.host, event.port, event.address, event.status) == (
        API,
        server.port,
        "127.0.0.1",
        200,
    )
    assert event.bytes_down == len(body)
    json.dumps(event.as_dict())
    assert VALUE not in json.dumps([e.as_dict() for e in proxy.events()])


def test_large_streamed_response_is_scrubbed_across_chunks(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy()
    placeholder = proxy.placeholders["KEY"]
    sock = intercepted(proxy, port, server)
    status, _headers, body = request(
        sock, API, server.port, "GET", "/big", {"Authorization": placeholder}
    )
    assert status == 200
    assert_no_leak(body)
    assert body.count(placeholder.encode()) == 3
    assert len(body) == 2 * 1024 * 1024 + 3 * len(placeholder)


def test_keep_alive_and_request_bodies(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy()
    placeholder = proxy.placeholders["KEY"]
    sock = intercepted(proxy, port, server)
    auth = {"Authorization": f"Bearer {placeholder}"}
    for i in range(3):
        status, _, body = request(
            sock, API, server.port, "POST", "/echo", auth, f"body {i}".encode()
        )
        assert status == 200
        assert json.loads(body)["body"] == f"body {i}"
    status, _, body = request(
        sock, API, server.port, "PUT", "/echo", auth, chunks=[b"a" * 10, b"b" * 5]
    )
    assert json.loads(body)["body"] == "a" * 10 + "b" * 5
    events = wait_for_events(proxy, 4)
    assert [e.method for e in events] == ["POST", "POST", "POST", "PUT"]
    assert [e.bytes_up for e in events] == [6, 6, 6, 15]


def test_basic_scheme_substitutes_inside_the_credentials(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    secret = SecretBinding(
        name="PASS", value=VALUE, hosts=(f"{API}:{server.port}",), scheme="basic"
    )
    proxy, port = make_proxy(secrets=(secret,))
    credentials = base64.b64encode(f"alice:{proxy.placeholders['PASS']}".encode()).decode()
    sock = intercepted(proxy, port, server)
    status, _, body = request(
        sock, API, server.port, "GET", "/basic-echo", {"Authorization": f"Basic {credentials}"}
    )
    assert status == 200
    sent = dict(server.seen[-1]["headers"])["Authorization"]
    assert base64.b64decode(sent.split()[1]) == f"alice:{VALUE}".encode()
    assert_no_leak(body)
    assert body.split(b"\n")[0] == proxy.placeholders["PASS"].encode()
    # raw placeholder where Basic credentials are expected: refused
    sock = intercepted(proxy, port, server)
    status, _, body = request(
        sock, API, server.port, "GET", "/echo", {"Authorization": proxy.placeholders["PASS"]}
    )
    assert status == 403
    assert b"Basic credentials" in body


def test_header_bound_secret_only_goes_into_that_header(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    secret = SecretBinding(
        name="KEY", value=VALUE, hosts=(f"{API}:{server.port}",), header="X-Api-Key"
    )
    proxy, port = make_proxy(secrets=(secret,))
    placeholder = proxy.placeholders["KEY"]
    sock = intercepted(proxy, port, server)
    status, _, _ = request(sock, API, server.port, "GET", "/echo", {"X-Api-Key": placeholder})
    assert status == 200
    assert ["X-Api-Key", VALUE] in server.seen[-1]["headers"]
    before = len(server.seen)
    sock = intercepted(proxy, port, server)
    status, headers, body = request(
        sock, API, server.port, "GET", "/echo", {"Authorization": f"Bearer {placeholder}"}
    )
    assert status == 403
    assert "x-api-key" in body.decode()
    assert headers["x-jhansi-refusal"]
    assert len(server.seen) == before


# -- placeholders where they must not go ---------------------------------------------------


def test_placeholder_refused_towards_a_host_it_is_not_bound_to(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    key = SecretBinding(name="KEY", value=VALUE, hosts=(f"{API}:{server.port}",))
    other = SecretBinding(name="OTHER", value=OTHER_VALUE, hosts=(f"{OTHER}:{server.port}",))
    proxy, port = make_proxy(secrets=(key, other))
    before = len(server.seen)
    sock = intercepted(proxy, port, server, host=OTHER)
    status, _, body = request(
        sock, OTHER, server.port, "GET", "/echo", {"Authorization": f"Bearer {key.placeholder}"}
    )
    assert status == 403
    assert b"KEY" in body
    assert b"not bound" in body
    assert len(server.seen) == before
    event = wait_for_events(proxy, 1)[-1]
    assert event.decision == "refused"
    assert event.host == OTHER


@pytest.mark.parametrize("where", ["path", "query", "percent-encoded"])
def test_placeholder_in_the_url_is_refused(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer, where: str
) -> None:
    proxy, port = make_proxy()
    placeholder = proxy.placeholders["KEY"]
    path = {
        "path": f"/echo/{placeholder}",
        "query": f"/echo?key={placeholder}",
        "percent-encoded": "/echo?key=" + "".join(f"%{b:02X}" for b in placeholder.encode()),
    }[where]
    before = len(server.seen)
    sock = intercepted(proxy, port, server)
    status, _, body = request(sock, API, server.port, "GET", path)
    assert status == 403
    assert b"URL" in body
    assert len(server.seen) == before


def test_placeholder_in_the_body_is_refused_even_split_across_chunks(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy()
    placeholder = proxy.placeholders["KEY"].encode()
    before = len(server.seen)
    sock = intercepted(proxy, port, server)
    status, _, body = request(
        sock, API, server.port, "POST", "/echo", body=b'{"k": "' + placeholder + b'"}'
    )
    assert status == 403
    assert b"body" in body
    half = len(placeholder) // 2
    sock = intercepted(proxy, port, server)
    status, _, body = request(
        sock,
        API,
        server.port,
        "POST",
        "/echo",
        chunks=[b"x" * 5 + placeholder[:half], placeholder[half:] + b"y"],
    )
    assert status == 403
    assert len(server.seen) == before


# -- hosts, ports, addresses -------------------------------------------------------------


def test_a_host_that_is_not_allowed_is_refused_before_dns(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer, dns: FakeDNS
) -> None:
    proxy, port = make_proxy()
    status, headers, body, _ = connect(port, "api.other.example:443")
    assert status == 403
    assert headers["content-type"].startswith("text/plain")
    assert body.decode().strip() == (
        "jhansi egress: api.other.example is not allowed; run with --allow-host "
        "api.other.example or bind a secret to it"
    )
    assert "api.other.example" in headers["x-jhansi-refusal"]
    assert dns.calls == []
    event = wait_for_events(proxy, 1)[0]
    assert (event.decision, event.host, event.port) == ("refused", "api.other.example", 443)


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:{port}",
        "2130706433:{port}",
        "0x7f.1:{port}",
        "0x7f000001:{port}",
        "0177.0.0.1:{port}",
        "127.1:{port}",
        "[::1]:{port}",
        "[::ffff:127.0.0.1]:{port}",
        "169.254.169.254:443",
        "[fd00:ec2::254]:443",
        "user@api.test.example:{port}",
        "api.test.example.evil:{port}",
        "evilapi.test.example:{port}",
        "x.api.test.example:{port}",
        "api.test.example:443",  # the secret is bound on the server's port only
        "api.test.example:{port}0",
    ],
)
def test_connect_target_tricks_are_refused(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer, dns: FakeDNS, target: str
) -> None:
    proxy, port = make_proxy()
    status, headers, body, _ = connect(port, target.format(port=server.port))
    assert status == 403, body
    assert headers["x-jhansi-refusal"]
    assert dns.calls == []
    assert wait_for_events(proxy, 1)[0].decision == "refused"


def test_non_443_port_is_refused_unless_allowed(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    _proxy, port = make_proxy(allow=(HostPort(OTHER),), secrets=())
    status, _, body, _ = connect(port, f"{OTHER}:{server.port}")
    assert status == 403
    assert b"port 443 only" in body


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["169.254.169.254"], "metadata"),
        (["::ffff:169.254.169.254"], "metadata"),
        (["168.63.129.16"], "metadata"),
        (["10.0.0.1"], "not a public address"),
        (["192.168.1.10"], "not a public address"),
        (["::1"], "not a public address"),
        (["64:ff9b::a00:1"], "not a public address"),
        (["2002:c0a8:101::1"], "not a public address"),
        (["127.0.0.1", "169.254.169.254"], "metadata"),  # any bad answer refuses
        (["0.0.0.0"], "unspecified"),
    ],
)
def test_names_resolving_to_private_or_metadata_addresses_are_refused(
    make_proxy: Callable[..., tuple[EgressProxy, int]],
    server: TLSServer,
    answers: list[str],
    expected: str,
) -> None:
    dns = FakeDNS({API: [answers]})
    _proxy, port = make_proxy(resolver=dns)
    status, _, body, _ = connect(port, f"{API}:{server.port}")
    assert status == 403
    assert expected in body.decode()
    assert dns.calls == [(API, server.port)]


def test_private_addresses_need_allow_private(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    _proxy, port = make_proxy(allow_private=())
    status, _, body, _ = connect(port, f"{API}:{server.port}")
    assert status == 403
    assert b'[network] allow_private = ["127.0.0.1/32"]' in body


def test_dns_is_resolved_once_and_the_checked_address_is_used(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    # First answer: an allowed address (127.0.0.1 stands in for a public one: the test
    # server lives there); every later answer: a private address the policy refuses.
    # If the proxy looked the name up again to connect, it could not reach the server.
    dns = FakeDNS({API: [["127.0.0.1"], ["10.0.0.1"]]})
    proxy, port = make_proxy(resolver=dns)
    placeholder = proxy.placeholders["KEY"]
    sock = intercepted(proxy, port, server)
    status, _, _ = request(sock, API, server.port, "GET", "/echo", {"Authorization": placeholder})
    assert status == 200
    status, _, _ = request(sock, API, server.port, "GET", "/echo", {"Authorization": placeholder})
    assert status == 200
    assert dns.calls == [(API, server.port)]  # once per connection, not per request
    assert {e.address for e in wait_for_events(proxy, 2)} == {"127.0.0.1"}
    status, _, body, _ = connect(port, f"{API}:{server.port}")  # a new connection: new lookup
    assert status == 403
    assert b"10.0.0.1" in body
    assert len(dns.calls) == 2


# -- TLS identity ------------------------------------------------------------------------


def test_sni_must_match_the_connect_host(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy()
    for sni in (OTHER, None):
        status, _, _, sock = connect(port, f"{API}:{server.port}")
        assert status == 200
        context = ssl.create_default_context(cadata=proxy.ca_pem.decode())
        context.check_hostname = False
        with pytest.raises((ssl.SSLError, ConnectionError)):
            context.wrap_socket(sock, server_hostname=sni)
    events = wait_for_events(proxy, 2)
    assert [e.decision for e in events] == ["refused", "refused"]
    assert all("SNI" in e.reason for e in events)


def test_host_header_must_match_the_connect_host(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy()
    before = len(server.seen)
    sock = intercepted(proxy, port, server)
    status, _, body = request(sock, OTHER, server.port, "GET", "/echo")
    assert status == 403
    assert b"Host header" in body
    assert len(server.seen) == before


def test_the_run_ca_cannot_impersonate_hosts_without_a_secret(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    """A tunnelled host is TLS end to end: the client sees the server's own certificate."""
    proxy, port = make_proxy(allow=(HostPort(OTHER, server.port),))
    status, _, _, sock = connect(port, f"{OTHER}:{server.port}")
    assert status == 200
    wrapped = tls(sock, OTHER, cafile=server.ca_path)  # trusts only the test CA
    status, _, body = request(wrapped, OTHER, server.port, "GET", "/echo")
    assert status == 200
    assert json.loads(body)["tls"] is True
    wrapped.close()
    event = wait_for_events(proxy, 1)[0]
    assert event.decision == "tunnelled"
    assert event.bytes_up > 0
    assert event.bytes_down > 0


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"HTTP/2"),
        (b"GET / HTTP/1.1\r\nHost: other.test.example\r\n\r\n", b"TLS ClientHello"),
        (b"\x16\x02\x00junk", b"TLS ClientHello"),
    ],
)
def test_tunnels_carry_tls_only(
    make_proxy: Callable[..., tuple[EgressProxy, int]],
    server: TLSServer,
    first: bytes,
    expected: bytes,
) -> None:
    _proxy, port = make_proxy(allow=(HostPort(OTHER, server.port),))
    status, _, _, sock = connect(port, f"{OTHER}:{server.port}")
    assert status == 200
    sock.sendall(first)
    status, headers, body = _read_head(sock)
    assert status == 403
    assert expected in body
    assert headers["x-jhansi-refusal"]


def test_upstream_certificates_are_verified(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy(upstream_ca=None)  # the test CA is not trusted now
    status, _, body, _ = connect(port, f"{API}:{server.port}")
    assert status == 502
    assert b"certificate verify failed" in body
    assert wait_for_events(proxy, 1)[0].decision == "failed"


# -- plain HTTP ----------------------------------------------------------------------------


def test_plain_http_only_when_allowed_and_never_with_secrets(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy(allow_http=(HostPort(PLAIN, server.plain_port),))
    placeholder = proxy.placeholders["KEY"]
    url = f"http://{PLAIN}:{server.plain_port}/echo?x=1"

    def get(target: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        host = target.split("/")[2]
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        return _read_head(sock)

    status, _, body = get(url)
    assert status == 200
    assert json.loads(body)["path"] == "/echo?x=1"
    assert server.seen[-1]["tls"] is False
    status, _, body = get(url, f"Authorization: Bearer {placeholder}\r\n")
    assert status == 403
    assert b"plain-http" in body
    status, _, body = get(f"http://{API}:{server.plain_port}/echo")
    assert status == 403
    assert b"--allow-host http://" in body
    status, _, body = get(f"http://user@{PLAIN}:{server.plain_port}/echo")
    assert status == 403
    events = wait_for_events(proxy, 4)
    assert [e.decision for e in events] == ["forwarded", "refused", "refused", "refused"]


def test_origin_form_requests_to_the_proxy_are_refused(
    make_proxy: Callable[..., tuple[EgressProxy, int]],
) -> None:
    _, port = make_proxy()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = _read_head(sock)
    assert status == 400
    assert b"CONNECT" in body


# -- lifecycle ---------------------------------------------------------------------------


def test_unix_socket(server: TLSServer, dns: FakeDNS, tmp_path: Path) -> None:
    secret = SecretBinding(name="KEY", value=VALUE, hosts=(f"{API}:{server.port}",))
    policy = EgressPolicy(secrets=(secret,), allow_private=LOOPBACK, upstream_ca=server.ca_path)
    proxy = EgressProxy(policy, resolver=dns)
    private = tmp_path / "egress"
    private.mkdir(mode=0o700)
    path = private / "proxy.sock"
    proxy.start_unix(path)
    try:
        assert proxy.alive
        status, _, _, sock = connect(0, f"{API}:{server.port}", unix=path)
        assert status == 200
        wrapped = tls(sock, API, cadata=proxy.ca_pem)
        status, _, _ = request(
            wrapped, API, server.port, "GET", "/echo", {"Authorization": secret.placeholder}
        )
        assert status == 200
        assert ["Authorization", VALUE] in server.seen[-1]["headers"]
    finally:
        proxy.stop()
    assert not path.exists()
    assert not proxy.alive


def test_stopping_the_proxy_cuts_every_connection(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy(allow=(HostPort(OTHER, server.port),))
    status, _, _, sock = connect(port, f"{OTHER}:{server.port}")
    assert status == 200
    wrapped = tls(sock, OTHER, cafile=server.ca_path)
    assert request(wrapped, OTHER, server.port, "GET", "/echo")[0] == 200
    proxy.stop()
    assert not proxy.alive
    with pytest.raises((OSError, http.client.HTTPException)):
        request(wrapped, OTHER, server.port, "GET", "/echo")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert [e.decision for e in proxy.events()] == ["tunnelled"]


# -- load limits and the header-name check (issue 14) ---------------------------------


def test_a_placeholder_in_a_header_name_is_refused_whatever_its_case(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    proxy, port = make_proxy()
    mark = proxy.placeholders["KEY"]
    for name in (f"X-{mark}", f"X-{mark}".lower(), f"X-{mark}".capitalize()):
        sock = intercepted(proxy, port, server)
        status, _, body = request(sock, API, server.port, "GET", "/echo", {name: "1"})
        assert status == 403, name
        assert b"in a header name" in body
    assert all("x-jhansi" not in json.dumps(s).lower() for s in server.seen)


def test_connections_past_the_cap_are_refused_and_counted_once(
    server: TLSServer, dns: FakeDNS
) -> None:
    policy = EgressPolicy(
        allow=(HostPort(OTHER, server.port),), allow_private=LOOPBACK, upstream_ca=server.ca_path
    )
    proxy = EgressProxy(policy, resolver=dns, max_connections=5)
    port = proxy.start_tcp()
    try:
        held = [connect(port, f"{OTHER}:{server.port}") for _ in range(5)]
        assert [h[0] for h in held] == [200] * 5
        refused = [connect(port, f"{OTHER}:{server.port}") for _ in range(7)]
        assert [r[0] for r in refused] == [503] * 7
        assert "at most 5 at once" in refused[0][1]["x-jhansi-refusal"]
        for *_, sock in held + refused:
            sock.close()
        assert proxy.refused_for_cap == 7
        summary = [e for e in proxy.events() if "open at once" in e.reason]
        assert [(e.decision, e.status, e.reason) for e in summary] == [
            ("refused", 503, "7 connections refused: more than 5 open at once")
        ]
        assert proxy.peak_connections == 5
    finally:
        proxy.stop()


def test_a_trickled_head_is_cut_at_its_deadline_and_idle_connections_time_out(
    server: TLSServer, dns: FakeDNS
) -> None:
    import time

    from jhansi.egress.proxy import ProxyTimeouts

    policy = EgressPolicy(
        allow=(HostPort(OTHER, server.port),),
        secrets=(SecretBinding(name="KEY", value=VALUE, hosts=(f"{API}:{server.port}",)),),
        allow_private=LOOPBACK,
        upstream_ca=server.ca_path,
    )
    timeouts = ProxyTimeouts(head=1.0, handshake=1.0, idle=1.5)
    proxy = EgressProxy(policy, resolver=dns, timeouts=timeouts)
    port = proxy.start_tcp()
    try:
        # A byte every 0.2 s: each read is quick, the head as a whole is not.
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        start = time.monotonic()
        closed_after = None
        for byte in b"CONNECT " + f"{OTHER}:{server.port}".encode() * 3:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            slow.settimeout(0.2)
            try:
                if slow.recv(100) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                continue
        assert closed_after is not None
        assert 0.9 <= closed_after <= 3
        # A kept-alive intercepted connection that stays silent is closed after `idle`.
        sock = intercepted(proxy, port, server)
        assert request(sock, API, server.port, "GET", "/echo")[0] == 200
        start = time.monotonic()
        sock.settimeout(5)
        assert sock.recv(100) == b""
        assert 1.2 <= time.monotonic() - start <= 3.5
        # A tunnel whose TLS never starts is closed after `handshake`.
        status, _, _, quiet = connect(port, f"{OTHER}:{server.port}")
        assert status == 200
        start = time.monotonic()
        quiet.settimeout(5)
        assert quiet.recv(100) == b""
        assert time.monotonic() - start <= 3
    finally:
        proxy.stop()


def test_a_gzip_body_comes_back_scrubbed_and_still_gzip(
    make_proxy: Callable[..., tuple[EgressProxy, int]], server: TLSServer
) -> None:
    import gzip

    proxy, port = make_proxy()
    sock = intercepted(proxy, port, server)
    headers = {"Authorization": f"Bearer {proxy.placeholders['KEY']}"}
    status, got, body = request(sock, API, server.port, "GET", "/echo-form/gzip", headers)
    assert status == 200
    assert got["content-type"] == "application/gzip"
    assert gzip.decompress(body) == f"echo: Bearer {proxy.placeholders['KEY']}\n".encode()


# -- a run with no network (issue 16): refuse everything, record the destination ----------


@pytest.mark.parametrize(
    "target",
    [
        "api.github.com:443",
        "api.test.example:{port}",  # the fake DNS would answer 127.0.0.1: never asked
        "localhost:{port}",
        "127.0.0.1:{port}",
        "[::1]:{port}",
        "169.254.169.254:80",
        "127.0.0.1.nip.io:{port}",  # rebinding-style name: refused by name, never resolved
        "x" * 70 + ".example:443",
    ],
)
def test_with_no_host_allowed_nothing_is_resolved_or_connected(
    server: TLSServer, dns: FakeDNS, target: str
) -> None:
    proxy = EgressProxy(EgressPolicy(), resolver=dns)
    assert proxy.ca_pem == b""  # no run CA: nothing can be intercepted
    port = proxy.start_tcp()
    seen = len(server.seen)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        connect_to = target.format(port=server.port)
        sock.sendall(f"CONNECT {connect_to} HTTP/1.1\r\nHost: {connect_to}\r\n\r\n".encode())
        head = sock.recv(65536)
        status_line = head.split(b"\r\n")[0]
        assert status_line == b"HTTP/1.1 403 Forbidden (jhansi: no network)"
        # an absolute-form request is refused the same way
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        url = f"http://{target.format(port=server.plain_port)}/echo"
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert b"(jhansi: no network)" in sock.recv(65536).split(b"\r\n")[0]
        events = wait_for_events(proxy, 2)
    finally:
        proxy.stop()
    assert dns.calls == []
    assert len(server.seen) == seen
    assert [(e.decision, e.address, e.bytes_up, e.bytes_down) for e in events] == [
        ("refused", None, 0, 0)
    ] * 2
    assert all(e.reason.startswith("no network: ") for e in events), events
    assert [e.method for e in events] == ["CONNECT", "GET"]


def test_with_no_host_allowed_the_reason_names_the_flag(dns: FakeDNS) -> None:
    proxy = EgressProxy(EgressPolicy(), resolver=dns)
    port = proxy.start_tcp()
    try:
        status, headers, body, _ = connect(port, "api.github.com:443")
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # origin-form: not a proxy request
        origin = _read_head(sock)
        events = wait_for_events(proxy, 2)
    finally:
        proxy.stop()
    assert status == 403
    assert body.decode().strip() == (
        "jhansi egress: no network: this run allows no host; run with --allow-host "
        "api.github.com to allow this one"
    )
    assert headers["x-jhansi-refusal"].startswith("no network: ")
    assert origin[0] == 400
    assert [(e.host, e.port) for e in events] == [("api.github.com", 443), ("/", 0)]
    assert events[1].reason.startswith("no network: this is jhansi's egress proxy")


@pytest.mark.parametrize("host", ["api.test.example", "127.0.0.1"])
def test_with_no_host_allowed_the_upstream_is_never_opened_whoever_asks(
    server: TLSServer, dns: FakeDNS, host: str
) -> None:
    """Defence in depth: should a request ever get past the routing with a policy that
    allows nothing, the one method that resolves and connects refuses by itself."""
    import asyncio

    from jhansi.egress.events import Refused

    proxy = EgressProxy(EgressPolicy(), resolver=dns)
    seen = len(server.seen)
    with pytest.raises(Refused, match=r"^no network: "):
        asyncio.run(proxy._open_upstream(HostPort(host, server.port)))
    assert dns.calls == []
    assert len(server.seen) == seen


def test_the_lazy_proxy_is_built_on_the_first_connection_and_loses_none(
    tmp_path: Path,
) -> None:
    """What a run with no network gets: a socket at once, the proxy only when used.

    Connections made before it is built wait in the socket's backlog: all are answered.
    """
    from datetime import timedelta

    from jhansi.egress.session import LazyProxy

    private = tmp_path / "egress"
    private.mkdir(mode=0o700)
    path = private / "proxy.sock"
    lazy = LazyProxy(path, timedelta(minutes=5))
    try:
        assert path.exists()
        assert not lazy.started
        assert lazy.events() == ()
        socks = []
        for i in range(5):  # all sent before any answer is read
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(20)
            sock.connect(str(path))
            sock.sendall(f"CONNECT host{i}.example:443 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(sock)
        answers = [_read_head(sock)[0] for sock in socks]
        assert answers == [403] * 5
        assert lazy.started
        import time

        deadline = time.monotonic() + 5
        while len(lazy.events()) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(e.host for e in lazy.events()) == [f"host{i}.example" for i in range(5)]
    finally:
        lazy.stop()
    lazy.stop()  # idempotent
    assert not path.exists()
    assert lazy.dropped_events == 0


def test_a_lazy_proxy_never_used_stops_without_building_anything(tmp_path: Path) -> None:
    from datetime import timedelta

    from jhansi.egress.session import LazyProxy

    private = tmp_path / "egress"
    private.mkdir(mode=0o700)
    path = private / "proxy.sock"
    lazy = LazyProxy(path, timedelta(minutes=5))
    lazy.stop()
    assert not lazy.started
    assert lazy.events() == ()
    assert lazy.failure is None
    assert not path.exists()
    with pytest.raises(FileNotFoundError):  # nothing listens any more: fail closed
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(str(path))
