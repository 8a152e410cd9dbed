"""A lock committed beside a script may pin versions, never choose where files come from.

The red-team case, through a real ``jhansi run`` on bubblewrap: the project carries
a ``pylock.s.toml`` whose ``[tool.jhansi] inputs`` match (anyone can compute
them; here they are copied from a real lock, as an attacker would), but whose
``six`` wheel is the attacker's, served from loopback by a server this test
starts (or named by a host path). The run must end in exit 7 with a two-line
refusal naming the package, the lock's URL and the command that relocks from the
index; the loopback server must receive no connection; nothing may be installed;
the refusal is an ``exec.denied`` record. The control relocks with the hint's
command and runs, so the refusals are not an accident of the set-up.

The real index is needed to make the genuine lock (and, for the https variant,
to be asked what it serves): marked ``network``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_jhansi

SCRIPT = """\
# /// script
# dependencies = ["six"]
# ///
import six
print("script ran", six.__file__)
"""


class Loopback:
    """An HTTP server on 127.0.0.1 that serves one wheel and counts every connection.

    Bounded: it shuts itself down after ``lifetime`` seconds whatever the test does.
    """

    def __init__(self, wheel: bytes, lifetime: float = 300.0) -> None:
        self.connections: list[str] = []
        seen = self.connections

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                seen.append(str(self.client_address))  # any connection, even a TLS hello
                super().setup()

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(wheel)))
                self.end_headers()
                self.wfile.write(wheel)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.timer = threading.Timer(lifetime, self.server.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> Loopback:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def attacker_wheel(path: Path, version: str) -> bytes:
    """A valid wheel of ``six`` whose module says it is the attacker's."""
    dist = f"six-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("six.py", "print('PWNED: attacker bytes imported')\n")
        archive.writestr(
            f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: six\nVersion: {version}\n"
        )
        archive.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: x\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist}/RECORD", "")
    return path.read_bytes()


def _records(ledger: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ledger / "ledger.jsonl").read_bytes().splitlines()]


@pytest.fixture
def project(shared_dir: Path) -> tuple[Path, str, str]:
    """A project with s.py and its genuine lock: (dir, the lock's text, six's version)."""
    directory = shared_dir / "project"
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "s.py").write_text(SCRIPT)
    made = run_jhansi("lock", "--backend", "bwrap", str(directory / "s.py"), timeout=300)
    assert made.returncode == 0, made.stderr
    text = (directory / "pylock.s.toml").read_text()
    version = re.search(r'name = "six"\nversion = "([^"]+)"', text)
    assert version is not None, text
    return directory, text, version[1]


@pytest.mark.bwrap
@pytest.mark.network
@pytest.mark.parametrize("variant", ["http-loopback", "https-loopback", "host-path"])
def test_a_project_lock_cannot_choose_where_files_come_from(
    variant: str,
    project: tuple[Path, str, str],
    bwrap_path: Path,
    tmp_path: Path,
    jhansi_home: Path,
) -> None:
    directory, genuine, version = project
    filename = f"six-{version}-py2.py3-none-any.whl"
    wheel_file = tmp_path / filename
    wheel = attacker_wheel(wheel_file, version)
    sha256 = hashlib.sha256(wheel).hexdigest()
    ledger = tmp_path / "ledger"
    env = {"JHANSI_LEDGER": str(ledger), "JHANSI_SANDBOX_BACKEND": "bwrap"}
    with Loopback(wheel) as server:
        source = {
            "http-loopback": f'url = "http://127.0.0.1:{server.port}/{filename}"',
            "https-loopback": f'url = "https://127.0.0.1:{server.port}/{filename}"',
            "host-path": f'path = "{wheel_file}"',
        }[variant]
        forged, count = re.subn(
            r'(name = "six"\nversion = "[^"]+"\n)wheels = \[.*\]\n',
            lambda m: f'{m[1]}wheels = [{{ {source}, hashes = {{ sha256 = "{sha256}" }} }}]\n',
            genuine,
        )
        assert count == 1, genuine
        lock_file = directory / "pylock.s.toml"
        lock_file.write_text(forged)

        proc = run_jhansi("run", "--ephemeral", str(directory / "s.py"), env=env, timeout=300)

        assert proc.returncode == 7, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        refusal = lines[-2:]
        assert "does not come from the package index" in refusal[0], proc.stderr
        assert "six" in refusal[0]
        assert (str(wheel_file) if variant == "host-path" else str(server.port)) in refusal[0]
        assert "jhansi lock --upgrade" in refusal[1], proc.stderr
        assert "PWNED" not in proc.stdout
        assert "script ran" not in proc.stdout
        assert server.connections == []  # the host never asked the project's address
    envs = jhansi_home / "cache" / "envs"
    assert not envs.exists() or not [p for p in envs.iterdir() if not p.name.startswith(".")]
    assert lock_file.read_text() == forged  # refused, not silently rewritten
    kinds = [r["kind"] for r in _records(ledger)]
    assert kinds.count("exec.denied") == 1
    assert "exec.start" not in kinds
    denied = next(r for r in _records(ledger) if r["kind"] == "exec.denied")
    assert denied["body"]["reason"]["exit_code"] == 7

    if variant == "http-loopback":  # the control: the hint's command relocks from the index
        relock = run_jhansi("lock", "--upgrade", "--backend", "bwrap", str(directory / "s.py"))
        assert relock.returncode == 0, relock.stderr
        ran = run_jhansi("run", "--ephemeral", str(directory / "s.py"), env=env, timeout=300)
        assert ran.returncode == 0, ran.stderr
        assert "script ran" in ran.stdout
        assert "PWNED" not in ran.stdout
