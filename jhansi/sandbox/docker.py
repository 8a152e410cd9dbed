"""The docker backend: a :class:`SandboxSpec` carried out by a Docker Engine API endpoint.

The same code serves rootful Docker (runc or gVisor's runsc), rootless Docker
and rootless Podman's Docker-compatible socket. One run is one container:
created with every hardening setting of the spec, attached *before* it starts
(so no output is lost), waited for with the wall-clock timeout, inspected
for an OOM kill, and always removed — also on Ctrl-C.

Who the sandbox is (:func:`sandbox_identity`) is decided here, from the engine
and the invoking user, because only the backend knows how the engine maps
uids: files the sandbox writes into its home must stay readable and deletable
by the user who ran jhansi, and the sandbox never runs as root.

- Rootful engine, jhansi run by root: the spec's uid (1000) inside and on the
  host; the home is handed to that uid (``chown``); root can delete anything.
- Rootful engine, jhansi run by user U: U's uid and gid inside, so files are U's.
- Rootless Podman run by the same user as jhansi: ``keep-id``, the invoking uid
  is the uid inside.
- Rootless Podman driven by another user (root in CI): the spec's uid maps to a
  subordinate uid of the engine's user (``/libpod/info`` idMappings); the home
  is handed to that host uid, and every bind source must be reachable by the
  engine's user — if not, a :class:`SandboxError` names the directory.
- Rootless Docker: the spec's uid maps to a subordinate uid that an
  unprivileged user cannot hand the home to; jhansi refuses with the
  alternatives rather than run a sandbox whose files the user could not delete.

Crashed runs leave containers behind; each carries the owner's pid, the
pid's start time and the host name as labels, and :meth:`DockerBackend.prune`
(called at the start of every run, one filtered list call) removes those
whose owner is gone.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal

from jhansi.errors import SandboxError
from jhansi.sandbox.engines import (
    EngineClient,
    EngineInfo,
    PullProgress,
    find_engine,
    map_id,
)
from jhansi.sandbox.interface import (
    PYTHON,
    ROOT_SANDBOX_HOST_UID,
    ROOT_SANDBOX_ID_BASE,
    ROOT_SANDBOX_ID_SPAN,
    Backend,
    BackendInfo,
    CopyOnWrite,
    DiscardOutput,
    ExecResult,
    ExecStatus,
    Mount,
    OutputSink,
    OutputTail,
    Overlay,
    SandboxSpec,
    Stream,
    TailBuffer,
    spec_root_id,
    thread_env,
    threads_enforcement,
    without_gate,
)
from jhansi.sandbox.masks import check_mounts, masks_directory
from jhansi.sandbox.ownership import check_dedicated_range, hand_over
from jhansi.sandbox.probe import cached

if TYPE_CHECKING:
    from jhansi.deps.target import Target


def _log() -> Any:
    """jhansi's logger for this backend (``logging`` is imported only when something is
    worth logging: start-up time is a feature)."""
    import logging

    return logging.getLogger("jhansi.sandbox.docker")


LABEL_RUN_ID: Final = "jhansi.run-id"
LABEL_OWNER_PID: Final = "jhansi.owner-pid"
LABEL_OWNER_START: Final = "jhansi.owner-start"
"""The owner's start time (clock ticks since boot), so that a reused pid is not mistaken
for the owner."""
LABEL_OWNER_HOST: Final = "jhansi.owner-host"
#: The image's interpreter, put where the spec says :data:`~jhansi.sandbox.interface.PYTHON`.
IMAGE_PYTHON: Final = "python3"
#: How long to wait for the engine to stop a killed container and for its output to end.
_KILL_GRACE: Final = 20.0
_OUTPUT_DRAIN: Final = 10.0
_SIGKILL: Final = 9

PullPolicy = Literal["missing", "never"]
#: The cache file (under the cache directory) where failed pulls are remembered.
PULL_FAILURES: Final = "pull-failures.json"
#: The alternative every "the engine cannot provide the image" error names.
BWRAP_ALTERNATIVE: Final = (
    "Or run on bubblewrap instead, which needs no image: --backend bwrap "
    '([sandbox] backend = "bwrap"; `jhansi doctor` says whether it works here).'
)


# ------------------------------------------------------------------ identity --


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the sandbox runs as, inside and on the host."""

    uid: int
    gid: int
    """The ids inside the container (``User``)."""
    host_uid: int
    host_gid: int
    """The ids that own on the host what the sandbox writes."""
    userns_mode: str | None
    """``keep-id`` for rootless Podman run by the invoking user."""
    engine_uid: int | None
    """The host uid that opens the bind sources, when it is neither root nor the invoker."""
    how: str
    """One line for the record."""


