"""The contract between the runner and the sandbox backends.

The runner decides everything about a run and writes it down in a frozen
:class:`SandboxSpec`; a :class:`Backend` only carries it out (bubblewrap, or a
Docker Engine API endpoint) and returns a frozen :class:`ExecResult`. A backend
never loosens the spec: anything it cannot enforce it either refuses with a
:class:`~jhansi.errors.SandboxError` or reports in
:attr:`ExecResult.enforcement`, so that the record tells the truth.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Literal, Protocol

if TYPE_CHECKING:
    from jhansi.deps.target import Target

#: ``argv[0]`` of a spec that runs the sandbox's Python interpreter: the backend
#: puts its interpreter there (the image's ``python3``; the host interpreter for bwrap).
PYTHON: Final = "<python>"
#: Where the project is mounted, and the working directory of every run.
WORKDIR: Final = "/work"
#: The sandbox user's home (a named sandbox's persistent directory is mounted here).
HOME: Final = "/home/sandbox"
#: Where the in-sandbox bootstrap (``entry.py``) is mounted.
ENTRY_DIR: Final = "/opt/jhansi"
#: The unprivileged identity inside every sandbox.
SANDBOX_UID: Final = 1000
SANDBOX_GID: Final = 1000
SANDBOX_USER: Final = "sandbox"
#: When root runs jhansi, each sandbox runs as a host uid (and gid) of its own from
#: this range, never root: bwrap drops to it before it makes the sandbox (inside, the
#: sandbox is still :data:`SANDBOX_UID`) and rootful Docker runs the container as it,
#: so that one sandbox's home works on both. A range no account, group or subordinate
#: range holds (checked: :func:`jhansi.sandbox.ownership.check_dedicated_range`), and
#: one id per sandbox: any process of a sandbox's host uid may signal, trace or enter
#: it (``/proc/PID/root``), so a setuid file one sandbox leaves behind must not open
#: another sandbox to whoever runs it.
ROOT_SANDBOX_ID_BASE: Final = 2_000_000_000
ROOT_SANDBOX_ID_SPAN: Final = 1 << 24
#: The range's first id (what a spec without a sandbox name would hash to is random).
ROOT_SANDBOX_HOST_UID: Final = ROOT_SANDBOX_ID_BASE
ROOT_SANDBOX_HOST_GID: Final = ROOT_SANDBOX_ID_BASE


def root_sandbox_id(name: str) -> int:
    """The host uid and gid of the sandbox ``name`` when root runs jhansi (stable for a
    named sandbox, so its home keeps its owner; an ephemeral name is random, so is its
    id). Two of the 16 million ids collide only by chance."""
    import hashlib

    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return ROOT_SANDBOX_ID_BASE + int.from_bytes(digest[:4], "big") % ROOT_SANDBOX_ID_SPAN


def spec_root_id(spec: SandboxSpec) -> int:
    """:func:`root_sandbox_id` for the sandbox ``spec`` runs in (its ``jhansi.sandbox``
    label; a spec without one is a throwaway: its run id)."""
    return root_sandbox_id(spec.labels.get("jhansi.sandbox") or spec.run_id)


Stream = Literal["stdout", "stderr"]

#: Variables through which numerical libraries (OpenMP, OpenBLAS, MKL, numexpr,
#: Accelerate) choose how many threads to start.
THREAD_ENV: Final = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def thread_env(env: Mapping[str, str], cpus: float) -> dict[str, str]:
    """``env`` plus the :data:`THREAD_ENV` variables set to ``ceil(cpus)``, unless ``env``
    sets them already (``--env`` wins).

    Without them a numerical library starts one thread per *host* CPU, which a CPU
    quota then throttles: what a CPU-limited container should tell its programs.
    """
    count = str(max(1, math.ceil(cpus)))
    return {**dict.fromkeys(THREAD_ENV, count), **env}


def threads_enforcement(spec: SandboxSpec) -> str:
    """What the record says about :func:`thread_env` for ``spec``."""
    count = max(1, math.ceil(spec.limits.cpus))
    ours = [k for k in THREAD_ENV if k not in spec.env]
    given = [k for k in THREAD_ENV if k in spec.env]
    text = f"{', '.join(ours)}={count} (the CPU limit, rounded up)" if ours else ""
    if given:
        text += ("; " if text else "") + f"{', '.join(given)} as given by --env"
    return text


class ExecStatus(StrEnum):
    """How a sandboxed process ended."""

    SUCCEEDED = "succeeded"
    """Exited 0."""
    FAILED = "failed"
    """Exited non-zero, or was killed by a signal it caused itself."""
    TIMED_OUT = "timed_out"
    """Ran past the wall-clock timeout; the whole sandbox was killed."""
    KILLED_OOM = "killed_oom"
    """Killed by the kernel for exceeding the memory limit."""
    ENGINE_ERROR = "engine_error"
    """The engine or bwrap failed; the script may not have run at all."""


XattrNamespace = Literal["user", "trusted"]
"""Where an overlay keeps its own attributes (opaque directories): ``user.overlay.*``
when it is mounted in a user namespace (bwrap, ``userxattr``), ``trusted.overlay.*``
when root mounts it (Docker's local volume driver)."""


@dataclass(frozen=True, slots=True)
class Overlay:
    """A copy-on-write view: read-only ``lower`` directories under a writable ``upper``.

    What the sandbox writes at the mount's target lands in ``upper`` (the sandbox's
    own directory, handed to its host uid like a home); ``lower`` is never written.
    ``work`` is overlayfs's scratch directory, beside ``upper`` on one file system.
    """

    lower: tuple[Path, ...]
    """Topmost first: the mask layer (stand-ins for masked paths), then the project."""
    upper: Path
    work: Path
    xattr: XattrNamespace = "user"


@dataclass(frozen=True, slots=True)
class Mount:
    """A host path visible in the sandbox.

    ``kind``: ``bind`` makes ``source`` appear at ``target``; ``empty`` hides
    whatever is at ``target`` behind an empty read-only file (when
    ``source`` is a file) or directory (masking secret-looking paths);
    ``socket`` binds a unix socket (egress); ``overlay`` mounts :attr:`overlay`
    (``source`` is its bottom lower layer, the project).

    ``owned``: the directory belongs to the sandbox (its home, a writable layer):
    before the run the backend hands it, and everything in it, to the host uid the
    sandbox runs as (:func:`jhansi.sandbox.ownership.hand_over`), so that runs on
    different backends in one sandbox see and write the same files. An overlay's
    ``upper`` and ``work`` are always handed over; its lower layers never are.
    """

    source: Path
    target: str
    read_only: bool = True
    kind: Literal["bind", "empty", "socket", "overlay"] = "bind"
    owned: bool = False
    overlay: Overlay | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits; every one is enforced by the kernel (how is in the result)."""

    memory: int
    """Bytes of memory (no swap beyond it)."""
    cpus: float
    pids: int
    tmp_size: int
    """Bytes of the tmpfs at /tmp."""
    timeout: float
    """Wall-clock seconds before the whole sandbox is killed."""
    output_limit: int
    """Bytes kept (the tail) of each of stdout and stderr."""


GATE_FD = "{jhansi-gate-fd}"
"""In a spec's ``argv``, the value of a ``--gate`` option: the number of a descriptor
from which the command reads one byte before it runs any of the script's code
(``entry.py --gate FD``). The bwrap backend starts the sandbox, then records the run
(:meth:`Backend.run`'s ``before_start``) while it boots, then opens the gate; a
backend that cannot hand a descriptor over drops the option."""


def without_gate(argv: tuple[str, ...] | list[str]) -> list[str]:
    """``argv`` without a ``--gate GATE_FD`` option."""
    out: list[str] = []
    skip = False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word == "--gate" and i + 1 < len(argv) and argv[i + 1] == GATE_FD:
            skip = True
            continue
        out.append(word)
    return out


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything about one sandboxed process. Backends carry it out, nothing more."""

    run_id: str
    argv: tuple[str, ...]
    """The command; ``argv[0] == PYTHON`` means the sandbox's interpreter."""
    mounts: tuple[Mount, ...]
    env: Mapping[str, str]
    """The complete environment inside: nothing is inherited from the host."""
    limits: Limits
    image: str
    """The container image (docker backend)."""
    python: Path | None
    """The host interpreter (bwrap backend); it and its standard library are bound read-only."""
    network: Literal["none"] = "none"
    """Only loopback inside; egress (a later issue) goes through a bound unix socket."""
    workdir: str = WORKDIR
    uid: int = SANDBOX_UID
    gid: int = SANDBOX_GID
    labels: Mapping[str, str] = field(default_factory=dict)
    runtime: str | None = None
    """An OCI runtime registered with the engine (``runsc`` = gVisor); docker backend only."""
    interactive: bool = False
    """Forward the ``stdin`` given to :meth:`Backend.run` (``jhansi sandbox shell``)."""


@dataclass(frozen=True, slots=True)
class OutputTail:
    """The last bytes of one output stream, and how much there was in all."""

    data: bytes
    total: int
    truncated: bool


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How a sandboxed process ended, and what it printed."""

    status: ExecStatus
    exit_code: int | None
    signal: int | None
    duration_ms: int
    stdout: OutputTail
    stderr: OutputTail
    error: str = ""
    """For ``ENGINE_ERROR``: what failed, in one line."""
    enforcement: Mapping[str, str] = field(default_factory=dict)
    """How each limit was enforced (``memory: cgroup v1``, ``pids: RLIMIT_NPROC`` …)."""


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What ran the sandbox, for the record: name plus identity details."""

    backend: Literal["docker", "bwrap"]
    details: Mapping[str, str]
    """docker: engine, version, rootless, url, runtime, image, image_digest;
    bwrap: bwrap path, version, origin, python; and ``selected``, why ``auto`` chose
    it (added by the runner, when ``auto`` chose)."""


class OutputSink(Protocol):
    """Receives the sandbox's output live, as it is written."""

    def write(self, stream: Stream, data: bytes) -> None:
        """Called from the backend for every chunk read (possibly from another thread)."""


class DiscardOutput:
    """An output sink that keeps nothing (a probe's result keeps what it needs)."""

    def write(self, stream: Stream, data: bytes) -> None:
        """Dropped."""


class TailBuffer:
    """Keeps the last ``limit`` bytes of a stream and counts all of it (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks = bytearray()
        self._total = 0
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        """Add a chunk."""
        with self._lock:
            self._total += len(data)
            self._chunks += data
            if len(self._chunks) > 2 * self._limit:
                del self._chunks[: len(self._chunks) - self._limit]

    def tail(self) -> OutputTail:
        """The kept bytes."""
        with self._lock:
            data = bytes(self._chunks[-self._limit :]) if self._limit else b""
            return OutputTail(data, self._total, self._total > len(data))


class Backend(ABC):
    """A way to run a :class:`SandboxSpec`."""

    name: str
    selection: str = ""
    """Why ``auto`` chose this backend (recorded with every run); empty when it was named."""

    @abstractmethod
    def info(self, spec: SandboxSpec) -> BackendInfo:
        """Identify what will run ``spec`` (engine and version, image digest, bwrap …)."""

    @abstractmethod
    def target(self, spec: SandboxSpec) -> Target:
        """What interpreter ``spec`` will run on (dependencies are resolved for it)."""

    @abstractmethod
    def run(
        self,
        spec: SandboxSpec,
        output: OutputSink,
        *,
        stdin: BinaryIO | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> ExecResult:
        """Run ``spec`` to the end, streaming output to ``output``.

        ``before_start`` is called once, before any of the command's own code runs
        (after the sandbox is prepared: a backend may boot it meanwhile, held at the
        gate, :data:`GATE_FD`); if it raises, the command never runs, and the
        exception propagates after the clean-up.

        Always cleans up (containers removed, processes killed), also on
        ``KeyboardInterrupt``, which is re-raised afterwards.
        """

    def reaches_host_sockets(self, runtime: str | None, socket: Path | None = None) -> bool:
        """Whether a sandbox (on OCI ``runtime``, if any) can connect to a unix socket
        bound in from the host, as the egress proxy's is (``socket``, when given, is
        that socket: whoever mounts it must be able to reach it)."""
        return True

    def prune(self) -> int:
        """Remove what crashed runs left behind (containers); return how many."""
        return 0

    def copy_on_write(self, spec: SandboxSpec, where: Path, project: Path) -> CopyOnWrite | str:
        """How this backend mounts an ``overlay`` of ``project`` for ``spec`` with its upper
        layer in ``where`` (on its file system), or why it cannot (one line, for the hint).

        A backend that says yes has tried it (once, remembered): a run whose overlay
        fails to mount would fail after it was recorded as started.
        """
        return f"the {self.name} backend has no copy-on-write mounts"


@dataclass(frozen=True, slots=True)
class CopyOnWrite:
    """A backend's way of carrying out an ``overlay`` mount."""

    mechanism: str
    """For the record (``enforcement["work"]``) and the user: what mounts the overlay."""
    xattr: XattrNamespace
    """The namespace of the overlay's own attributes under that mechanism."""
