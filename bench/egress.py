"""What the egress proxy costs per HTTPS request, on loopback.

Each sample is one complete HTTPS request on a **new** connection (no keep-alive:
the worst case, a TCP connect and TLS handshakes every time) to a loopback HTTPS
server (``tests/tls_server.py``):

1. **direct**: client → server;
2. **tunnelled**: client → ``CONNECT`` → proxy → server; TLS end to end, the proxy
   checks the policy, resolves once, checks the address and relays bytes;
3. **intercepted**: as 2, but the host has a bound secret: the proxy opens and
   verifies upstream TLS, terminates the client's TLS with the run CA, parses the
   request with h11, substitutes the placeholder and scrubs the response.

Requests are interleaved (drift hits all three alike). Prints the medians and the
ratios against direct. A resolver mapping the test name to 127.0.0.1 stands in for
DNS (this machine has none for test names), so name resolution costs nothing here.

Run: ``uv run python bench/egress.py [--requests N]``.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jhansi.egress.hostpolicy import EgressPolicy, HostPort, SecretBinding  # noqa: E402
from jhansi.egress.proxy import EgressProxy  # noqa: E402
from tests.tls_server import TLSServer  # noqa: E402

API, FILES = "api.test.example", "other.test.example"


def _get(sock: socket.socket, host: str, port: int, headers: dict[str, str]) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.sock = sock
    conn.request("GET", "/echo", headers={**headers, "Connection": "close"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"unexpected status {response.status}")
    conn.close()


def _through(proxy_port: int, host: str, port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("the proxy closed the connection")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"CONNECT refused: {head!r}")
    return sock


def main() -> None:
    """Measure and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with TLSServer(Path(tempfile.mkdtemp(prefix="jhansi-bench-egress-"))) as server:
        secret = SecretBinding(
            name="KEY", value="sk-bench-0123456789abcdef", hosts=(f"{API}:{server.port}",)
        )
        policy = EgressPolicy(
            allow=(HostPort(FILES, server.port),),
            secrets=(secret,),
            allow_private=(ipaddress.ip_network("127.0.0.0/8"),),
            upstream_ca=server.ca_path,
        )
        proxy = EgressProxy(policy, resolver=lambda host, port: ["127.0.0.1"])
        proxy_port = proxy.start_tcp()
        server_ctx = ssl.create_default_context(cafile=str(server.ca_path))
        run_ctx = ssl.create_default_context(cadata=proxy.ca_pem.decode())
        auth = {"Authorization": f"Bearer {secret.placeholder}"}

        def direct() -> None:
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            _get(server_ctx.wrap_socket(raw, server_hostname=API), API, server.port, auth)

        def tunnelled() -> None:
            raw = _through(proxy_port, FILES, server.port)
            _get(server_ctx.wrap_socket(raw, server_hostname=FILES), FILES, server.port, {})

        def intercepted() -> None:
            raw = _through(proxy_port, API, server.port)
            _get(run_ctx.wrap_socket(raw, server_hostname=API), API, server.port, auth)

        cases = {"direct": direct, "tunnelled": tunnelled, "intercepted": intercepted}
        times: dict[str, list[float]] = {name: [] for name in cases}
        try:
            for _ in range(10):  # warm up: caches, leaf certificate, JIT-less code paths
                for case in cases.values():
                    case()
            for _ in range(args.requests):
                for name, case in cases.items():
                    start = time.perf_counter()
                    case()
                    times[name].append(time.perf_counter() - start)
        finally:
            proxy.stop()
        medians = {name: statistics.median(values) for name, values in times.items()}
        base = medians["direct"]
        for name, value in medians.items():
            print(f"{name:12} median {value * 1000:6.2f} ms  ratio {value / base:5.2f}x")
        decisions = [e.decision for e in proxy.events()]
        print(
            f"({args.requests} requests each, new connection per request; proxy events: "
            f"{decisions.count('tunnelled')} tunnelled, {decisions.count('intercepted')} "
            "intercepted)"
        )


if __name__ == "__main__":
    main()
