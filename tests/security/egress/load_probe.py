"""Runs INSIDE the sandbox (stdlib only): loads the egress proxy as a hostile script would.

``python load_probe.py MODE CONFIG_JSON``; results go to ``$HOME/load-MODE.json``.

``connections``  50 slowloris clients (a CONNECT head trickled a byte every 0.5 s), one
                 tunnel and one intercepted connection whose TLS handshake never starts,
                 a real request meanwhile; then 300 connections open at once; then a
                 real request again.
``bulk``         writes ``$HOME/load-start`` and waits (the host takes its baseline),
                 then streams big responses and requests through a tunnelled and an
                 intercepted host, reading and sending in 1 MiB pieces.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

MODE = sys.argv[1]
CONFIG: dict[str, Any] = json.loads(sys.argv[2])
A, C = CONFIG["a"], CONFIG["c"]
KEY = os.environ[CONFIG["key"]]
_proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
PROXY = (_proxy.hostname or "127.0.0.1", _proxy.port or 3128)
HOME = Path(os.environ["HOME"])
results: dict[str, Any] = {}


def tunnel(port: int) -> socket.socket:
    sock = socket.create_connection(PROXY, timeout=30)
    sock.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.decode("latin-1")[:200])
    return sock


def https(port: int, cadata: str | None = None) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cadata=cadata)
    conn = http.client.HTTPSConnection("localhost", port, timeout=30, context=context)
    raw = tunnel(port)
    conn.sock = context.wrap_socket(raw, server_hostname="localhost")
    return conn


def get(port: int, path: str, cadata: str | None = None) -> tuple[int, int, float]:
    """GET, reading the body in 1 MiB pieces: status, bytes, seconds."""
    start = time.monotonic()
    conn = https(port, cadata)
    conn.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    total = 0
    while piece := response.read(1 << 20):
        total += len(piece)
    conn.close()
    return response.status, total, time.monotonic() - start


def post(port: int, size: int, cadata: str | None = None) -> tuple[int, str, float]:
    """POST ``size`` bytes made on the fly: status, the server's count, seconds."""
    start = time.monotonic()
    block = b"u" * (1 << 20)

    def body() -> Any:
        left = size
        while left > 0:
            yield block[: min(left, len(block))]
            left -= len(block)

    conn = https(port, cadata)
    conn.request(
        "POST", "/sink", body=body(),
        headers={"Content-Length": str(size), "Authorization": f"Bearer {KEY}"},
    )  # fmt: skip
    response = conn.getresponse()
    answer = response.read().decode()
    conn.close()
    return response.status, answer, time.monotonic() - start


def connections() -> None:
    started = time.monotonic()
    slow = []
    for _ in range(50):
        sock = socket.create_connection(PROXY, timeout=5)
        sock.setblocking(False)
        slow.append(sock)
    stalled = [tunnel(A), tunnel(C)]  # no ClientHello ever follows
    line = f"CONNECT localhost:{C} HTTP/1.1\r\nHost: localhost:{C}\r\n" + "X-Slow: 1\r\n" * 40
    closed: dict[int, float] = {}
    meanwhile: Any = None
    at = 0
    while len(closed) < len(slow) + len(stalled) and time.monotonic() - started < 25:
        for i, sock in enumerate(slow):
            if i in closed:
                continue
            try:
                if sock.recv(4096) == b"":
                    closed[i] = time.monotonic() - started
                    continue
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = time.monotonic() - started
                continue
            try:
                sock.send(line[at % len(line)].encode())
            except OSError:
                closed[i] = time.monotonic() - started
        for j, sock in enumerate(stalled):
            index = len(slow) + j
            if index in closed:
                continue
            sock.setblocking(False)
            try:
                if sock.recv(4096) == b"":
                    closed[index] = time.monotonic() - started
            except BlockingIOError:
                pass
            except OSError:
                closed[index] = time.monotonic() - started
        at += 1
        if meanwhile is None and at == 4:
            meanwhile = get(A, "/echo")  # a real request while the slowloris goes on
        time.sleep(0.5)
    results["slowloris_closed_after"] = sorted(closed.values())
    results["slowloris_open"] = len(slow) + len(stalled) - len(closed)
    results["meanwhile"] = meanwhile
    # 300 at once: the proxy keeps 256 and refuses the rest cleanly.
    socks, statuses = [], []
    for _ in range(300):
        sock = socket.create_connection(PROXY, timeout=15)
        sock.sendall(f"CONNECT localhost:{C} HTTP/1.1\r\nHost: localhost:{C}\r\n\r\n".encode())
        socks.append(sock)
    for sock in socks:
        try:
            statuses.append(int(sock.recv(4096).split(b" ", 2)[1]))
        except (OSError, IndexError, ValueError) as exc:
            statuses.append(f"{type(exc).__name__}")
    results["burst"] = {str(s): statuses.count(s) for s in set(statuses)}
    for sock in socks:
        sock.close()
    time.sleep(0.5)
    results["after"] = get(A, "/echo")


def bulk() -> None:
    (HOME / "load-start").write_text("go")
    time.sleep(2)  # the host reads its baseline now
    sizes = CONFIG["sizes"]
    results["tunnel_get"] = get(C, f"/stream?size={sizes['tunnel_get']}", CONFIG["tunnel_ca"])
    results["intercepted_get"] = get(A, f"/stream?size={sizes['intercepted_get']}")
    results["tunnel_post"] = post(C, sizes["tunnel_post"], CONFIG["tunnel_ca"])
    results["intercepted_post"] = post(A, sizes["intercepted_post"])
    (HOME / "load-done").write_text("done")


connections() if MODE == "connections" else bulk()
(HOME / f"load-{MODE}.json").write_text(json.dumps(results), encoding="utf-8")
print(json.dumps(results))
