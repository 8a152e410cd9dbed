"""A real HTTP package index on loopback, serving canned PEP 691 pages and files.

The public index cannot be made to serve a broken digest, an HTML-only page or
a project released yesterday; this server can, over real sockets, so that the
code under test runs its real HTTP client (pypi-simple, requests).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


@dataclass
class Index:
    """Routes (path → status, content type, body) and the paths requested, in order."""

    base: str
    routes: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    stale: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    """What a cache in front of the index answers unless asked ``Cache-Control: no-cache``."""
    cache_control: list[str | None] = field(default_factory=list)
    """Each request's ``Cache-Control`` header, in order."""

    @property
    def simple(self) -> str:
        """The simple API endpoint (``…/simple/``); the JSON API is at ``…/pypi/``."""
        return f"{self.base}/simple/"

    def add(
        self,
        path: str,
        body: bytes | str | dict[str, Any],
        *,
        status: int = 200,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Serve ``body`` at ``path``; a dict is JSON (``content_type`` should say which)."""
        if isinstance(body, dict):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        self.routes[path] = (status, content_type, data)


def serve() -> Iterator[Index]:
    """Run a server on 127.0.0.1 (a free port) until the generator is closed."""
    index: Index

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            index.requests.append(self.path)
            revalidate = self.headers.get("Cache-Control")
            index.cache_control.append(revalidate)
            routes = index.routes if revalidate == "no-cache" else {**index.routes, **index.stale}
            status, content_type, body = routes.get(self.path, (404, "text/plain", b"not found"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    index = Index(base=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def unreachable() -> str:
    """A simple-API URL on loopback where nothing listens (connections are refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple/"
