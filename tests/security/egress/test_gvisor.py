"""gVisor: egress is refused cleanly when runsc cannot connect to host sockets.

CI registers runsc with ``--network=none`` and without ``--host-uds=open`` (see
../shared/TESTING.md), so a sandbox there cannot reach the proxy's unix socket. A run
that asks for egress must then stop with a SandboxError (exit 4) that says why and how
to fix it: no traceback, no half-started proxy left behind, both records written, and
the secret nowhere.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Engine
from tests.security.egress.conftest import KEY_NAME, clean_env, find_secret, run_cli


@pytest.fixture
def base() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="jhansi-egress-gvisor-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.gvisor
def test_egress_on_gvisor_is_refused_with_the_fix(gvisor_engine: Engine, base: Path) -> None:
    home = base / "jhansi-home"
    project = base / "project"
    project.mkdir()
    (project / "call.py").write_text("import os\nprint(os.environ.get('JHANSI_TEST_API_KEY'))\n")
    key = "sk-live-" + secrets.token_urlsafe(36)
    env = {**clean_env(base, home, "gvisor"), KEY_NAME: key}
    run = run_cli(
        "run", "--json", "--secret", f"{KEY_NAME}@localhost:8443", "call.py",
        env=env, cwd=project,
    )  # fmt: skip
    assert run.returncode == 4, run.stderr
    error = json.loads(run.stdout)["error"]
    assert error["kind"] == "SandboxError"
    assert "gVisor" in error["message"]
    assert "cannot reach the egress proxy" in error["message"]
    assert '"--host-uds=open"' in error["hint"]
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-2:] == [f"error: {error['message']}", f"hint: {error['hint']}"]
    # The proxy was stopped and its directory removed; the refusal is in the ledger.
    assert list((home / "run").glob("egress-*")) == []
    ledger = home / "data" / "ledger" / "ledger.jsonl"
    kinds = [json.loads(line)["kind"] for line in ledger.read_text().splitlines()]
    assert kinds.count("exec.start") == kinds.count("exec.end") == 1
    files = [p for p in base.rglob("*") if p.is_file()]
    assert {
        str(p): find_secret(p.read_bytes(), key) for p in files if find_secret(p.read_bytes(), key)
    } == {}
    assert find_secret(run.stdout + run.stderr, key) == []