def _subordinate_start(user: str | int, path: Path = Path("/etc/subuid")) -> int | None:
    """The first id of ``user``'s subordinate range (name or uid), if it has one."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == str(user):
            return int(fields[1])
    return None


def _username(uid: int) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def sandbox_identity(
    engine: EngineInfo,
    uid: int,
    gid: int,
    *,
    invoker_uid: int | None = None,
    invoker_gid: int | None = None,
    root_id: int = ROOT_SANDBOX_HOST_UID,
) -> Identity:
    """Who the sandbox is for ``engine`` when ``invoker_uid`` runs jhansi (see the module doc).

    ``uid``/``gid`` are the spec's (what a sandbox is when nothing forces otherwise);
    ``root_id`` the host id root's sandbox runs as on a rootful engine (its own:
    :func:`~jhansi.sandbox.interface.spec_root_id`).
    """
    me = os.getuid() if invoker_uid is None else invoker_uid
    my_gid = os.getgid() if invoker_gid is None else invoker_gid
    identity: Identity
    if engine.name == "podman" and engine.rootless and engine.uid_map:
        owner = engine.engine_uid
        if owner == me:
            identity = Identity(
                me, my_gid, me, my_gid, "keep-id", None, f"uid {me} (yours, Podman keep-id)"
            )
        else:
            host_uid = map_id(engine.uid_map, uid)
            host_gid = map_id(engine.gid_map or engine.uid_map, gid)
            if host_uid is None or host_gid is None:
                raise SandboxError(
                    f"rootless Podman (user {_username(owner or 0) or owner}) has no host uid "
                    f"for the sandbox's uid {uid}",
                    hint="Give the engine's user a subordinate uid range (`usermod "
                    "--add-subuids 100000-165535 USER`), then `podman system migrate`.",
                )
            identity = Identity(
                uid,
                gid,
                host_uid,
                host_gid,
                None,
                owner,
                f"uid {uid} (host uid {host_uid} of rootless Podman's user "
                f"{_username(owner or 0) or owner})",
            )
    elif engine.rootless:
        # Rootless Docker: container root is the daemon's user, 1.. its subordinate range.
        owner_name = _username(me) or str(me)
        start = _subordinate_start(owner_name) or _subordinate_start(me)
        if start is None:
            raise SandboxError(
                f"rootless Docker: cannot tell which host uid the sandbox's uid {uid} is "
                f"(no /etc/subuid range for {owner_name})",
                hint="Use rootless Podman, rootful Docker, or the bwrap backend.",
            )
        host = start + uid - 1
        identity = Identity(
            uid, gid, host, host, None, None, f"uid {uid} (host uid {host}, rootless Docker)"
        )
    elif any("name=userns" in s for s in engine.security_options):
        start = _subordinate_start("dockremap")
        if start is None:
            raise SandboxError(
                "the engine remaps user namespaces (userns-remap) but /etc/subuid has no "
                "range for dockremap, so jhansi cannot tell who owns the sandbox's files",
                hint="Use the default userns-remap user (dockremap), or the bwrap backend.",
            )
        gid_start = _subordinate_start("dockremap", Path("/etc/subgid")) or start
        identity = Identity(
            uid,
            gid,
            start + uid,
            gid_start + gid,
            None,
            None,
            f"uid {uid} (host uid {start + uid}, userns-remap)",
        )
    elif me == 0:
        # Not the spec's 1000 (often a person's account, whose processes could trace the
        # container's): the id no one holds, the same bwrap gives root's sandboxes.
        check_dedicated_range(ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN)
        identity = Identity(
            root_id,
            root_id,
            root_id,
            root_id,
            None,
            None,
            f"uid {root_id} (this sandbox's own host id, which no account holds)",
        )
    else:
        identity = Identity(me, my_gid, me, my_gid, None, None, f"uid {me} (yours)")
    if identity.uid == 0:
        raise SandboxError(
            "the sandbox would run as root, which jhansi never does",
            hint="Run jhansi as an unprivileged user, or use rootful Docker as root.",
        )
    return identity


# ------------------------------------------------------------ host-side files --


def _groups_of(uid: int, gid: int) -> set[int]:
    name = _username(uid)
    if name is None:
        return {gid}
    try:
        return set(os.getgrouplist(name, gid))
    except OSError:
        return {gid}


def _permits(st: os.stat_result, uid: int, gids: set[int], want: int) -> bool:
    """Whether ``uid`` (in ``gids``) has ``want`` (``os.R_OK|W_OK|X_OK`` bits) by mode bits.

    ACLs are not read: a directory reachable only through an ACL is reported
    unreachable, which errs on the side of a clear message.
    """
    if uid == 0:
        return True
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _check_traversable(path: Path, uid: int, who: str) -> None:
    """:class:`SandboxError` unless ``uid`` can reach ``path`` (search every parent).

    What a rootless engine needs to bind ``path``: its processes are root only
    inside their user namespace, so on files owned by ids outside it (root's,
    the invoking user's) plain mode bits apply.
    """
    gids = _groups_of(uid, uid)
    for parent in reversed(path.absolute().parents):
        if not _permits(parent.stat(), uid, gids, os.X_OK):
            raise SandboxError(
                f"{who} cannot read {parent}, so it cannot mount {path}",
                hint=f"Let it through (`chmod o+x {parent}`), or keep the project, the sandbox "
                "home and jhansi's data in directories that user can reach.",
            )


@contextmanager
def _mask_sources(needed: bool) -> Iterator[tuple[Path, Path] | None]:
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


# -------------------------------------------------------------- the container --


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


def _owner_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ("" when it is not running)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = raw.rsplit(")", 1)[-1].split()
    # fields[0] is the state (field 3); starttime is field 22.
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return ""
    return fields[19]


def owner_labels() -> dict[str, str]:
    """The labels that let :meth:`DockerBackend.prune` tell whether a run's owner is alive."""
    pid = os.getpid()
    return {
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_START: _owner_start(pid),
        LABEL_OWNER_HOST: socket.gethostname(),
    }


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


def _safe_name(run_id: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", run_id).strip("-.") or "run"
    return f"jhansi-{slug[:40]}-{os.urandom(3).hex()}"


# ------------------------------------------------------------------- backend --


# -------------------------------------------------- how the sandbox ended --

#: The in-sandbox bootstrap this backend can ask for an end marker.
_ENTRY_NAME: Final = "/entry.py"


def with_end_marker(argv: Sequence[str], token: str) -> list[str] | None:
    """``argv`` with ``--end-marker token`` given to jhansi's bootstrap (``None``: not one).

    Only a command that runs ``entry.py`` (not, say, the interpreter probe) writes the
    marker, so only then is its absence meaningful.
    """
    words = list(argv)
    if not words or words[0] != PYTHON:
        return None
    for i, word in enumerate(words[1:5], start=1):
        if word.endswith(_ENTRY_NAME):
            return [*words[: i + 1], "--end-marker", token, *words[i + 1 :]]
        if not word.startswith("-"):
            return None
    return None


@dataclass(frozen=True, slots=True)
class ScriptEnd:
    """How the script ended, as jhansi's bootstrap saw it (the end marker)."""

    kind: Literal["exit", "signal"]
    number: int


class EndMarkerFilter:
    """Takes the bootstrap's end marker out of the stderr stream, wherever frames split it.

    The marker is ``\\0jhansi-end:TOKEN:KIND:N\\0``. Bytes that may be the start of
    one are held back until the next data (or :meth:`flush`) shows what they are, so
    neither the terminal nor the record ever sees it. The last marker wins: the
    bootstrap writes its own after everything the script wrote.
    """

    #: How long a marker's tail (``exit:N``) may be before the bytes are not one.
    _MAX_TAIL: Final = 24

    def __init__(self, token: str) -> None:
        self._needle = b"\0jhansi-end:" + token.encode("ascii") + b":"
        self._held = b""
        self.end: ScriptEnd | None = None

    def feed(self, data: bytes) -> bytes:
        """What of ``data`` (after what was held) can be passed on now."""
        buf = self._held + data
        out = bytearray()
        needle = self._needle
        while True:
            at = buf.find(needle)
            if at < 0:
                keep = 0
                for size in range(min(len(needle) - 1, len(buf)), 0, -1):
                    if buf.endswith(needle[:size]):
                        keep = size
                        break
                out += buf[: len(buf) - keep]
                self._held = buf[len(buf) - keep :]
                return bytes(out)
            out += buf[:at]
            rest = buf[at + len(needle) :]
            close = rest.find(b"\0", 0, self._MAX_TAIL + 1)
            if close < 0:
                if len(rest) <= self._MAX_TAIL:
                    self._held = buf[at:]
                    return bytes(out)
                out += buf[at : at + 1]  # not a marker: pass its first byte, look again
                buf = buf[at + 1 :]
                continue
            end = _parse_end(rest[:close])
            if end is None:
                out += buf[at : at + 1]
                buf = buf[at + 1 :]
                continue
            self.end = end
            buf = rest[close + 1 :]

    def flush(self) -> bytes:
        """Whatever is still held (the stream ended inside something that was no marker)."""
        held, self._held = self._held, b""
        return held


def _parse_end(tail: bytes) -> ScriptEnd | None:
    kind, _, number = tail.partition(b":")
    if kind not in (b"exit", b"signal") or not number.isdigit():
        return None
    return ScriptEnd("exit" if kind == b"exit" else "signal", int(number))


def runtime_name(runtime: str) -> str:
    """The runtime as a user knows it, for messages."""
    return f"the gVisor runtime ({runtime})" if is_gvisor(runtime) else f"the runtime ({runtime})"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished container means for the run (see :func:`interpret_exit`)."""

    status: ExecStatus
    exit_code: int | None
    signal: int | None
    error: str = ""


#: The words every "the runtime ended the sandbox" error carries (the CLI's hint keys on it).
RUNTIME_ENDED: Final = "ended the sandbox before the script finished"


def interpret_exit(
    code: int, *, end: ScriptEnd | None, expected_end: bool, oom_killed: bool, runtime: str
) -> Outcome:
    """The status of a container that exited with ``code`` (not timed out).

    With ``expected_end`` (the bootstrap was asked for its end marker), a missing
    marker means the script did not end by itself: whatever ``code`` is, it is the
    runtime's or the engine's (gVisor's kernel exits 2 when the host refuses it a
    thread; a container killed from outside reports 137), never the script's. That
    is an engine error naming the runtime, unless the memory cgroup killed it (then
    the memory limit is the reason). A forged marker gains the script nothing: it can
    choose its own exit status anyway.
    """
    signal = code - 128 if 128 < code < 160 else None
    if expected_end and end is None:
        if oom_killed:
            return Outcome(ExecStatus.KILLED_OOM, code, signal or _SIGKILL)
        how = f"killed by signal {signal}" if signal else f"exit status {code}"
        why = (
            "it exited 2, as gVisor's kernel does when the host refuses it a thread or "
            "process (the container's pids limit)"
            if is_gvisor(runtime) and code == 2
            else f"{how} from the runtime or the engine, not from the script"
        )
        return Outcome(
            ExecStatus.ENGINE_ERROR,
            None,
            None,
            f"{runtime_name(runtime)} {RUNTIME_ENDED}: {why}",
        )
    if code == 0:
        return Outcome(ExecStatus.SUCCEEDED, 0, None)
    if oom_killed:
        return Outcome(ExecStatus.KILLED_OOM, code, signal or _SIGKILL)
    return Outcome(ExecStatus.FAILED, code, signal)


class _Pump:
    """Copies the attached output to the sink and the tails (in its own thread)."""

    def __init__(
        self,
        attachment: Any,
        output: OutputSink,
        limit: int,
        marker: EndMarkerFilter | None = None,
    ) -> None:
        self.attachment = attachment
        self.output: OutputSink | None = output
        self.tails = {"stdout": TailBuffer(limit), "stderr": TailBuffer(limit)}
        self.marker = marker
        """Takes the bootstrap's end marker out of stderr, when it was asked for one."""
        self.error: BaseException | None = None
        self.closing = False
        """Set before the connection is dropped on purpose (Ctrl-C, a stuck stream)."""
        self.thread = threading.Thread(target=self._run, name="jhansi-output", daemon=True)

    def _deliver(self, stream: Stream, data: bytes) -> None:
        if not data:
            return
        self.tails[stream].feed(data)
        if self.output is not None:
            try:
                self.output.write(stream, data)
            except Exception:
                # A sink that fails (a closed pipe) stops getting output;
                # the tails still keep it for the record.
                _log().debug("output sink failed", exc_info=True)
                self.output = None

    def _run(self) -> None:
        try:
            for stream, data in self.attachment.frames():
                if stream == "stderr" and self.marker is not None:
                    data = self.marker.feed(data)
                self._deliver(stream, data)
        except (OSError, ValueError) as exc:
            # The record keeps what arrived; say why the rest is missing.
            self.error = exc
            if not self.closing:
                _log().warning("the sandbox's output stream broke: %s", exc)
        finally:
            if self.marker is not None:
                self._deliver("stderr", self.marker.flush())


def _feed_stdin(attachment: Any, stdin: BinaryIO) -> None:
    read = getattr(stdin, "read1", stdin.read)
    try:
        while data := read(65536):
            attachment.send(data)
    except (OSError, ValueError):
        pass
    finally:
        attachment.close_stdin()


def _engine_error(message: str, started: float | None = None) -> ExecResult:
    empty = OutputTail(b"", 0, False)
    duration = 0 if started is None else int((time.monotonic() - started) * 1000)
    return ExecResult(
        status=ExecStatus.ENGINE_ERROR,
        exit_code=None,
        signal=None,
        duration_ms=duration,
        stdout=empty,
        stderr=empty,
        error=message,
    )


class _Discard:
    """An output sink that keeps nothing (the result's tails keep what is needed)."""

    def write(self, stream: Stream, data: bytes) -> None:
        """Dropped."""


class DockerBackend(Backend):
    """Runs sandboxes as containers of a Docker Engine API endpoint (Docker or Podman).

    ``pull`` decides what happens when the spec's image is not in the engine:
    ``missing`` pulls it (reporting through ``on_pull``), ``never`` refuses with
    the command that would fetch it.
    """

    name = "docker"

    def __init__(
        self,
        client: EngineClient,
        engine: EngineInfo,
        *,
        pull: PullPolicy = "missing",
        on_pull: Callable[[PullProgress], None] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.pull = pull
        self.on_pull = on_pull
        self.cache_dir = cache_dir
        """Where target probes of images are kept (``None``: probe every process)."""
        self._images: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_settings(
        cls,
        engine_url: str | None,
        *,
        pull: PullPolicy = "missing",
        on_pull: Callable[[PullProgress], None] | None = None,
        cache_dir: Path | None = None,
    ) -> DockerBackend:
        """The backend for the first engine that answers (or exactly ``engine_url``)."""
        client, engine = find_engine(engine_url)
        return cls(client, engine, pull=pull, on_pull=on_pull, cache_dir=cache_dir)

    # -- images -----------------------------------------------------------------

    def image(self, image: str, *, skip_pull_failed_within: float = 0) -> dict[str, Any]:
        """The engine's description of ``image``, pulled first if missing and allowed.

        Remembered for the backend's lifetime, so that :meth:`info` and :meth:`run`
        agree on the exact image (the run uses its id, not the tag, which could move).

        A failed pull is remembered in the cache directory. ``skip_pull_failed_within``
        (seconds): when a pull of ``image`` from this engine failed that recently, its
        error is raised again at once instead of pulling, so that ``auto``, which falls
        back to bubblewrap meanwhile, does not wait on an unreachable registry every
        run. The engine is still asked first: an image pulled or loaded since is used.
        """
        found = self._images.get(image)
        if found is not None:
            return found
        found = self.client.image_inspect(image)
        if found is None:
            tool = "podman" if self.engine.name == "podman" else "docker"
            if self.pull == "never":
                raise SandboxError(
                    f"image {image} is not in the engine ({self.engine.description} at "
                    f"{self.engine.url})",
                    hint=f"Fetch it (`{tool} pull {image}`), or pass another with --image. "
                    f"{BWRAP_ALTERNATIVE}",
                )
            if skip_pull_failed_within > 0:
                failed = self._failed_pull(image, skip_pull_failed_within)
                if failed is not None:
                    raise failed
            try:
                self.client.image_pull(image, self.on_pull)
            except SandboxError as exc:
                self._remember_pull(image, exc.message)
                raise SandboxError(exc.message, hint=f"{exc.hint} {BWRAP_ALTERNATIVE}") from None
            self._remember_pull(image, None)
            found = self.client.image_inspect(image)
            if found is None:
                raise SandboxError(
                    f"image {image} is still not in the engine after pulling it",
                    hint=f"Pull it yourself (`{tool} pull {image}`) and check its name. "
                    f"{BWRAP_ALTERNATIVE}",
                )
        self._images[image] = found
        return found

    def _pull_key(self, image: str) -> str:
        return f"{self.engine.url}|{image}"

    def _failed_pulls(self) -> dict[str, Any]:
        if self.cache_dir is None:
            return {}
        try:
            known = json.loads((self.cache_dir / PULL_FAILURES).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return known if isinstance(known, dict) else {}

    def _failed_pull(self, image: str, within: float) -> SandboxError | None:
        """The error of a pull of ``image`` that failed less than ``within`` seconds ago."""
        entry = self._failed_pulls().get(self._pull_key(image))
        if not isinstance(entry, dict):
            return None
        at, error = entry.get("at"), entry.get("error")
        if not isinstance(at, (int, float)) or not isinstance(error, str):
            return None
        now = time.time()
        if not 0 <= now - at < within:
            return None
        when = time.strftime("%H:%M:%S UTC", time.gmtime(at))
        retry = time.strftime("%H:%M:%S UTC", time.gmtime(at + within))
        tool = "podman" if self.engine.name == "podman" else "docker"
        return SandboxError(
            f"{error} (at {when}; not tried again before {retry})",
            hint=f"Pull or load it yourself (`{tool} pull {image}`, `{tool} load`), or insist "
            f"on the engine with --backend docker, which pulls again. {BWRAP_ALTERNATIVE}",
        )

    def _remember_pull(self, image: str, error: str | None) -> None:
        """Note that a pull of ``image`` failed with ``error`` (``None``: it worked)."""
        if self.cache_dir is None:
            return
        from jhansi._cache import write_cache_file

        known = self._failed_pulls()
        key = self._pull_key(image)
        if error is None:
            if key not in known:
                return
            del known[key]
        else:
            known[key] = {"at": time.time(), "error": error}
        write_cache_file(self.cache_dir / PULL_FAILURES, json.dumps(known).encode("utf-8"))

    def target(self, spec: SandboxSpec) -> Target:
        """The image's interpreter, probed in a hardened container once per image id."""
        from jhansi.deps.plan import fallback_stdlib
        from jhansi.deps.target import PROBE_CODE, target_from_probe

        image_id = str(self.image(spec.image).get("Id", spec.image))

        def probe() -> object:
            probe_spec = replace(
                spec,
                run_id=f"{spec.run_id}-probe",
                argv=(PYTHON, "-I", "-S", "-c", PROBE_CODE),
                mounts=(),
                interactive=False,
                # Its own output limit: the run's (--output-limit) may be too small for it.
                limits=replace(
                    spec.limits, timeout=min(spec.limits.timeout, 120.0), output_limit=1 << 22
                ),
            )
            result = self.run(probe_spec, _Discard())
            if result.status is not ExecStatus.SUCCEEDED:
                raise SandboxError(
                    f"cannot tell which Python the image {spec.image} has: "
                    f"{result.error or result.stderr.data.decode(errors='replace')[-300:]}",
                    hint="Use an image with python3 on its PATH (--image).",
                )
            try:
                return json.loads(result.stdout.data)
            except ValueError:
                raise SandboxError(
                    f"the image {spec.image} answered jhansi's interpreter probe with nonsense",
                    hint="Use an image whose python3 is CPython 3.8 or newer (--image).",
                ) from None

        data = cached(self.cache_dir, "targets.json", f"{image_id}|{spec.runtime or ''}", probe)
        if not isinstance(data, dict):
            raise SandboxError(f"the image {spec.image} answered jhansi's probe with nonsense")
        return target_from_probe(data, fallback_stdlib())

    def info(self, spec: SandboxSpec) -> BackendInfo:
        """Engine, version, rootless, url, runtime, image and its digest."""
        found = self.image(spec.image)
        repo_digests = [str(d) for d in found.get("RepoDigests") or ()]
        details = {
            "engine": self.engine.name,
            "engine_version": self.engine.version,
            "rootless": "true" if self.engine.rootless else "false",
            "url": self.engine.url,
            "runtime": spec.runtime or self.engine.default_runtime or "runc",
            "image": spec.image,
            "image_digest": str(found.get("Id", "")),
        }
        if repo_digests:
            details["image_repo_digests"] = " ".join(sorted(repo_digests))
        return BackendInfo("docker", details)

    # -- running ----------------------------------------------------------------

    def _check_runtime(self, spec: SandboxSpec) -> None:
        if spec.runtime and self.engine.runtimes and spec.runtime not in self.engine.runtimes:
            raise SandboxError(
                f"the runtime {spec.runtime!r} is not registered with {self.engine.description}",
                hint=f"Register {spec.runtime} in the engine's configuration (Docker: "
                '/etc/docker/daemon.json "runtimes") and restart it, or unset [sandbox] runtime.',
            )

    def reaches_host_sockets(self, runtime: str | None, socket: Path | None = None) -> bool:
        """False where the engine's user (another unprivileged user) cannot reach
        ``socket``, or on a gVisor runtime registered without ``--host-uds=open`` (asks
        the engine for the runtime's arguments only then, so other runs cost no call)."""
        owner = self.engine.engine_uid
        if socket is not None and owner is not None and owner not in (0, os.getuid()):
            try:
                _check_traversable(socket, owner, "the engine's user")
            except (SandboxError, OSError):
                return False
        chosen = runtime or self.engine.default_runtime or "runc"
        if not is_gvisor(chosen):
            return True
        registered = (self.client.info().get("Runtimes") or {}).get(chosen) or {}
        return gvisor_connects_host_sockets(registered.get("runtimeArgs") or ())

    def _check_egress(self, spec: SandboxSpec) -> None:
        """Refuse egress (a bound unix socket) on a gVisor runtime that cannot connect to it.

        Asks the engine for the runtime's arguments only when both apply, so other
        runs cost no extra call.
        """
        if not any(m.kind == "socket" for m in spec.mounts):
            return
        runtime = spec.runtime or self.engine.default_runtime or "runc"
        if not self.reaches_host_sockets(runtime):
            raise SandboxError(
                f"gVisor (runtime {runtime!r}) cannot reach the egress proxy: it is registered "
                "without --host-uds=open, so the sandbox cannot connect to the proxy's socket",
                hint=f'Add "--host-uds=open" to the runtimeArgs of {runtime} in '
                "/etc/docker/daemon.json and reload dockerd (SIGHUP), or run this script with "
                "runc or bwrap, or without network access.",
            )

    @staticmethod
    def _engine_user(identity: Identity) -> tuple[int, str] | None:
        """The engine's own user, when it is another unprivileged user than jhansi's."""
        uid = identity.engine_uid
        if uid is None or uid in (0, os.getuid()):
            return None
        name = _username(uid)
        return uid, (
            f"the engine's user ({name}, uid {uid})" if name else f"the engine's user (uid {uid})"
        )

    def _prepare_mounts(self, spec: SandboxSpec, identity: Identity) -> None:
        """Check (and for the home, fix) what the sandbox and the engine can reach.

        The sandbox's home is jhansi's own directory: it is handed to the sandbox's
        host uid. Anything else is the user's: it is checked, never changed, and a
        :class:`SandboxError` says what is missing (before a container exists, and
        in words rather than as the runtime's "permission denied").
        """
        me = os.getuid()
        engine_user = self._engine_user(identity)
        for mount in spec.mounts:
            if mount.kind == "empty":
                continue
            if mount.kind == "overlay" and mount.overlay is not None:
                self._ready_overlay(mount, identity)
                continue
            source = mount.source
            if not source.exists():
                raise SandboxError(
                    f"cannot mount {source} at {mount.target}: it does not exist",
                    hint="Create it, or check the path.",
                )
            if engine_user is not None:
                _check_traversable(source, *engine_user)
            if mount.owned and source.is_dir():
                hand_over(source, identity.host_uid, identity.host_gid)
            elif identity.host_uid != me:
                write = not mount.read_only or mount.kind == "socket"
                st = source.stat()
                want = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
                want |= os.W_OK if write else 0
                if not _permits(st, identity.host_uid, {identity.host_gid}, want):
                    raise SandboxError(
                        f"the sandbox's user (host uid {identity.host_uid}) cannot "
                        f"{'write' if write else 'read'} {source} (mounted at {mount.target})",
                        hint=f"Make it {'writable' if write else 'readable'} for that uid "
                        f"(`chmod o+{'rwx' if write else 'rX'} {source}`).",
                    )

    def _ready_overlay(self, mount: Mount, identity: Identity) -> None:
        """Hand an overlay's upper and work directories to the sandbox's host uid (and open
        the project's directories for it when it is not their owner)."""
        from jhansi.sandbox.overlay import ready_upper
        from jhansi.sandbox.sources import check_own

        overlay = mount.overlay
        if overlay is None:  # pragma: no cover - the caller checked
            return
        if identity.host_uid != os.getuid():
            st = mount.source.stat()
            if not _permits(st, identity.host_uid, {identity.host_gid}, os.R_OK | os.X_OK):
                raise SandboxError(
                    f"the sandbox's user (host uid {identity.host_uid}) cannot read "
                    f"{mount.source} (mounted at {mount.target})",
                    hint=f"Make it readable for that uid (`chmod o+rX {mount.source}`).",
                )
        check_own(overlay.upper.parent, None)
        for directory in (overlay.upper, overlay.work):
            check_own(directory, None)
            hand_over(directory, identity.host_uid, identity.host_gid)
        ready_upper(overlay, mount.source, identity.host_uid, identity.host_gid)

    def copy_on_write(self, spec: SandboxSpec, where: Path, project: Path) -> CopyOnWrite | str:
        """An overlay volume of the engine's local driver (rootful Docker only), tried once
        per engine, runtime and file system of ``where`` (remembered)."""
        if self.engine.name == "podman":
            return (
                "Podman's Docker-compatible API mounts a plain volume where an overlay was "
                "asked for, and its own overlay (:O) takes one lower layer and re-owns the "
                "upper one"
            )
        if self.engine.rootless:
            return "a rootless engine cannot mount an overlay of the host's directories"
        try:
            overlay_options(Overlay((where, project), where, where))
        except SandboxError as exc:
            return exc.message
        runtime = spec.runtime or self.engine.default_runtime or "runc"
        try:
            device = where.stat().st_dev
        except OSError as exc:
            return f"cannot use {where}: {exc.strerror or exc}"
        key = f"overlay:{self.engine.url}:{runtime}:{device}|{self.engine.version}"
        problem = cached(
            self.cache_dir, "overlay.json", key, lambda: self._try_overlay(spec, where)
        )
        if problem:
            return f"{self.engine.description} could not mount an overlay volume ({problem})"
        how = "gVisor's gofer serves it" if is_gvisor(runtime) else runtime
        return CopyOnWrite(
            f"overlayfs volume mounted by {self.engine.name} {self.engine.version}'s local "
            f"driver (as root, on the engine's host; {how})",
            xattr="trusted",
        )

    def _try_overlay(self, spec: SandboxSpec, where: Path) -> str:
        """Run a container with a small overlay; ``""`` when it worked, else why not."""
        from jhansi.sandbox.overlay import OVERLAY_PROBE, probe_layers, remove_probe

        dirs = probe_layers(where, "trusted")
        try:
            probe = replace(
                spec,
                run_id=f"{spec.run_id}-overlay",
                argv=(PYTHON, "-I", "-S", "-c", OVERLAY_PROBE),
                mounts=(dirs.mount,),
                interactive=False,
                limits=replace(spec.limits, timeout=min(spec.limits.timeout, 120.0)),
            )
            try:
                result = self.run(probe, DiscardOutput())
            except SandboxError as exc:
                return exc.message
            if result.status is not ExecStatus.SUCCEEDED:
                tail = result.stderr.data.decode("utf-8", "replace").strip().splitlines()
                return result.error or (tail[-1] if tail else f"exit {result.exit_code}")
            return dirs.check()
        finally:
            remove_probe(dirs)

    def prune(self) -> int:
        """Remove containers of this host's jhansi runs whose owner process is gone."""
        host = socket.gethostname()
        removed = 0
        for container in self.client.containers(
            labels=[LABEL_OWNER_PID, f"{LABEL_OWNER_HOST}={host}"]
        ):
            labels = container.get("Labels") or {}
            if labels.get(LABEL_OWNER_HOST) != host:
                continue
            try:
                pid = int(labels.get(LABEL_OWNER_PID, ""))
            except ValueError:
                continue
            start = _owner_start(pid)
            recorded = labels.get(LABEL_OWNER_START, "")
            if start and (not recorded or recorded == start):
                continue  # the owner is alive
            self.client.container_remove(str(container["Id"]), force=True)
            removed += 1
        return removed

    def run(
        self,
        spec: SandboxSpec,
        output: OutputSink,
        *,
        stdin: BinaryIO | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> ExecResult:
        """Run ``spec`` in a new container, streaming its output; always remove it.

        ``before_start`` runs once the container is created, before it is started.
        """
        spec = replace(spec, argv=tuple(without_gate(spec.argv)))
        # The bootstrap's end marker tells the script's own end from the sandbox's.
        token = os.urandom(12).hex()
        marked = with_end_marker(spec.argv, token)
        if marked is not None:
            spec = replace(spec, argv=tuple(marked))
        marker = EndMarkerFilter(token) if marked is not None else None
        try:
            self.prune()
        except SandboxError as exc:
            _log().debug("prune failed: %s", exc)
        self._check_runtime(spec)
        self._check_egress(spec)
        image = self.image(spec.image)
        identity = sandbox_identity(self.engine, spec.uid, spec.gid, root_id=spec_root_id(spec))
        self._prepare_mounts(spec, identity)
        needs_masks = any(m.kind == "empty" for m in spec.mounts)
        with _mask_sources(needs_masks) as masks:
            engine_user = self._engine_user(identity)
            if masks is not None and engine_user is not None:
                _check_traversable(masks[0], *engine_user)
            config = container_config(
                spec,
                image=str(image["Id"]),
                engine=self.engine,
                identity=identity,
                mounts=engine_mounts(
                    spec.mounts,
                    masks,
                    opens_targets=is_gvisor(spec.runtime or self.engine.default_runtime or ""),
                ),
                labels={LABEL_RUN_ID: spec.run_id, **owner_labels()},
            )
            container: str | None = None
            try:
                try:
                    container = self.client.container_create(config, name=_safe_name(spec.run_id))
                except SandboxError as exc:
                    return _engine_error(exc.message)
                if before_start is not None:
                    before_start()
                result = self._run_container(container, spec, output, stdin, marker)
            finally:
                if container is not None:
                    self._remove(container)
        return ExecResult(
            status=result.status,
            exit_code=result.exit_code,
            signal=result.signal,
            duration_ms=result.duration_ms,
            stdout=result.stdout,
            stderr=result.stderr,
            error=result.error,
            enforcement=enforcement(spec, self.engine, identity),
        )

    def _remove(self, container: str) -> None:
        try:
            self.client.container_remove(container, force=True)
        except SandboxError as exc:
            # prune() removes it on a later run, once this process is gone.
            _log().warning("could not remove container %s: %s", container[:12], exc.message)

    def _run_container(
        self,
        container: str,
        spec: SandboxSpec,
        output: OutputSink,
        stdin: BinaryIO | None,
        marker: EndMarkerFilter | None = None,
    ) -> ExecResult:
        interactive = spec.interactive and stdin is not None
        try:
            attachment = self.client.attach(container, stdin=spec.interactive)
        except SandboxError as exc:
            return _engine_error(exc.message)
        pump = _Pump(attachment, output, spec.limits.output_limit, marker)
        started = time.monotonic()
        try:
            pump.thread.start()
            try:
                self.client.container_start(container)
            except SandboxError as exc:
                return _engine_error(exc.message, started)
            started = time.monotonic()
            if interactive and stdin is not None:
                threading.Thread(
                    target=_feed_stdin, args=(attachment, stdin), name="jhansi-stdin", daemon=True
                ).start()
            elif spec.interactive:
                attachment.close_stdin()
            try:
                waited = self.client.container_wait(container, timeout=spec.limits.timeout)
                timed_out = waited is None
                if timed_out:
                    self.client.container_kill(container)
                    waited = self.client.container_wait(container, timeout=_KILL_GRACE)
            except SandboxError as exc:
                return _engine_error(exc.message, started)
            duration_ms = int((time.monotonic() - started) * 1000)
            pump.thread.join(_OUTPUT_DRAIN)
        finally:
            pump.closing = True
            attachment.close()
        pump.thread.join(1)
        stdout, stderr = pump.tails["stdout"].tail(), pump.tails["stderr"].tail()

        def result(
            status: ExecStatus, code: int | None, signal: int | None, error: str = ""
        ) -> ExecResult:
            return ExecResult(status, code, signal, duration_ms, stdout, stderr, error)

        if timed_out:
            return result(ExecStatus.TIMED_OUT, None, _SIGKILL)
        if waited is None:
            return result(ExecStatus.ENGINE_ERROR, None, None, "the killed container did not stop")
        code = int(waited.get("StatusCode", -1))
        wait_error = (waited.get("Error") or {}).get("Message") if waited.get("Error") else ""
        if wait_error or code < 0:
            return result(
                ExecStatus.ENGINE_ERROR, None, None, str(wait_error or f"exit status {code}")
            )
        expected_end = marker is not None and not pump.thread.is_alive()
        end = marker.end if marker is not None else None
        oom_killed = False
        if code != 0 or (expected_end and end is None):
            try:
                state = self.client.container_inspect(container).get("State") or {}
            except SandboxError:
                state = {}
            oom_killed = bool(state.get("OOMKilled"))
        runtime = spec.runtime or self.engine.default_runtime or "runc"
        outcome = interpret_exit(
            code, end=end, expected_end=expected_end, oom_killed=oom_killed, runtime=runtime
        )
        return result(outcome.status, outcome.exit_code, outcome.signal, outcome.error)
