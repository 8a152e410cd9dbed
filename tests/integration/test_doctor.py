"""``jhansi doctor`` against the real engines, and with each of them missing."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.conftest import PODMAN_HOST, Engine, run_jhansi


def _checks(stdout: str) -> dict[str, dict[str, object]]:
    doc = json.loads(stdout)
    return {c["name"]: c for c in doc["checks"]}


@pytest.mark.docker
@pytest.mark.podman
@pytest.mark.bwrap
def test_all_three_backends_are_usable(
    docker_engine: Engine, podman_engine: Engine, bwrap_path: Path
) -> None:
    proc = run_jhansi("doctor", "--json", env={"JHANSI_SANDBOX_ENGINE_URL": PODMAN_HOST})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "ok"
    assert set(doc["usable_backends"]) == {"bwrap", "docker"}
    checks = _checks(proc.stdout)
    assert "rootless" in str(checks["docker"]["detail"])
    assert "podman" in str(checks["docker"]["detail"])
    assert "user namespaces work" in str(checks["bwrap"]["detail"])
    # Docker's own socket is found too, and listed beside the selected engine.
    also = checks["engine (also found)"]
    assert also["ok"] is True
    assert "docker" in str(also["detail"])
    assert "rootful" in str(also["detail"])


@pytest.mark.docker
def test_doctor_lists_gvisor_runtime(docker_engine: Engine) -> None:
    proc = run_jhansi("doctor", "--json", env={"JHANSI_SANDBOX_RUNTIME": "runsc"})
    checks = _checks(proc.stdout)
    assert checks["docker"]["ok"] is True, checks["docker"]
    assert "runsc" in str(checks["docker"]["detail"])


@pytest.mark.docker
def test_unregistered_runtime_is_named_with_the_fix(docker_engine: Engine) -> None:
    proc = run_jhansi("doctor", "--json", env={"JHANSI_SANDBOX_RUNTIME": "kata-nope"})
    docker = _checks(proc.stdout)["docker"]
    assert docker["ok"] is False
    assert "'kata-nope'" in str(docker["detail"])
    assert "daemon.json" in str(docker["hint"])


@pytest.mark.docker
def test_doctor_says_whether_the_engine_has_the_image(docker_engine: Engine) -> None:
    env = {"DOCKER_HOST": docker_engine.url, "JHANSI_SANDBOX_IMAGE": docker_engine.image}
    present = _checks(run_jhansi("doctor", "--json", env=env).stdout)["image"]
    assert present["ok"] is True, present
    assert f"{docker_engine.image} (sha256:" in str(present["detail"])
    missing = "jhansi-test-missing/none:0"
    proc = run_jhansi("doctor", "--json", env={**env, "JHANSI_SANDBOX_IMAGE": missing})
    assert proc.returncode == 0  # the image decides no backend: without it, auto uses bwrap
    image = _checks(proc.stdout)["image"]
    assert image["ok"] is False
    assert image["backend"] is None
    assert f"{missing} is not in the engine" in str(image["detail"])
    assert f"docker pull {missing}" in str(image["hint"])
    assert "bwrap" in str(image["hint"])


def test_stopped_engine_gets_the_start_hint(tmp_path: Path) -> None:
    # dockerd removes its socket when it stops: nothing is at the path.
    gone = tmp_path / "docker.sock"
    proc = run_jhansi("doctor", "--json", env={"DOCKER_HOST": f"unix://{gone}"})
    docker = _checks(proc.stdout)["docker"]
    assert docker["ok"] is False
    assert "socket does not exist" in str(docker["detail"])
    assert "systemctl start docker" in str(docker["hint"])


def test_dead_socket_is_connection_refused(tmp_path: Path) -> None:
    # A socket file nobody accepts on: what a killed dockerd leaves behind.
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    proc = run_jhansi("doctor", "--json", env={"JHANSI_SANDBOX_ENGINE_URL": f"unix://{path}"})
    docker = _checks(proc.stdout)["docker"]
    assert docker["ok"] is False
    assert "connection refused" in str(docker["detail"])
    assert "DOCKER_HOST" in str(docker["hint"])


def test_absent_bwrap_gets_the_install_hint(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_jhansi(
        "doctor", "--json", env={"PATH": str(empty), "JHANSI_SANDBOX_BWRAP": "system"}
    )
    bwrap = _checks(proc.stdout)["bwrap"]
    assert bwrap["ok"] is False
    assert "not installed" in str(bwrap["detail"])
    assert "apt-get install bubblewrap" in str(bwrap["hint"])


def test_bundled_bwrap_is_the_fallback(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_jhansi("doctor", "--json", env={"PATH": str(empty)})
    bwrap = _checks(proc.stdout)["bwrap"]
    assert "(bundled)" in str(bwrap["detail"])


def test_no_backend_exits_4_with_the_fixes(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_jhansi(
        "doctor",
        env={
            "PATH": str(empty),
            "JHANSI_SANDBOX_BWRAP": "system",
            "DOCKER_HOST": f"unix://{tmp_path}/none.sock",
        },
    )
    assert proc.returncode == 4
    assert "no sandbox backend is usable" in proc.stdout
    json_proc = run_jhansi(
        "doctor",
        "--json",
        env={
            "PATH": str(empty),
            "JHANSI_SANDBOX_BWRAP": "system",
            "DOCKER_HOST": f"unix://{tmp_path}/none.sock",
        },
    )
    assert json_proc.returncode == 4
    assert json.loads(json_proc.stdout)["status"] == "unusable"
