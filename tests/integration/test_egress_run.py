"""What a user sees when the proxy refuses: the reason, on jhansi's stderr, after the run."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_jhansi

SCRIPT = """\
import urllib.request
try:
    urllib.request.urlopen("https://not-allowed.example/", timeout=10)
except Exception as exc:
    print("refused:", exc)
"""


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
