"""A bound host echoes the key in disguises; the script gets only the placeholder.

One ``jhansi run`` per backend of ``echo_probe.py`` against a real HTTPS server on
loopback (tests/tls_server.py, ``/echo-form/FORM``): JSON with ``\\/`` and ``\\uXXXX``,
every byte percent-encoded (mixed case), HTML entities of every kind, a gzip body
labelled ``application/gzip``, the value split across two headers, a folded header.
What the sandbox received is read unscrubbed from the sandbox home and decoded here
(independently of the scrubber) before looking for the key in any case.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import secrets
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.conftest import prepare_jhansi_home, require_backend
from tests.security.egress.conftest import (
    EGRESS_BACKENDS,
    KEY_NAME,
    _shared_base,
    clean_env,
    find_secret,
    run_cli,
)
from tests.tls_server import TLSServer

PROBE = Path(__file__).with_name("echo_probe.py")


def _decoded(data: bytes) -> str:
    """JSON/JS escapes, HTML entities and percent-encoding undone (not the scrubber's code)."""
    text = data.decode("latin-1")
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    text = text.replace("\\/", "/")
    return unquote(html.unescape(text))


def _leaks(data: bytes, key: str) -> bool:
    return key.lower() in _decoded(data).lower() or bool(find_secret(data, key))


@pytest.mark.parametrize("backend", EGRESS_BACKENDS)
def test_disguised_echoes_never_reach_the_script(
    request: pytest.FixtureRequest, backend: str
) -> None:
    require_backend(request, backend)
    base = _shared_base(backend)
    try:
        server = TLSServer(base / "server")
        home = base / "home"
        home.mkdir()
        prepare_jhansi_home(backend, home)
        project = base / "project"
        project.mkdir()
        project.chmod(0o755)
        (project / "jhansi.toml").write_text(
            f'[network]\nupstream_ca = "{server.ca_path}"\n'
            'allow_private = ["127.0.0.0/8", "::1/128"]\n'
        )
        shutil.copy(PROBE, project / "echo_probe.py")
        for path in project.iterdir():
            path.chmod(0o644)
        key = "sk-live/" + secrets.token_urlsafe(30)  # a slash: JSON writes it as \/
        env = clean_env(base, home, backend) | {KEY_NAME: key, "JHANSI_HELPER": "off"}
        config = json.dumps({"a": server.port, "key": KEY_NAME})
        # Its network keys need trust: the user gives it, as a user would.
        trusted = run_cli("trust", str(project / "jhansi.toml"), env=env, cwd=project)
        assert trusted.returncode == 0, trusted.stderr
        run = run_cli(
            "run", "--json", "--sandbox", "echoes", "--secret",
            f"{KEY_NAME}@localhost:{server.port}", "echo_probe.py", config,
            env=env, cwd=project,
        )  # fmt: skip
        server.close()
        assert run.returncode == 0, run.stderr[-3000:]
        (sandbox_home,) = (home / "data" / "sandboxes").glob("echoes*/home")
        probe: dict[str, Any] = json.loads((sandbox_home / "echo-probe.json").read_text())
        record = json.loads(run.stdout)
        placeholder = f"jhansi-placeholder-{KEY_NAME}-"
        # The server got the real key each time, in the Authorization header.
        auths = [{k.lower(): v for k, v in r["headers"]} for r in server.seen]
        assert [a.get("authorization") for a in auths if "authorization" in a] == [
            f"Bearer {key}"
        ] * 6
        for form in ("json", "percent", "html"):
            answer = probe[form]
            assert answer["status"] == 200, (form, answer)
            body = base64.b64decode(answer["body"])
            headers = {k.lower(): v for k, v in answer["headers"]}
            assert not _leaks(body, key), form
            assert not _leaks(headers["x-echo"].encode("latin-1"), key), form
            assert placeholder in _decoded(body), form
        gz = probe["gzip"]
        assert gz["status"] == 200, gz
        plain = gzip.decompress(base64.b64decode(gz["body"]))  # still gzip for the script
        assert plain.startswith(b"echo: Bearer " + placeholder.encode())
        assert not _leaks(plain, key)
        for form in ("split", "folded"):
            assert probe[form]["status"] == 502, (form, probe[form])
            assert "across several headers" in base64.b64decode(probe[form]["body"]).decode()
        named = probe["header_name"]
        assert named["status"] == 403, named
        assert b"in a header name" in base64.b64decode(named["body"])
        assert not any("x-jhansi-placeholder" in a for a in auths)
        # Nothing of the key anywhere the run wrote, nor in what jhansi printed.
        assert not _leaks(json.dumps(probe).encode(), key)
        assert not _leaks(run.stdout.encode(), key)
        assert not _leaks(run.stderr.encode(), key)
        failed = [e for e in record["egress"] if e["decision"] == "failed"]
        assert len(failed) == 2
        assert all("several headers" in e["reason"] for e in failed)
    finally:
        shutil.rmtree(base, ignore_errors=True)
