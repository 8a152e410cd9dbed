"""``auto`` where an engine runs but its image cannot be had: the quick start still works.

A machine with a reachable Docker Engine and no registry (air-gapped, a CI runner
behind a proxy) is simulated with the real engine and an image name that cannot
be pulled: this machine's network reaches only the package index, so the engine's
pull fails (at once: the registry's name does not resolve here). The README's
commands are run as written, with the real CLI as a subprocess, in a checkout of
the examples; the image comes from the user's configuration (``JHANSI_CONFIG``),
as an administrator would set it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import DOCKER_HOST, Engine, run_jhansi
from tests.integration.test_examples import Checkout, in_readme

#: No registry this machine reaches serves it (and no test loads it).
MISSING_IMAGE = "jhansi-test-missing/none:0"


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("jhansi: warning:")]


@pytest.fixture
def no_registry(
    docker_engine: Engine, bwrap_path: Path, tmp_path: Path
) -> tuple[Checkout, dict[str, str]]:
    """A checkout, and the environment of a user whose engine cannot get the image."""
    assert docker_engine.client.images.list(name=MISSING_IMAGE) == []
    config = tmp_path / "user-config.toml"
    config.write_text(f'[sandbox]\nimage = "{MISSING_IMAGE}"\n')
    env = {
        "DOCKER_HOST": DOCKER_HOST,
        "JHANSI_CONFIG": str(config),
        "JHANSI_LEDGER": str(tmp_path / "ledger"),
    }
    checkout = Checkout(tmp_path, "bwrap")
    checkout.env = env  # nothing names a backend: auto, as a newcomer has it
    return checkout, env


@pytest.mark.docker
@pytest.mark.bwrap
def test_quick_start_runs_on_bwrap_with_one_warning(
    no_registry: tuple[Checkout, dict[str, str]], tmp_path: Path
) -> None:
    checkout, _ = no_registry
    started = time.monotonic()
    proc = checkout.jhansi(in_readme("jhansi run examples/hello.py"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello from Python 3.")
    (warning,) = _warnings(proc.stderr)
    assert f"cannot provide the image {MISSING_IMAGE}: the pull failed" in warning
    assert "running on bwrap instead" in warning
    assert "--backend docker" in warning
    assert '[sandbox] backend = "bwrap"' in warning
    assert proc.stderr.strip().splitlines()[-1].split(" · ")[2] == "bwrap"
    # The pull fails at once here; the engine's own timeouts never come into it.
    assert time.monotonic() - started < 60

    # Code from stdin, as an agent pipes it: the failed pull is remembered, not repeated.
    piped = run_jhansi("run", "-", env=checkout.env, cwd=checkout.root, input="print(6 * 7)\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "42\n"
    (warning,) = _warnings(piped.stderr)
    assert "not tried again before" in warning

    # A reviewer sees why auto chose bwrap: it is in each run's exec.start.
    lines = (tmp_path / "ledger" / "ledger.jsonl").read_bytes().splitlines()
    starts = [r for r in map(json.loads, lines) if r["kind"] == "exec.start"]
    assert [s["body"]["sandbox"]["backend"] for s in starts] == ["bwrap", "bwrap"]
    for start in starts:
        selected = start["body"]["sandbox"]["details"]["selected"]
        assert selected.startswith("auto: the container engine (docker ")
        assert f"cannot provide the image {MISSING_IMAGE}" in selected


@pytest.mark.docker
@pytest.mark.bwrap
@pytest.mark.network
def test_deps_and_lock_need_no_image(no_registry: tuple[Checkout, dict[str, str]]) -> None:
    checkout, _ = no_registry
    for command in (
        "jhansi deps examples/deps_detected.py",
        "jhansi lock examples/deps_detected.py",
    ):
        proc = checkout.jhansi(in_readme(command))
        assert proc.returncode == 0, proc.stderr
        (warning,) = _warnings(proc.stderr)
        assert f"cannot provide the image {MISSING_IMAGE}" in warning
    # Locked for the interpreter that runs the script here: bwrap's.
    lock = (checkout.root / "examples" / "pylock.deps_detected.toml").read_text()
    assert 'target = "cpython-' in lock


@pytest.mark.docker
@pytest.mark.bwrap
def test_backend_docker_insists_and_names_bwrap(
    no_registry: tuple[Checkout, dict[str, str]],
) -> None:
    checkout, env = no_registry
    proc = run_jhansi("run", "--backend", "docker", "examples/hello.py", env=env, cwd=checkout.root)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == ""
    assert _warnings(proc.stderr) == []
    error, hint = proc.stderr.strip().splitlines()[-2:]
    assert error.startswith(f"error: cannot pull the image {MISSING_IMAGE}: "), error
    assert hint.startswith("hint: "), hint
    assert "--backend bwrap" in hint
    assert f"docker pull {MISSING_IMAGE}" in hint
