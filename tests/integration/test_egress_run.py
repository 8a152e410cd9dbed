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
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUNSC, backend_env, require_backend, run_jhansi
from tests.integration.test_json_output import valid_run_document
from tests.integration.test_run import Env

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


NO_NETWORK_BACKENDS = [
    pytest.param("bwrap", marks=pytest.mark.bwrap),
    pytest.param("docker", marks=pytest.mark.docker),
    pytest.param("podman", marks=pytest.mark.podman),
]


@pytest.fixture(params=NO_NETWORK_BACKENDS)
def env(request: pytest.FixtureRequest, shared_dir: Path) -> Env:
    require_backend(request, request.param)
    return Env(shared_dir, request.param)


@pytest.mark.network  # requests, installed from the index
def test_a_script_with_no_network_is_told_how_to_allow_it(env: Env) -> None:
    script = env.script("stars.py", PUBLIC_API)
    proc = env.jhansi("run", "--json", str(script))
    # The script's own failure (requests raised), not jhansi's.
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == HINT
    assert "Traceback" not in proc.stderr  # --json: the script's output is in the document
    document = valid_run_document(proc)  # the schema, strictly
    assert document["status"] == "failed"
    assert document["error"] == HINT.removeprefix("jhansi: ")
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
    end = ledger_end(env.project, document["run_id"], env.vars)
    assert end["egress"] == document["egress"]
    assert end["enforcement"]["egress"] == document["enforcement"]["egress"]
    # Without --json, the script's traceback, then jhansi's summary, then the hint.
    proc = env.jhansi("run", str(script))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1] == HINT
    assert lines[-2].startswith("jhansi: failed (exit 1) in ")
    assert "requests.exceptions.ProxyError" in proc.stderr


URLLIB_API = """\
import urllib.request

print(urllib.request.urlopen("https://api.github.com/zen", timeout=10).read())
"""


@pytest.mark.docker
@pytest.mark.gvisor
def test_where_the_sandbox_cannot_reach_the_proxy_the_run_says_it_was_not_recorded(
    request: pytest.FixtureRequest, shared_dir: Path
) -> None:
    """gVisor registered without --host-uds=open (as here) cannot connect to a host
    socket: the run goes on with no network, as before, and says it could not see."""
    require_backend(request, "gvisor")
    from jhansi.sandbox.docker.container import gvisor_connects_host_sockets

    registered = request.getfixturevalue("gvisor_engine").client.info()["Runtimes"][RUNSC]
    if gvisor_connects_host_sockets(registered.get("runtimeArgs") or ()):
        pytest.skip(f"{RUNSC} is registered with --host-uds=open: egress is recorded there")
    env = Env(shared_dir, "gvisor")
    proc = env.jhansi("run", "--json", str(env.script("zen.py", URLLIB_API)))
    assert proc.returncode == 1, proc.stderr
    document = valid_run_document(proc)
    assert document["egress"] == []
    assert document["error"] == ""
    assert document["enforcement"]["egress"] == (
        "no host allowed; what the script tries is not recorded (the sandbox could not "
        "reach the proxy's socket here)"
    )
    assert "jhansi: no network" not in document["stderr"]["text"]  # no proxy in the way
    assert "URLError" in document["stderr"]["text"]
    assert "tried to reach" not in proc.stderr


#: What a script that means to get out tries once the proxy refuses it: the sandbox's
#: interfaces, DNS, raw sockets to a public address, the host's loopback (where the
#: test listens) and the Docker bridge, the proxy variables removed and NO_PROXY=*, and
#: the forwarder and the proxy's socket asked, in every way a forwarding proxy would
#: understand, to reach the host's loopback. Every answer is read to the end: a refusal
#: that left a tunnel open would show as more bytes.
ESCAPE = r"""
import json, os, socket, urllib.request

PORT = {port}
out = {{}}


def attempt(name, fn):
    try:
        out[name] = "reached: " + repr(fn())[:200]
    except Exception as exc:
        out[name] = type(exc).__name__


def ask(payload, where=("127.0.0.1", 3128)):
    family = socket.AF_UNIX if isinstance(where, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(where)
        conn.sendall(payload)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        return data.split(b"\r\n")[0].decode("ascii", "replace"), data.count(b"HTTP/1.1")


out["interfaces"] = sorted(name for _, name in socket.if_nameindex())
attempt("dns", lambda: socket.getaddrinfo("api.github.com", 443))
attempt("public", lambda: socket.create_connection(("1.1.1.1", 443), timeout=5))
attempt("loopback", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=5))
attempt("bridge", lambda: socket.create_connection(("172.17.0.1", PORT), timeout=5))
for var in [v for v in os.environ if v.lower().endswith("_proxy")]:
    del os.environ[var]
os.environ["NO_PROXY"] = "*"
attempt("direct", lambda: urllib.request.urlopen("https://api.github.com/", timeout=5))
SOCKET = "/opt/jhansi/egress/proxy.sock"  # the proxy's own socket, bound in
hello = b"\x16\x03\x01\x00\x05hello"  # the start of a TLS handshake, sent at once
out["asked"] = [
    ask(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % PORT + hello),
    ask(b"CONNECT localhost:%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % PORT),
    ask(b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % PORT),
    ask(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % PORT),
    ask(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % PORT, SOCKET),
]
print(json.dumps(out))
"""


class Listener:
    """A TCP server on the host's loopback that counts who connects (nothing should)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def test_a_script_cannot_get_out_around_or_through_the_refusing_proxy(env: Env) -> None:
    listener = Listener()
    try:
        script = env.script("escape.py", ESCAPE.format(port=listener.port))
        proc = env.jhansi("run", "--json", str(script))
    finally:
        listener.close()
    assert proc.returncode == 0, proc.stderr
    document = valid_run_document(proc)
    out = json.loads(document["stdout"]["text"])
    assert listener.accepted == 0
    assert out["interfaces"] == ["lo"]
    assert out["dns"] == "gaierror"
    for name in ("public", "loopback", "bridge"):  # no route out; its own loopback only
        assert not out[name].startswith("reached"), (name, out[name])
    assert out["loopback"] == "ConnectionRefusedError"
    assert out["direct"] == "URLError"
    refused = "HTTP/1.1 403 Forbidden (jhansi: no network)"
    bad = "HTTP/1.1 400 Bad Request (jhansi: no network)"
    assert [tuple(a) for a in out["asked"]] == [
        (refused, 1),
        (refused, 1),
        (refused, 1),
        (bad, 1),  # an origin-form request: not a proxy request at all
        (refused, 1),
    ]
    events = document["egress"]
    assert len(events) == 5
    assert {(e["decision"], e["address"], e["bytes_up"], e["bytes_down"]) for e in events} == {
        ("refused", None, 0, 0)
    }
    assert all(e["reason"].startswith("no network: ") for e in events), events
    assert "tried to reach localhost:" in document["error"]


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
