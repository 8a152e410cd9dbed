"""Shared fixtures: an isolated JHANSI_HOME for every test, and the real engines.

Engine fixtures skip with a reason when the engine is absent on a developer's
machine. Under ``JHANSI_REQUIRE_ENGINES=1`` (set by ``.ci/run``, whose
provisioning makes them present) an absent engine fails the test instead: a
skip there would hide a broken CI set-up.

The defaults below are what ``scripts/provision.sh`` creates; ``JHANSI_TEST_*``
variables override them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

REQUIRE_ENGINES = os.environ.get("JHANSI_REQUIRE_ENGINES") == "1"
TEST_IMAGE = os.environ.get("JHANSI_TEST_IMAGE", "jhansi-test-python:bookworm")
DOCKER_HOST = os.environ.get("JHANSI_TEST_DOCKER_HOST", "unix:///var/run/docker.sock")
PODMAN_HOST = os.environ.get("JHANSI_TEST_PODMAN_HOST", "unix:///run/jhansi-ci/podman.sock")
RUNSC = os.environ.get("JHANSI_TEST_RUNSC", "runsc")


def absent(reason: str) -> NoReturn:
    """Skip (developer machine) or fail (CI, where provisioning must have made it present)."""
    if REQUIRE_ENGINES:
        pytest.fail(f"required by JHANSI_REQUIRE_ENGINES=1 but absent: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def jhansi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own JHANSI_HOME and no settings from the caller's environment."""
    home = tmp_path / "jhansi-home"
    monkeypatch.setenv("JHANSI_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    for name in list(os.environ):
        if (
            name.startswith("JHANSI_")
            and name not in ("JHANSI_HOME", "JHANSI_REQUIRE_ENGINES")
            and not name.startswith("JHANSI_TEST_")
        ):
            monkeypatch.delenv(name)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    # Each `jhansi run` a test starts runs in its own process, as with the helper off:
    # a helper outliving the test would hold pipes and outlast CI. The helper has its
    # own tests (tests/integration/test_helper.py), which turn it on in a private dir.
    monkeypatch.setenv("JHANSI_HELPER", "off")
    # A checkout is 0755; pytest makes its directories 0700. As root the sandbox runs as
    # an id of its own, which must read the project the way it reads a real checkout.
    tmp_path.chmod(0o755)
    return home


def _index_url() -> str:
    """The package index the user's uv or pip configuration names (never a literal here)."""
    for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        if os.environ.get(name):
            return os.environ[name]
    from pypi_simple import PYPI_SIMPLE_ENDPOINT

    return str(PYPI_SIMPLE_ENDPOINT)


@pytest.fixture(scope="session")
def _index_reachable() -> str | None:
    import urllib.request

    url = _index_url().rstrip("/") + "/pip/"
    try:
        request = urllib.request.Request(  # noqa: S310 - the configured index
            url, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=20):  # noqa: S310 - the configured index
            return None
    except OSError as exc:
        return f"the package index does not answer ({exc})"


@pytest.fixture(autouse=True)
def _network_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked ``network`` need the package index: skip (or fail in CI) without it."""
    if request.node.get_closest_marker("network") is not None:
        problem = request.getfixturevalue("_index_reachable")
        if problem:
            absent(problem)


@dataclass(frozen=True)
class Engine:
    """A reachable Docker Engine API endpoint with the test image loaded."""

    url: str
    client: Any
    image: str
    name: str
    rootless: bool


def _engine(url: str, what: str) -> Iterator[Engine]:
    try:
        import docker
        from docker.errors import DockerException, ImageNotFound
    except ImportError:
        absent("the docker SDK is not installed")
    if url.startswith("unix://") and not Path(url.removeprefix("unix://")).exists():
        absent(f"{what} is not running: no socket at {url} (run scripts/provision.sh)")
    try:
        client = docker.DockerClient(base_url=url, timeout=60)
        client.ping()
        version = client.version()
        info = client.info()
    except DockerException as exc:
        absent(f"{what} does not answer at {url}: {exc}")
    try:
        client.images.get(TEST_IMAGE)
    except ImageNotFound:
        absent(f"the test image {TEST_IMAGE} is not loaded in {what} (run scripts/provision.sh)")
    names = " ".join(c.get("Name", "") for c in version.get("Components") or []).lower()
    rootless = any("rootless" in s for s in info.get("SecurityOptions") or [])
    if "podman" in str(version.get("Components")).lower():
        libpod = client.api.get(client.api.base_url + "/v1.41/libpod/info", timeout=30).json()
        rootless = bool(libpod["host"]["security"]["rootless"])
    yield Engine(url, client, TEST_IMAGE, "podman" if "podman" in names else "docker", rootless)
    client.close()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """The rootful Docker Engine, with the test image."""
    yield from _engine(DOCKER_HOST, "Docker Engine")


@pytest.fixture(scope="session")
def podman_engine() -> Iterator[Engine]:
    """A rootless Podman engine's Docker-compatible socket, with the test image."""
    for engine in _engine(PODMAN_HOST, "rootless Podman"):
        if engine.name != "podman" or not engine.rootless:
            pytest.fail(
                f"{PODMAN_HOST} is {engine.name}, rootless={engine.rootless}: "
                "expected rootless Podman",
                pytrace=False,
            )
        yield engine


@pytest.fixture(scope="session")
def gvisor_engine(docker_engine: Engine) -> Engine:
    """The Docker Engine, checked to have gVisor's runsc runtime registered."""
    runtimes = docker_engine.client.info().get("Runtimes") or {}
    if RUNSC not in runtimes:
        absent(f"the {RUNSC} runtime is not registered with Docker (run scripts/provision.sh)")
    return docker_engine


@pytest.fixture(scope="session")
def bwrap_path() -> Path:
    """The system's bubblewrap."""
    found = shutil.which("bwrap")
    if not found:
        absent("bubblewrap is not installed (apt-get install bubblewrap)")
    return Path(found)


@pytest.fixture(scope="session")
def host_python() -> Path:
    """The real interpreter running the tests (not a pyenv shim)."""
    return Path(sys.executable).resolve()


BACKENDS = ("bwrap", "docker", "podman", "gvisor")
_ENGINE_FIXTURE = {
    "bwrap": "bwrap_path",
    "docker": "docker_engine",
    "podman": "podman_engine",
    "gvisor": "gvisor_engine",
}


def backend_env(name: str) -> dict[str, str]:
    """The settings, as a user would set them, that select backend ``name``."""
    if name == "bwrap":
        return {"JHANSI_SANDBOX_BACKEND": "bwrap"}
    env = {
        "JHANSI_SANDBOX_BACKEND": "docker",
        "JHANSI_SANDBOX_ENGINE_URL": PODMAN_HOST if name == "podman" else DOCKER_HOST,
        "JHANSI_SANDBOX_IMAGE": TEST_IMAGE,
    }
    if name == "gvisor":
        env["JHANSI_SANDBOX_RUNTIME"] = RUNSC
    return env


def require_backend(request: pytest.FixtureRequest, name: str) -> None:
    """Make sure the engine behind ``name`` is present (skip or fail as configured)."""
    request.getfixturevalue(_ENGINE_FIXTURE[name])


def prepare_jhansi_home(backend: str, home: Path) -> None:
    """Let the engine's user through JHANSI_HOME, as jhansi's hint tells a user to.

    Only for rootless Podman driven by root (the CI set-up), whose engine runs as
    another user: the directories are made traversable (0711), not readable.
    """
    if backend != "podman":
        return
    for directory in (
        home,
        home / "data",
        home / "data" / "sandboxes",
        home / "run",
        home / "cache",
    ):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o711)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temporary directory every engine's user can traverse.

    Rootless Podman runs as another user here (CI drives it as root), and pytest's
    own temporary directories are private to root.
    """
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="jhansi-test-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_jhansi(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``jhansi ARGS`` as a real subprocess of this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "jhansi", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        input=input,
        timeout=timeout,
        check=False,
    )
