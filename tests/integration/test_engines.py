"""Each engine CI provisions starts a sandbox from the test image as a non-root user."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import RUNSC, Engine

UID_PROGRAM = "import os; print(os.getuid())"


def _run_in(engine: Engine, **extra: object) -> str:
    output = engine.client.containers.run(
        engine.image,
        ["python3", "-c", UID_PROGRAM],
        user="1000:1000",
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        read_only=True,
        remove=True,
        **extra,
    )
    return bytes(output).decode().strip()


@pytest.mark.docker
def test_docker_runs_the_test_image_as_non_root(docker_engine: Engine) -> None:
    assert docker_engine.name == "docker"
    assert _run_in(docker_engine) == "1000"


@pytest.mark.podman
def test_rootless_podman_runs_the_test_image_as_non_root(podman_engine: Engine) -> None:
    assert podman_engine.rootless
    assert _run_in(podman_engine) == "1000"


@pytest.mark.docker
@pytest.mark.gvisor
def test_gvisor_runs_the_test_image_on_a_user_space_kernel(gvisor_engine: Engine) -> None:
    assert _run_in(gvisor_engine, runtime=RUNSC) == "1000"
    kernel = gvisor_engine.client.containers.run(
        gvisor_engine.image,
        ["cat", "/proc/version"],
        runtime=RUNSC,
        network_mode="none",
        remove=True,
    )
    # gVisor's /proc/version names its own fake kernel, not the host's.
    assert b"Linux version" in kernel
    host = Path("/proc/version").read_bytes()
    assert bytes(kernel).strip() != host.strip()


@pytest.mark.bwrap
def test_bwrap_runs_python_as_non_root(bwrap_path: Path, host_python: Path) -> None:
    proc = subprocess.run(
        [
            str(bwrap_path),
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--uid",
            "1000",
            "--gid",
            "1000",
            str(host_python),
            "-c",
            UID_PROGRAM,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1000"
