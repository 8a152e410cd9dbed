"""A real OSV-compatible HTTP server on loopback, answering from offline OSV data.

pip-audit's ``OsvService`` POSTs ``{"package": {"name", "ecosystem"}, "version"}``
to one query URL (``/v1/query``) and reads ``{"vulns": [...]}`` (or ``{}`` when
there are none). This server implements that endpoint, and ``/v1/querybatch``
(``{"queries": [...]}`` -> ``{"results": [{"vulns": [{"id", "modified"}]}]}``)
as the OSV API does, from the same index as :mod:`jhansi.supply.vulns.osv`, so
online and offline audits can be compared on identical data. It stands in for
the public OSV API, which the test machines cannot reach.

Usage::

    with serve_osv(advisory_db, cache_dir) as query_url:
        source = make_source(advisory_db=None, service="osv", osv_url=query_url, ...)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jhansi.supply.vulns.osv import OsvIndex, load_index, normalize_name

SHARED_ADVISORY_DB = Path(
    os.environ.get(
        "JHANSI_TEST_ADVISORY_DB",
        str(Path(__file__).resolve().parent / "fixtures" / "advisory-database"),
    )
)
"""The real OSV data the tests use: a fixture copy of pypa/advisory-database records
(YAML, CC-BY-4.0; see its README); ``JHANSI_TEST_ADVISORY_DB`` points at the full one."""


class _Handler(BaseHTTPRequestHandler):
    server: _OsvServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not every request."""

    def _send(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _vulns(self, query: object) -> list[dict[str, Any]]:
        if not isinstance(query, dict):
            raise ValueError("a query must be an object")
        package = query.get("package")
        version = query.get("version")
        if not isinstance(package, dict) or not isinstance(version, str):
            raise ValueError("only package + version queries are supported")
        if package.get("ecosystem") != "PyPI" or not isinstance(package.get("name"), str):
            return []
        name = normalize_name(package["name"])
        self.server.queries.append((name, version))
        return [r.as_osv(name) for r in self.server.index.matching(name, version)]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
            if self.path == "/v1/query":
                vulns = self._vulns(body)
                self._send(200, {"vulns": vulns} if vulns else {})
            elif self.path == "/v1/querybatch":
                queries = body.get("queries") if isinstance(body, dict) else None
                if not isinstance(queries, list):
                    raise ValueError("querybatch needs a list of queries")
                results = []
                for query in queries:
                    found = self._vulns(query)
                    results.append(
                        {"vulns": [{"id": v["id"], "modified": v["modified"]} for v in found]}
                        if found
                        else {}
                    )
                self._send(200, {"results": results})
            else:
                self._send(404, {"code": 5, "message": "Not Found"})
        except ValueError as exc:
            self._send(400, {"code": 3, "message": str(exc)})


class _OsvServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, index: OsvIndex) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.index = index
        self.queries: list[tuple[str, str]] = []
        """Every ``(name, version)`` asked, so that tests can see what was queried."""


@contextmanager
def serve_osv(
    advisory_db: Path = SHARED_ADVISORY_DB, cache_dir: Path | None = None
) -> Iterator[str]:
    """Serve ``advisory_db`` as an OSV API on 127.0.0.1; yield the ``/v1/query`` URL.

    ``cache_dir`` is where the offline index is kept (default: a temporary
    directory, removed afterwards: pass one to reuse an index across servers).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="osv-server-") as scratch:
        index = load_index(advisory_db, cache_dir or Path(scratch))
        server = _OsvServer(index)
        thread = threading.Thread(target=server.serve_forever, name="osv-server", daemon=True)
        thread.start()
        try:
            host, port = server.server_address[:2]
            yield f"http://{host}:{port}/v1/query"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
