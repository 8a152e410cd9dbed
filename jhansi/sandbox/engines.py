"""Finding the engine that answers, and telling what is behind it.

One code path serves rootful Docker, rootless Docker and Podman's
Docker-compatible socket. Which one answered — and whether it is rootless — is
part of every run's record, because "rootless" is a security property an
auditor asks about.

Where to look is :mod:`jhansi.sandbox.endpoints` (standard library only);
talking to an engine is :mod:`jhansi.sandbox.engine_client` (the docker SDK,
imported only when an engine is used). A unix socket that does not exist is
refused before the SDK is imported, so that finding no engine costs nothing.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jhansi.errors import SandboxError
from jhansi.sandbox.endpoints import START_HINT, TlsFiles, candidate_endpoints, normalize_url
from jhansi.sandbox.engine_client import EngineClient, EngineError, EngineTimeout

NO_ENGINE_RUNNING = "no container engine is running"
"""How the error that no endpoint answered begins (``auto`` then uses bubblewrap)."""


@dataclass(frozen=True, slots=True)
class IdMapping:
    """One range of a user namespace's uid or gid map (``container_id`` → ``host_id``)."""

    container_id: int
    host_id: int
    size: int


def map_id(mappings: Sequence[IdMapping], container_id: int) -> int | None:
    """The host id that ``container_id`` is inside a user namespace, or ``None`` if unmapped."""
    for m in mappings:
        if m.container_id <= container_id < m.container_id + m.size:
            return m.host_id + container_id - m.container_id
    return None


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
    uid_map: tuple[IdMapping, ...] = ()
    """Podman: how container uids map to host uids (empty for rootful engines and Docker)."""
    gid_map: tuple[IdMapping, ...] = ()
    cgroup_controllers: tuple[str, ...] | None = None
    """The cgroup controllers the engine can use for limits; ``None`` when it does not say
    (Docker, which reports the individual limits instead)."""
    limits: frozenset[str] = field(default_factory=frozenset)
    """Which of ``memory``, ``swap``, ``pids``, ``cpu`` the engine can enforce with cgroups."""
    init_binary: str = ""
    """The engine's init for ``--init`` (``docker-init``), empty when it has none."""

    @property
    def description(self) -> str:
        """One line such as ``podman 4.3.1 (rootless)``."""
        return f"{self.name} {self.version} ({'rootless' if self.rootless else 'rootful'})"

    @property
    def engine_uid(self) -> int | None:
        """The host uid the engine's own processes run as, when a user namespace says so."""
        return map_id(self.uid_map, 0)


# ------------------------------------------------------------------ discovery --


def connect(url: str, *, timeout: float = 10, tls: TlsFiles | None = None) -> EngineClient:
    """A client for ``url``, pinged; raises :class:`SandboxError` when nothing answers there.

    A unix socket that does not exist is refused before the SDK is imported.
    """
    normalized = normalize_url(url)
    if normalized.startswith("unix://"):
        path = normalized.removeprefix("unix://")
        if not Path(path).exists():
            raise SandboxError(
                f"no container engine at {url}: the socket does not exist", hint=START_HINT
            )
    if normalized.startswith("ssh://") and shutil.which("ssh") is None:
        raise SandboxError(
            f"cannot use the engine at {url}: no ssh client on the PATH",
            hint="Install OpenSSH's client (`apt install openssh-client`), or forward the "
            "engine's socket another way and use unix://.",
        )
    # Later calls (a pull, a create on a busy engine) may take longer than a ping should.
    client = EngineClient.open(url, tls=tls, timeout=max(timeout, 60))
    try:
        client.ping(timeout)
    except EngineTimeout:
        client.close()
        raise SandboxError(
            f"no container engine answers at {url}: timed out", hint=START_HINT
        ) from None
    except EngineError as exc:
        client.close()
        raise SandboxError(
            f"no container engine answers at {url}: {exc.message}", hint=START_HINT
        ) from None
    except SandboxError as exc:
        client.close()
        reason = exc.message.rpartition(": ")[2]
        raise SandboxError(
            f"no container engine answers at {url}: {reason}", hint=exc.hint or START_HINT
        ) from None
    return client


