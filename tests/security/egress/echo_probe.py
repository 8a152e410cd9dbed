"""Runs INSIDE the sandbox (stdlib only): a bound host echoes the key in disguises.

``python echo_probe.py CONFIG_JSON``; writes what it received, unscrubbed, to
``$HOME/echo-probe.json`` (bodies as latin-1 text, gzip bodies base64-encoded).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CONFIG: dict[str, Any] = json.loads(sys.argv[1])
KEY = os.environ[CONFIG["key"]]
A = CONFIG["a"]
results: dict[str, Any] = {}


def fetch(path: str, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(f"https://localhost:{A}{path}", headers=headers)
    context = ssl.create_default_context()
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as response:  # noqa: S310
            status, head, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, head, body = exc.code, exc.headers, exc.read()
    return {
        "status": status,
        "headers": [[k, v] for k, v in head.items()],
        "body": base64.b64encode(body).decode(),
    }


for form in ("json", "percent", "html", "gzip", "split", "folded"):
    try:
        results[form] = fetch(f"/echo-form/{form}", {"Authorization": f"Bearer {KEY}"})
    except Exception as exc:
        results[form] = {"error": f"{type(exc).__name__}: {exc}"}
# urllib writes header names capitalised: "X-jhansi-placeholder-..." lower-cases the rest.
results["header_name"] = fetch("/echo", {f"X-{KEY}": "1"})
raw = json.dumps(results, sort_keys=True)
(Path(os.environ["HOME"]) / "echo-probe.json").write_text(raw, encoding="utf-8")
print(raw)
