"""The hardened container for a :class:`~jhansi.sandbox.interface.SandboxSpec`.

The body of ``POST /containers/create``: no network, a read-only root, every
capability dropped, ``no-new-privileges``, the spec's memory, CPU and pids limits
as cgroup settings (or rlimits where the engine has no controller for them), a
size-capped ``/tmp``, the spec's mounts (masks bound over what is hidden, the
copy-on-write ``/work`` as an overlay volume); and how each of those is enforced
on this engine and runtime, for the record.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

from jhansi.errors import SandboxError
from jhansi.sandbox.docker.identity import Identity
from jhansi.sandbox.engines import EngineInfo
from jhansi.sandbox.interface import (
    PYTHON,
    Mount,
    Overlay,
    SandboxSpec,
    thread_env,
    threads_enforcement,
)
from jhansi.sandbox.masks import check_mounts, masks_directory

#: The image's interpreter, put where the spec says :data:`~jhansi.sandbox.interface.PYTHON`.
IMAGE_PYTHON: Final = "python3"


@contextmanager
def mask_sources(needed: bool) -> Iterator[tuple[Path, Path] | None]:
    """An empty read-only file and directory to bind over masked paths, removed afterwards.

    The directory holding them is 0755 so that a rootless engine's user can bind them.
    """
    if not needed:
        yield None
        return
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="jhansi-masks-"))
    try:
        base.chmod(0o755)
        empty_file = base / "file"
        empty_file.touch(mode=0o444)
        empty_file.chmod(0o444)
        empty_dir = base / "dir"
        empty_dir.mkdir(mode=0o555)
        empty_dir.chmod(0o555)
        yield empty_file, empty_dir
    finally:
        with suppress(OSError):
            (base / "dir").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def _bind(source: Path, target: str, read_only: bool) -> dict[str, Any]:
    return {
        "Type": "bind",
        "Source": str(source),
        "Target": target,
        "ReadOnly": read_only,
        "BindOptions": {"Propagation": "rprivate"},
    }


def engine_mounts(
    mounts: tuple[Mount, ...], masks: tuple[Path, Path] | None, *, opens_targets: bool = False
) -> list[dict[str, Any]]:
    """The API's ``HostConfig.Mounts`` for the spec's mounts.

    ``empty`` masks bind an empty read-only file over a file, or an empty
    read-only directory over a directory, so the content is hidden but the name
    stays (a tool that lists ``.git`` sees it empty, not missing). ``opens_targets``:
    the runtime opens a mount point to mount over it (gVisor's gofer), so a masked
    FIFO, socket or device node is refused rather than opened.
    """
    # runc resolves a link at a mount point inside the container and creates its
    # target there (in the project when it is writable): never mount over or below one.
    check_mounts(mounts, opens_targets=opens_targets)
    result = []
    for mount in mounts:
        if mount.kind == "overlay" and mount.overlay is not None:
            result.append(_overlay_volume(mount.overlay, mount.target))
        elif mount.kind == "empty":
            if masks is None:
                raise ValueError("masks needed for an empty mount")
            empty_file, empty_dir = masks
            source = empty_dir if masks_directory(mount.source) else empty_file
            result.append(_bind(source, mount.target, True))
        else:
            result.append(_bind(mount.source, mount.target, mount.read_only))
    return result


#: What Docker's local volume driver cannot carry in a mount's option string.
_OPTION_BREAKERS = frozenset(",:\\=\n")


def overlay_options(overlay: Overlay) -> str:
    """The overlayfs options for ``overlay`` (lower layers topmost first), with every
    feature that could make the kernel follow something the sandbox wrote turned off:
    no redirects, no metacopy, no index."""
    for path in (*overlay.lower, overlay.upper, overlay.work):
        text = str(path)
        if any(c in _OPTION_BREAKERS for c in text) or not text.isprintable():
            raise SandboxError(
                f"the path {text!r} cannot be given to Docker's overlay volume",
                hint="Keep jhansi's data directory and the project on paths without ',', ':', "
                "'=' or '\\'.",
            )
    lower = ":".join(str(p) for p in overlay.lower)
    return (
        f"lowerdir={lower},upperdir={overlay.upper},workdir={overlay.work},"
        "redirect_dir=off,index=off,metacopy=off,xino=off"
    )


def _overlay_volume(overlay: Overlay, target: str) -> dict[str, Any]:
    """An anonymous volume the engine's local driver mounts as overlayfs (as root, on the
    engine's host), removed with the container; ``NoCopy``: the image's files at the
    target are never copied into it."""
    return {
        "Type": "volume",
        "Target": target,
        "ReadOnly": False,
        "VolumeOptions": {
            "NoCopy": True,
            "DriverConfig": {
                "Name": "local",
                "Options": {
                    "type": "overlay",
                    "device": "overlay",
                    "o": overlay_options(overlay),
                },
            },
        },
    }


def is_gvisor(runtime: str) -> bool:
    """Whether the OCI runtime named ``runtime`` is gVisor."""
    return "runsc" in runtime or "gvisor" in runtime


def gvisor_connects_host_sockets(runtime_args: Sequence[str]) -> bool:
    """Whether runsc started with ``runtime_args`` lets a sandbox connect to a host unix socket.

    gVisor refuses ``connect()`` to a host socket bound into the container unless
    ``--host-uds`` is ``open`` (or ``all``; the deprecated ``--fsgofer-host-uds``
    means ``all``). That permits only sockets that are bound into the container,
    which is what runc allows anyway; the egress proxy's socket is the only one
    jhansi binds. Go's flag syntax: one or two dashes, ``=value`` or a separate
    value; the last setting wins.
    """
    value = "none"
    args = list(runtime_args)
    for i, arg in enumerate(args):
        name, equals, given = arg.lstrip("-").partition("=")
        if name == "host-uds":
            value = given if equals else (args[i + 1] if i + 1 < len(args) else "")
        elif name == "fsgofer-host-uds":
            value = "all" if not equals or given.lower() in ("1", "t", "true") else "none"
    return value in ("open", "all")


def sandbox_rlimits(spec: SandboxSpec, engine: EngineInfo, runtime: str) -> dict[str, int]:
    """The rlimits the sandbox gets (soft = hard), beyond the engine's cgroup limits.

    Always no core dumps. gVisor runs the sandbox's processes inside its own
    kernel, where the host's pids cgroup cannot count them but ``RLIMIT_NPROC``
    binds. Rootless Podman on cgroup v1 (no controllers delegated) silently
    ignores memory, pids and CPU limits; rlimits are what the kernel can still
    enforce: address space for memory, processes of the sandbox's uid for pids,
    and CPU seconds per process for the CPU share over the timeout.
    """
    limits = spec.limits
    result = {"core": 0}
    if "memory" not in engine.limits:
        result["as"] = limits.memory
    if "pids" not in engine.limits or is_gvisor(runtime):
        result["nproc"] = limits.pids
    if "cpu" not in engine.limits:
        result["cpu"] = max(1, math.ceil(limits.cpus * limits.timeout))
    return result


#: Sets rlimits, then executes the command (Python 3.8+, standard library): for engines
#: that do not apply the API's ``Ulimits`` (Podman 4's Docker-compatible API ignores them).
RLIMIT_SHIM: Final = (
    "import os,resource as r,sys\n"
    "for item in sys.argv[1].split(','):\n"
    " name,value=item.split('=')\n"
    " r.setrlimit(getattr(r,'RLIMIT_'+name.upper()),(int(value),int(value)))\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)
#: Host pids (threads and processes, what the container's pids cgroup counts) that gVisor
#: itself needs with no sandbox task: its kernel's Go runtime and its file proxy (about
#: 45 measured idle here), with room for bursts of Go runtime threads.
GVISOR_PIDS_BASE: Final = 128
#: Host pids per sandbox task on gVisor's ptrace platform. Each sandbox process is a
#: host stub process with a traced thread per kernel thread that ran it, and the kernel
#: adds threads for tasks it runs at once: 5.2 per sleeping child and 6.3 at the peak
#: of a fork bomb, measured on 2 CPUs (pids.current of the container's cgroup, runsc
#: 2022-12). Sized above the peak so that the sandbox's own RLIMIT_NPROC refuses a fork
#: (EAGAIN, which the script can handle) before the host cgroup refuses gVisor a thread
#: (which ends the whole sandbox).
GVISOR_PIDS_PER_TASK: Final = 8


def host_pids_limit(pids: int, runtime: str) -> int:
    """The container's pids cgroup limit for a sandbox allowed ``pids`` tasks on ``runtime``.

    runc: the sandbox's processes are host processes, so the cgroup limit is the
    sandbox's. gVisor: the sandbox's tasks live in gVisor's kernel, which enforces
    ``RLIMIT_NPROC`` (tasks, threads included) of the sandbox's uid; the host cgroup
    then counts gVisor's own threads and stub processes, which grow with the tasks,
    so it is sized from them (:data:`GVISOR_PIDS_BASE` + :data:`GVISOR_PIDS_PER_TASK`
    per task). It stays finite: the host is protected if gVisor needs more anyway,
    and jhansi then reports that the runtime ended the sandbox.
    """
    if is_gvisor(runtime):
        return GVISOR_PIDS_BASE + GVISOR_PIDS_PER_TASK * pids
    return pids


def container_config(
    spec: SandboxSpec,
    *,
    image: str,
    engine: EngineInfo,
    identity: Identity,
    mounts: list[dict[str, Any]],
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for ``spec``: every hardening setting."""
    argv = list(spec.argv)
    if argv and argv[0] == PYTHON:
        argv[0] = IMAGE_PYTHON
    limits = spec.limits
    runtime = spec.runtime or engine.default_runtime or "runc"
    rlimits = sandbox_rlimits(spec, engine, runtime)
    ulimits = [{"Name": name, "Soft": value, "Hard": value} for name, value in rlimits.items()]
    # Paths inside the container, not the host's: S108 does not apply.
    tmpfs = {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_size},mode=1777"}  # noqa: S108
    if engine.name == "podman":
        # Podman ignores the API's Ulimits (4.x): set them in the sandbox before the command.
        ulimits = []
        settings = ",".join(f"{name}={value}" for name, value in rlimits.items())
        argv = [IMAGE_PYTHON, "-I", "-S", "-c", RLIMIT_SHIM, settings, *argv]
        # With a read-only root, Podman mounts a writable, unbounded tmpfs at /var/tmp
        # (and /run, root's only); Docker leaves it read-only, and so does jhansi.
        tmpfs["/var/tmp"] = "ro,nosuid,nodev,noexec,size=4k,mode=755"  # noqa: S108
    pids = host_pids_limit(limits.pids, runtime)
    interactive = spec.interactive
    host_config: dict[str, Any] = {
        "NetworkMode": "none",
        "ReadonlyRootfs": True,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": False,
        "IpcMode": "private",
        "Memory": limits.memory,
        "MemorySwap": limits.memory,
        "NanoCpus": int(limits.cpus * 1e9),
        "PidsLimit": pids,
        "Ulimits": ulimits,
        "Tmpfs": tmpfs,
        "ShmSize": min(limits.tmp_size, 64 * 1024 * 1024),
        "Mounts": mounts,
        # Output reaches jhansi through the attach stream; the engine keeps no copy of it.
        "LogConfig": {"Type": "none", "Config": {}},
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
    }
    if engine.init_binary:
        # A real init as pid 1: zombies reaped, a signalled script's status reported as 128+N.
        host_config["Init"] = True
    if spec.runtime:
        host_config["Runtime"] = spec.runtime
    if identity.userns_mode:
        host_config["UsernsMode"] = identity.userns_mode
    return {
        "Image": image,
        "Entrypoint": argv[:1],
        "Cmd": argv[1:],
        "User": f"{identity.uid}:{identity.gid}",
        "Env": [f"{k}={v}" for k, v in thread_env(spec.env, spec.limits.cpus).items()],
        "WorkingDir": spec.workdir,
        "Labels": {**spec.labels, **labels},
        "NetworkDisabled": True,
        "Tty": False,
        "AttachStdin": interactive,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": interactive,
        "StdinOnce": interactive,
        "HostConfig": host_config,
    }


def enforcement(spec: SandboxSpec, engine: EngineInfo, identity: Identity) -> dict[str, str]:
    """How each setting of ``spec`` is enforced on ``engine``, for the record."""
    limits = spec.limits
    runtime = spec.runtime or engine.default_runtime or "runc"
    rlimits = sandbox_rlimits(spec, engine, runtime)
    cgroup = f"cgroup v{engine.cgroup_version or '?'} ({engine.name}, {runtime})"
    missing = f"{engine.name} here has no cgroup controller for it"
    result = {
        "user": identity.how,
        "network": "none (loopback only)",
        "root filesystem": "read-only",
        "capabilities": "all dropped, no-new-privileges",
        "tmp": f"tmpfs of {limits.tmp_size} bytes",
        "timeout": f"{limits.timeout:g} s wall clock, then jhansi kills the container",
        "output": f"last {limits.output_limit} bytes of each stream kept by jhansi",
        "threads": threads_enforcement(spec),
    }
    overlay = next((m.overlay for m in spec.mounts if m.kind == "overlay"), None)
    if overlay is not None:
        how = "gVisor's gofer serves it" if is_gvisor(runtime) else runtime
        result["work"] = (
            f"copy-on-write: overlayfs volume mounted by {engine.name} {engine.version}'s local "
            f"driver ({how}); writes land in {overlay.upper}, the project is a read-only "
            "lower layer under the masks, and nothing reaches it until `jhansi sandbox apply`"
        )
    if "as" in rlimits:
        result["memory"] = f"RLIMIT_AS {limits.memory} bytes per process ({missing})"
    else:
        swap = "no swap" if "swap" in engine.limits else "swap not limited (no swap accounting)"
        result["memory"] = f"{cgroup}: {limits.memory} bytes, {swap}"
    if is_gvisor(runtime):
        result["pids"] = (
            f"RLIMIT_NPROC {limits.pids} in gVisor's kernel; {cgroup}: "
            f"{host_pids_limit(limits.pids, runtime)} host threads for gVisor itself "
            f"({GVISOR_PIDS_BASE} + {GVISOR_PIDS_PER_TASK} per task)"
        )
    elif "nproc" in rlimits:
        result["pids"] = f"RLIMIT_NPROC {limits.pids} for host uid {identity.host_uid} ({missing})"
    else:
        result["pids"] = f"{cgroup}: {limits.pids}"
    if "cpu" in rlimits:
        result["cpus"] = f"RLIMIT_CPU {rlimits['cpu']} s per process ({missing})"
    else:
        result["cpus"] = f"{cgroup}: CFS quota of {limits.cpus:g} CPUs"
    return result