def _mappings(raw: object) -> tuple[IdMapping, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(
        IdMapping(int(m["container_id"]), int(m["host_id"]), int(m["size"]))
        for m in raw
        if isinstance(m, dict)
    )


def describe(client: EngineClient, url: str) -> EngineInfo:
    """Identify the engine behind ``client`` (pinged already, or pinged here).

    Few and cheap calls, because every run pays for them: Docker says all in
    ``/info`` (its ``/version`` asks containerd and is slower). Podman 4's
    answers take about 0.3 s each here, so its two run concurrently: its
    Docker-compatible ``/info`` omits rootless and claims every cgroup limit
    even where none can be set, while its own ``/libpod/info`` tells the truth
    (rootless, id mappings, cgroup controllers).
    """
    headers = client.ping_headers or client.ping()
    is_podman = "libpod-api-version" in headers or client.server.lower().startswith("libpod")
    libpod: dict[str, Any] = {}
    if is_podman:
        results: dict[str, Any] = {}

        def fetch_libpod() -> None:
            try:
                results["libpod"] = client.libpod_info()
            except BaseException as exc:  # re-raised in the calling thread
                results["error"] = exc

        worker = threading.Thread(target=fetch_libpod, name="jhansi-libpod-info", daemon=True)
        worker.start()
        info = client.info()
        worker.join()
        if "error" in results:
            raise results["error"]
        libpod = results.get("libpod") or {}
    else:
        info = client.info()
    security = tuple(str(s) for s in info.get("SecurityOptions") or ())
    rootless = any("rootless" in s for s in security)
    runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
    limits = {
        name
        for name, key in (
            ("memory", "MemoryLimit"),
            ("swap", "SwapLimit"),
            ("pids", "PidsLimit"),
            ("cpu", "CpuCfsQuota"),
        )
        if info.get(key)
    }
    uid_map: tuple[IdMapping, ...] = ()
    gid_map: tuple[IdMapping, ...] = ()
    controllers: tuple[str, ...] | None = None
    engine_version = str(info.get("ServerVersion") or "unknown")
    if is_podman:
        engine_version = str((libpod.get("version") or {}).get("Version") or engine_version)
        host = libpod.get("host") or {}
        rootless = rootless or bool((host.get("security") or {}).get("rootless"))
        id_mappings = host.get("idMappings") or {}
        uid_map = _mappings(id_mappings.get("uidmap"))
        gid_map = _mappings(id_mappings.get("gidmap"))
        if "cgroupControllers" in host:
            controllers = tuple(str(c) for c in host.get("cgroupControllers") or ())
            limits = {
                name
                for name, controller in (
                    ("memory", "memory"),
                    ("swap", "memory"),
                    ("pids", "pids"),
                    ("cpu", "cpu"),
                )
                if controller in controllers
            }
    return EngineInfo(
        url=url,
        name="podman" if is_podman else "docker",
        version=engine_version,
        api_version=client.api_version,
        rootless=rootless,
        runtimes=runtimes,
        default_runtime=str(info.get("DefaultRuntime") or ""),
        security_options=security,
        cgroup_version=str(info.get("CgroupVersion") or ""),
        uid_map=uid_map,
        gid_map=gid_map,
        cgroup_controllers=controllers,
        limits=frozenset(limits),
        init_binary=str(info.get("InitBinary") or ""),
    )


def find_engine(
    configured: str | None, environ: Mapping[str, str] | None = None
) -> tuple[EngineClient, EngineInfo]:
    """The first endpoint that answers, identified; :class:`SandboxError` if none does."""
    failures: list[str] = []
    for endpoint in candidate_endpoints(configured, environ):
        try:
            client = connect(endpoint.url, tls=endpoint.tls)
        except SandboxError as exc:
            if endpoint.explicit:
                raise SandboxError(
                    f"{exc.message} (from {endpoint.reason})", hint=exc.hint or START_HINT
                ) from None
            failures.append(endpoint.url)
            continue
        return client, describe(client, endpoint.url)
    raise SandboxError(
        f"{NO_ENGINE_RUNNING} (tried " + ", ".join(failures) + ")",
        hint=START_HINT,
    )
