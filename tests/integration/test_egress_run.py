"""What a user sees when the proxy refuses: the reason, on jhansi's stderr, after the run.

With hosts allowed, a refused connection is one warning line with the proxy's reason.
With none allowed (issue 16), the script's proxy-aware clients still reach jhansi's
proxy, which refuses before any lookup or connection and records the destination:
jhansi ends with one line per destination and the ``--allow-host`` that allows it. The
public API named here is never reached, nor even resolved: the proxy refuses it by
name (this machine could not reach it anyway: only the package index is reachable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import backend_env, require_backend, run_jhansi
from tests.integration.test_json_output import valid_run_document

SCRIPT = """\
import urllib.request
try:
    urllib.request.urlopen("https://not-allowed.example/", timeout=10)
except Exception as exc:
    print("refused:", exc)
"""

#: What an assistant writes (script 07 of the issue): no PEP 723 header, no flags.
PUBLIC_API = """\
import requests

response = requests.get("https://api.github.com/repos/python/cpython", timeout=10)
response.raise_for_status()
print(response.json()["stargazers_count"])
"""

HINT = (
    "jhansi: the script tried to reach api.github.com:443 (refused: no network); "
    "allow it with --allow-host api.github.com"
)


def test_a_refused_connection_is_explained_after_the_run(tmp_path: Path, bwrap_path: Path) -> None:
    script = tmp_path / "call.py"
    script.write_text(SCRIPT)
    proc = run_jhansi(
        "run", "--backend", "bwrap", "--allow-host", "api.example.com", str(script), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "403" in proc.stdout  # the client library only sees the status
    assert "egress refused not-allowed.example:443" in proc.stderr
    assert "--allow-host not-allowed.example" in proc.stderr  # ... jhansi says what to do


def ledger_end(project: Path, run_id: str, env: dict[str, str]) -> dict[str, Any]:
    shown = run_jhansi("ledger", "show", "--json", run_id, env=env, cwd=project)
    assert shown.returncode == 0, shown.stderr
    records = json.loads(shown.stdout)["records"]
    return dict(next(r["body"] for r in records if r["kind"] == "exec.end"))


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("bwrap", marks=pytest.mark.bwrap),
        pytest.param("docker", marks=pytest.mark.docker),
    ],
)
def test_a_script_with_no_network_is_told_how_to_allow_it(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    require_backend(request, backend)
    project = tmp_path / "project"
    project.mkdir()
    project.chmod(0o755)
    (project / "pyproject.toml").write_text('[project]\nname = "stars"\n')
    script = project / "stars.py"
    script.write_text(PUBLIC_API)
    env = backend_env(backend)
    proc = run_jhansi("run", "--json", str(script), env=env, cwd=project)
    # The script's own failure (requests raised), not jhansi's.
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == HINT
    assert "Traceback" not in proc.stderr  # --json: the script's output is in the document
    document = valid_run_document(proc)  # the schema, strictly
    assert document["status"] == "failed"
    assert "403 Forbidden (jhansi: no network)" in document["stderr"]["text"]
    assert "NameResolutionError" not in document["stderr"]["text"]
    (event,) = document["egress"]
    assert event == {
        **event,
        "host": "api.github.com",
        "port": 443,
        "method": "CONNECT",
        "decision": "refused",
        "address": None,  # never resolved, never connected
        "bytes_up": 0,
        "bytes_down": 0,
    }
    assert event["reason"].startswith("no network: ")
    assert "refuses and records" in document["enforcement"]["egress"]
    end = ledger_end(project, document["run_id"], env)
    assert end["egress"] == document["egress"]
    assert end["enforcement"]["egress"] == document["enforcement"]["egress"]


FLOOD = r"""
import socket
names = [b"host%d.example:443" % i for i in range(300)]
names += [
    b"evil\x1b]0;pwned\x07\x1b[2J.example:443",  # terminal escapes (h11 refuses: malformed)
    b"\xe2\x80\xaereversed.example:443",  # a right-to-left override, raw UTF-8
    b"a" * 300 + b".example:443",  # past a label's 63 characters
    b"127.0.0.1.nip.io:443",  # a rebinding-style name: refused by name, never resolved
    b"[::ffff:127.0.0.1]:22",
]
answers = set()
for name in names:
    conn = socket.create_connection(("127.0.0.1", 3128), timeout=30)
    conn.sendall(b"CONNECT " + name + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    answers.add(conn.recv(200).split(b"\r\n")[0])
    conn.close()
print(sorted(answers))
"""


@pytest.mark.bwrap
def test_a_flood_of_hostile_names_ends_recorded_and_shown_escaped(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    require_backend(request, "bwrap")
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    env = backend_env("bwrap")
    proc = run_jhansi("run", "--json", str(script), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["stdout"]["text"].strip() == str(
        [
            b"HTTP/1.1 400 Bad Request (jhansi: no network)",  # what h11 cannot parse
            b"HTTP/1.1 403 Forbidden (jhansi: no network)",
        ]
    )
    # jhansi's own lines: printable ASCII only, a few of them, then a count
    hints = [line for line in proc.stderr.splitlines() if "(refused: no network" in line]
    for line in proc.stderr.splitlines():
        assert line.isascii(), repr(line)
        assert line.isprintable(), repr(line)
    assert hints[:2] == [
        "jhansi: the script tried to reach host0.example:443 (refused: no network); "
        "allow it with --allow-host host0.example",
        "jhansi: the script tried to reach host1.example:443 (refused: no network); "
        "allow it with --allow-host host1.example",
    ]
    assert len(hints) == 6
    # 300 names, the two unparsable heads as one, the long name, the rebinding name, the
    # IPv6 literal: 304 destinations, 5 shown
    assert hints[-1].startswith("jhansi: the script tried 299 more destinations (refused:")
    assert f"`jhansi ledger show {document['run_id']}` lists them all" in hints[-1]
    # every attempt is in the ledger: a head in the record, the whole list in a blob
    assert len(document["egress"]) == 305
    assert {e["decision"] for e in document["egress"]} == {"refused"}
    assert {e["address"] for e in document["egress"]} == {None}
    end = ledger_end(tmp_path, document["run_id"], env)
    assert end["egress_count"] == 305
    assert len(end["egress"]) < 305
    assert "blob" in end["egress_full"]
    verified = run_jhansi("ledger", "verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
