"""Finding a Docker Engine API endpoint and telling what is behind it.

One code path serves rootful Docker, rootless Docker and Podman's
Docker-compatible socket. Which one answered — and whether it is rootless — is
part of every run's record, because "rootless" is a security property an
auditor asks about.

The ``docker`` SDK is imported only inside these functions: start-up time is a
feature, and ``jhansi --version`` must not pay for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jhansi.errors import SandboxError

if TYPE_CHECKING:
    import docker

START_HINT = (
    "Start the engine (Docker: `sudo systemctl start docker`, rootless Docker: "
    "`systemctl --user start docker`, Podman: `systemctl --user start podman.socket`), "
    "or point DOCKER_HOST / [sandbox] engine_url at a running one."
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address to try, and why it is on the list."""

    url: str
    reason: str
    explicit: bool
    """Named by the user (config or DOCKER_HOST): never silently replaced by another."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What answered at an endpoint."""

    url: str
    name: str
    """``docker`` or ``podman``."""
    version: str
    api_version: str
    rootless: bool
    runtimes: tuple[str, ...]
    default_runtime: str
    security_options: tuple[str, ...]
    cgroup_version: str

    @property
    def description(self) -> str:
        """One line such as ``podman 4.3.1 (rootless)``."""
        return f"{self.name} {self.version} ({'rootless' if self.rootless else 'rootful'})"


def candidate_endpoints(
    configured: str | None, environ: Mapping[str, str] | None = None
) -> list[Endpoint]:
    """Where to look for an engine, most specific first."""
    env = os.environ if environ is None else environ
    if configured:
        return [Endpoint(configured, "[sandbox] engine_url", explicit=True)]
    if env.get("DOCKER_HOST"):
        return [Endpoint(env["DOCKER_HOST"], "DOCKER_HOST", explicit=True)]
    found = [Endpoint("unix:///var/run/docker.sock", "Docker's default socket", explicit=False)]
    runtime_dir = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    found.append(
        Endpoint(f"unix://{runtime_dir}/docker.sock", "rootless Docker's socket", explicit=False)
    )
    found.append(
        Endpoint(
            f"unix://{runtime_dir}/podman/podman.sock", "rootless Podman's socket", explicit=False
        )
    )
    if os.getuid() == 0:
        found.append(
            Endpoint("unix:///run/podman/podman.sock", "rootful Podman's socket", explicit=False)
        )
    return found


def connect(url: str, *, timeout: int = 10) -> docker.DockerClient:
    """A client for ``url``; raises :class:`SandboxError` when nothing answers there."""
    import docker
    from docker.errors import DockerException

    if url.startswith("unix://") and not Path(url.removeprefix("unix://")).exists():
        raise SandboxError(
            f"no container engine at {url}: the socket does not exist", hint=START_HINT
        )
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout, version="auto")
        client.ping()
    except DockerException as exc:
        raise SandboxError(
            f"no container engine answers at {url}: {_reason(exc)}", hint=START_HINT
        ) from None
    return client


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Permission denied", "No such file", "timed out"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def describe(client: docker.DockerClient, url: str) -> EngineInfo:
    """Identify the engine behind ``client``."""
    version: dict[str, Any] = client.version()
    info: dict[str, Any] = client.info()
    components = [c.get("Name", "") for c in version.get("Components") or []]
    is_podman = (
        any("podman" in name.lower() for name in components)
        or "podman" in str(version.get("Platform", {}).get("Name", "")).lower()
    )
    security = tuple(str(s) for s in info.get("SecurityOptions") or ())
    rootless = any("rootless" in s for s in security)
    if is_podman and not rootless:
        # Podman's Docker-compatible /info omits it (4.x); its own API says it.
        rootless = _podman_rootless(client)
    runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
    if is_podman:
        podman_version = next(
            (
                str(c.get("Version"))
                for c in version.get("Components") or []
                if "podman" in str(c.get("Name", "")).lower()
            ),
            str(version.get("Version", "unknown")),
        )
        engine_version = podman_version
    else:
        engine_version = str(version.get("Version", "unknown"))
    return EngineInfo(
        url=url,
        name="podman" if is_podman else "docker",
        version=engine_version,
        api_version=str(version.get("ApiVersion", "")),
        rootless=rootless,
        runtimes=runtimes,
        default_runtime=str(info.get("DefaultRuntime") or ""),
        security_options=security,
        cgroup_version=str(info.get("CgroupVersion") or ""),
    )


def _podman_rootless(client: docker.DockerClient) -> bool:
    response = client.api.get(client.api.base_url + "/libpod/info", timeout=10)
    if response.status_code != 200:
        return False
    host = response.json().get("host") or {}
    return bool((host.get("security") or {}).get("rootless"))


def find_engine(
    configured: str | None, environ: Mapping[str, str] | None = None
) -> tuple[docker.DockerClient, EngineInfo]:
    """The first endpoint that answers, identified; :class:`SandboxError` if none does."""
    failures: list[str] = []
    for endpoint in candidate_endpoints(configured, environ):
        try:
            client = connect(endpoint.url)
        except SandboxError as exc:
            if endpoint.explicit:
                raise SandboxError(
                    f"{exc.message} (from {endpoint.reason})", hint=START_HINT
                ) from None
            failures.append(endpoint.url)
            continue
        return client, describe(client, endpoint.url)
    raise SandboxError(
        "no container engine is running (tried " + ", ".join(failures) + ")",
        hint=START_HINT,
    )
