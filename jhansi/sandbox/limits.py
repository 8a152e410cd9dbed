"""Resource limits for the bubblewrap backend, enforced by the kernel.

bubblewrap has no limits of its own. jhansi puts every bwrap process into a
cgroup of its own when it can make one (as root, or wherever the cgroup tree is
writable), before bwrap runs, so that nothing the sandbox starts can escape it;
otherwise it sets rlimits on bwrap, which every process in the sandbox inherits.
Either way :attr:`RunLimits.enforcement` says, limit by limit, what the kernel
enforces, because the two are not equivalent:

- ``RLIMIT_AS`` bounds each process's address space, not the sandbox's total,
  and an allocation beyond it fails (``MemoryError``) instead of being killed.
- ``RLIMIT_NPROC`` is checked at each user-namespace level: inside the
  sandbox's namespace against the sandbox's own tasks (``prlimit`` sets it
  there), outside against every task of the host uid (so bwrap gets the limit
  plus what that uid already runs). When jhansi runs as root, bwrap runs as the
  unprivileged host uid 1000 (see :mod:`jhansi.sandbox.bwrap`), where the outer
  count would take in every process of that uid on the host (other sandboxes,
  containers, a user of that uid): there jhansi relies on the pids cgroup alone,
  and refuses to run without one rather than pretend that the pids limit holds.
- ``RLIMIT_CPU`` caps CPU seconds per process; it cannot throttle to a number of
  CPUs, which only a cgroup's CPU quota does.

cgroup v1 (each controller its own hierarchy, possibly beside an empty v2 one:
"hybrid") and v2 (one unified hierarchy) are both supported. v1 cgroups are
made under jhansi's own cgroup in each hierarchy, so that limits placed on
jhansi itself still hold; v2 forbids a cgroup with processes from delegating
controllers to its children, so there they are made under a ``jhansi``
subtree at the top of the hierarchy.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import resource
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from jhansi.errors import SandboxError
from jhansi.sandbox.interface import Limits

logger = logging.getLogger("jhansi.sandbox.limits")

#: The name prefix of every cgroup jhansi makes; the owner's pid follows it.
CGROUP_PREFIX = "jhansi-"
#: The v2 subtree (under the top of the unified hierarchy) that holds the run cgroups.
V2_SUBTREE = "jhansi"
CPU_PERIOD_US = 100_000
_CONTROLLERS = ("memory", "pids", "cpu")


# -- where the cgroup hierarchies are ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where jhansi can make cgroups on this machine.

    ``v1`` maps each controller to the directory of this process's own cgroup
    in that controller's hierarchy; ``v2`` is the top of the unified hierarchy
    when it has controllers (absent on a hybrid machine, whose v2 tree is empty).
    """

    v1: dict[str, Path] = field(default_factory=dict)
    v2: Path | None = None


def parse_layout(mountinfo: str, self_cgroup: str) -> CgroupLayout:
    """The layout from the text of ``/proc/self/mountinfo`` and ``/proc/self/cgroup``."""
    own_v1: dict[str, str] = {}
    own_v2: str | None = None
    for line in self_cgroup.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            own_v2 = path
        else:
            for name in controllers.split(","):
                own_v1[name] = path
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or sep < 5:
            continue
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        fstype, options = fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup2":
            if own_v2 is not None and (Path(mountpoint) / "cgroup.controllers").is_file():
                available = (Path(mountpoint) / "cgroup.controllers").read_text().split()
                # A hybrid machine's v2 tree may hold some controller, just not ours.
                if any(c in available for c in _CONTROLLERS):
                    v2 = Path(mountpoint)
        elif fstype == "cgroup":
            for name in _CONTROLLERS:
                if name in options and name in own_v1 and name not in v1:
                    own = own_v1[name]
                    # A bind-mounted subtree: its root is a prefix of our own path.
                    if root != "/" and (own == root or own.startswith(root + "/")):
                        own = own[len(root) :]
                    elif root != "/":
                        continue
                    v1[name] = Path(mountpoint) / own.lstrip("/")
    return CgroupLayout(v1=v1, v2=v2)


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


@cache
def cgroup_layout() -> CgroupLayout:
    """This machine's layout (read once per process)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        self_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return CgroupLayout()
    return parse_layout(mountinfo, self_cgroup)


# -- one run's limits ----------------------------------------------------------------------


class _Cgroup:
    """A cgroup (one directory per hierarchy) that one sandbox runs in."""

    version: int
    join_files: tuple[str, ...] = ("cgroup.procs",)
    """The file the child writes ``0`` to, to join (the first that opens)."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self._procs_fds: list[int] = []

    def paths(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    def open_procs(self) -> None:
        """Open each join file now: the child only writes to them."""
        self._procs_fds = [self._open_join_file(path) for path in self.paths()]

    def _open_join_file(self, path: Path) -> int:
        for name in self.join_files[:-1]:
            with contextlib.suppress(OSError):
                return os.open(path / name, os.O_WRONLY | os.O_CLOEXEC)
        return os.open(path / self.join_files[-1], os.O_WRONLY | os.O_CLOEXEC)

    def join(self) -> None:
        """Move the calling process into the cgroup (runs in the child, before exec)."""
        for fd in self._procs_fds:
            os.write(fd, b"0")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths():
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return found

    def kill(self) -> None:
        """SIGKILL every process in the cgroup."""
        for _ in range(3):  # a process forking while we kill: go round again
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def oom_kills(self) -> int:
        raise NotImplementedError

    def remove(self) -> None:
        """Kill what is left, wait for the cgroup to empty, and remove it."""
        for fd in self._procs_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._procs_fds = []
        deadline = time.monotonic() + 5.0
        remaining = self.paths()
        while remaining:
            self.kill()
            still: list[Path] = []
            for path in remaining:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        logger.warning("cannot remove cgroup %s: %s", path, exc)
                        continue
                    still.append(path)
            remaining = still
            if remaining:
                time.sleep(0.002)


class _CgroupV1(_Cgroup):
    version = 1
    # The child is single-threaded between fork and exec, so moving its one thread
    # (``tasks``) moves the process. Writing ``0`` there skips the kernel's
    # thread-group lock, whose write side waits for an RCU grace period (10-20 ms
    # once per run, measured) that ``cgroup.procs`` always pays.
    join_files = ("tasks", "cgroup.procs")

    def oom_kills(self) -> int:
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        with contextlib.suppress(OSError, ValueError):
            for line in (memory / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0


class _CgroupV2(_Cgroup):
    version = 2

    def kill(self) -> None:
        path = self.paths()[0]
        try:
            (path / "cgroup.kill").write_text("1")
        except OSError:
            super().kill()
            return
        super().kill()  # whatever cgroup.kill has not reaped yet

    def oom_kills(self) -> int:
        path = self.paths()[0]
        with contextlib.suppress(OSError, ValueError):
            for line in (path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0


@dataclass
class RunLimits:
    """The limits of one sandbox run: made before bwrap starts, removed after it ends.

    :meth:`preexec` runs in the forked child just before it execs bwrap: it
    joins the cgroup (so that bwrap and everything it starts are inside from the
    first instruction) and sets the rlimits.
    """

    enforcement: dict[str, str]
    cgroup: _Cgroup | None = None
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)
    command_prefix: list[str] = field(default_factory=list)
    """Run in the sandbox before the command (``prlimit``, to tighten RLIMIT_NPROC there)."""

    def preexec(self) -> None:
        """In the child between fork and exec: join the cgroup, set the rlimits."""
        if self.cgroup is not None:
            self.cgroup.join()
        for which, soft, hard in self.rlimits:
            resource.setrlimit(which, (soft, hard))

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (no-op without one)."""
        if self.cgroup is not None:
            self.cgroup.kill()

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this sandbox."""
        return self.cgroup is not None and self.cgroup.oom_kills() > 0

    def close(self) -> None:
        """Kill what is left in the cgroup and remove it."""
        if self.cgroup is not None:
            self.cgroup.remove()


def _run_name(run_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id)[:40].strip("-.") or "run"
    return f"{CGROUP_PREFIX}{os.getpid()}-{slug}-{os.urandom(3).hex()}"


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _make_v1(
    layout: dict[str, Path], name: str, limits: Limits
) -> tuple[_CgroupV1, dict[str, str]]:
    made: dict[str, Path] = {}
    enforcement: dict[str, str] = {}
    cgroup = _CgroupV1(made)
    try:
        for controller in _CONTROLLERS:
            parent = layout.get(controller)
            if parent is None:
                continue
            path = parent / name
            if path not in made.values():
                path.mkdir(mode=0o755)
            made[controller] = path
        if "memory" in made:
            memory = made["memory"]
            _write(memory / "memory.limit_in_bytes", str(limits.memory))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory))
                swap = "memory.memsw.limit_in_bytes (no swap beyond it)"
            else:
                _write(memory / "memory.swappiness", "0")
                swap = "swappiness 0 (swap is not accounted: no memory.memsw)"
            enforcement["memory"] = (
                f"cgroup v1 memory.limit_in_bytes={limits.memory} and {swap}; "
                "the kernel OOM-kills past it"
            )
        if "pids" in made:
            _write(made["pids"] / "pids.max", str(limits.pids))
            enforcement["pids"] = f"cgroup v1 pids.max={limits.pids} (processes and threads)"
        if "cpu" in made:
            quota = max(1000, round(limits.cpus * CPU_PERIOD_US))
            _write(made["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(made["cpu"] / "cpu.cfs_quota_us", str(quota))
            enforcement["cpu"] = (
                f"cgroup v1 cpu.cfs_quota_us={quota} per cpu.cfs_period_us={CPU_PERIOD_US} "
                f"({limits.cpus:g} CPUs)"
            )
        cgroup.open_procs()
    except BaseException:
        cgroup.remove()
        raise
    return cgroup, enforcement


def _enable_controllers(directory: Path, wanted: list[str]) -> None:
    enabled = (directory / "cgroup.subtree_control").read_text().split()
    missing = [c for c in wanted if c not in enabled]
    if missing:
        _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def _make_v2(root: Path, name: str, limits: Limits) -> tuple[_CgroupV2, dict[str, str]]:
    available = (root / "cgroup.controllers").read_text().split()
    wanted = [c for c in _CONTROLLERS if c in available]
    if not wanted:
        raise OSError(errno.ENOTSUP, "no memory, pids or cpu controller in cgroup v2")
    _enable_controllers(root, wanted)
    base = root / V2_SUBTREE
    base.mkdir(mode=0o755, exist_ok=True)
    _enable_controllers(base, wanted)
    path = base / name
    path.mkdir(mode=0o755)
    cgroup = _CgroupV2(dict.fromkeys(wanted, path))
    enforcement: dict[str, str] = {}
    try:
        if "memory" in wanted:
            _write(path / "memory.max", str(limits.memory))
            swap = "memory.swap.max=0"
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
            else:
                swap = "no memory.swap.max (swap not accounted)"
            if (path / "memory.oom.group").exists():
                _write(path / "memory.oom.group", "1")
            enforcement["memory"] = (
                f"cgroup v2 memory.max={limits.memory} and {swap}; "
                "the kernel OOM-kills the sandbox past it"
            )
        if "pids" in wanted:
            _write(path / "pids.max", str(limits.pids))
            enforcement["pids"] = f"cgroup v2 pids.max={limits.pids} (processes and threads)"
        if "cpu" in wanted:
            quota = max(1000, round(limits.cpus * CPU_PERIOD_US))
            _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            enforcement["cpu"] = f"cgroup v2 cpu.max={quota} {CPU_PERIOD_US} ({limits.cpus:g} CPUs)"
        cgroup.open_procs()
    except BaseException:
        cgroup.remove()
        raise
    return cgroup, enforcement


@cache
def _prlimit() -> str | None:
    """util-linux's prlimit, where the sandbox sees it too (it binds /usr)."""
    path = Path("/usr/bin/prlimit")
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def count_tasks(uid: int, proc: Path = Path("/proc")) -> int:
    """How many tasks (processes and threads) host uid ``uid`` has: what ``RLIMIT_NPROC`` counts."""
    total = 0
    with os.scandir(proc) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                total += sum(1 for _ in os.scandir(f"{entry.path}/task"))
            except OSError:  # gone meanwhile
                continue
    return total


def plan_limits(
    limits: Limits,
    run_id: str,
    *,
    layout: CgroupLayout | None = None,
    uid: int | None = None,
    count: Callable[[int], int] = count_tasks,
) -> RunLimits:
    """Make the cgroup (or choose the rlimits) for one run, and say how each limit holds.

    Raises :class:`SandboxError` when a limit cannot be enforced at all (the pids
    limit as root without a pids cgroup): a backend never loosens the spec.
    """
    layout = cgroup_layout() if layout is None else layout
    uid = os.getuid() if uid is None else uid
    name = _run_name(run_id)
    cgroup: _Cgroup | None = None
    enforcement: dict[str, str] = {}
    why_not = ""
    try:
        if layout.v1:
            cgroup, enforcement = _make_v1(layout.v1, name, limits)
        elif layout.v2 is not None:
            cgroup, enforcement = _make_v2(layout.v2, name, limits)
        else:
            why_not = "no cgroup hierarchy with memory, pids or cpu controllers is mounted"
    except OSError as exc:
        cgroup, enforcement = None, {}
        why_not = f"cannot make a cgroup: {exc.strerror or exc}" + (
            f" ({exc.filename})" if exc.filename else ""
        )
    result = RunLimits(enforcement=enforcement, cgroup=cgroup)
    if why_not:
        result.enforcement["cgroup"] = f"none: {why_not}"
    try:
        _fill_with_rlimits(result, limits, uid, count)
    except BaseException:
        result.close()
        raise
    return result


def _fill_with_rlimits(
    result: RunLimits, limits: Limits, uid: int, count: Callable[[int], int]
) -> None:
    """rlimits for whatever the cgroup (if any) does not cover."""
    enforcement = result.enforcement
    fallback = result.cgroup is None
    if "memory" not in enforcement:
        result.rlimits.append((resource.RLIMIT_AS, limits.memory, limits.memory))
        enforcement["memory"] = (
            f"RLIMIT_AS={limits.memory} per process (not the sandbox's total; an allocation "
            "past it fails with MemoryError instead of an OOM kill)"
        )
    if "pids" not in enforcement:
        if uid == 0:
            raise SandboxError(
                "cannot enforce the pids limit: jhansi runs as root, whose sandbox runs as a "
                "shared unprivileged host uid (RLIMIT_NPROC there would count every process "
                "of that uid on the host), and no pids cgroup could be made"
                + (f" ({enforcement['cgroup'].removeprefix('none: ')})" if fallback else ""),
                hint="Mount the cgroup pids controller (cgroup v1 or v2), or run jhansi as an "
                "unprivileged user.",
            )
        # The kernel checks RLIMIT_NPROC at each user-namespace level: inside the
        # sandbox's own namespace it counts the sandbox's tasks only, outside it
        # every task of the uid. bwrap (outside) gets the limit plus what the uid
        # already runs, so that it can start at all; the command (inside) gets the
        # limit itself from prlimit(1), run in the sandbox just before it.
        running = count(uid)
        outer = limits.pids + running
        result.rlimits.append((resource.RLIMIT_NPROC, outer, outer))
        outside = (
            f"RLIMIT_NPROC={outer} on bwrap (the limit plus the {running} tasks uid {uid} "
            "already had: there the kernel counts all of them)"
        )
        prlimit = _prlimit()
        if prlimit is not None:
            result.command_prefix = [prlimit, f"--nproc={limits.pids}", "--"]
            enforcement["pids"] = (
                f"RLIMIT_NPROC={limits.pids} on the sandbox's own tasks (set by prlimit in "
                f"the sandbox before the command), and {outside}"
            )
        else:
            enforcement["pids"] = f"{outside}; no prlimit(1) to set the limit itself inside"
    if "cpu" not in enforcement:
        seconds = math.ceil(limits.timeout * limits.cpus) + 1
        result.rlimits.append((resource.RLIMIT_CPU, seconds, seconds + 1))
        enforcement["cpu"] = (
            f"not throttled to {limits.cpus:g} CPUs (no cpu cgroup); RLIMIT_CPU={seconds} s "
            "per process as a backstop"
        )
    if fallback:
        fsize = max(limits.memory, limits.tmp_size)
        result.rlimits.append((resource.RLIMIT_FSIZE, fsize, fsize))
        enforcement["file_size"] = f"RLIMIT_FSIZE={fsize} per file written"


# -- crashed runs --------------------------------------------------------------------------


def _owner_alive(name: str) -> bool:
    pid_text = name.removeprefix(CGROUP_PREFIX).partition("-")[0]
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(layout: CgroupLayout) -> Iterator[tuple[type[_Cgroup], Path]]:
    parents: list[tuple[type[_Cgroup], Path]] = [(_CgroupV1, p) for p in set(layout.v1.values())]
    if layout.v2 is not None:
        parents.append((_CgroupV2, layout.v2 / V2_SUBTREE))
    for kind, parent in parents:
        with contextlib.suppress(OSError):
            for child in parent.iterdir():
                mine = child.name.startswith(CGROUP_PREFIX) and child.is_dir()
                if mine and not _owner_alive(child.name):
                    yield kind, child


def prune_cgroups(layout: CgroupLayout | None = None) -> int:
    """Kill and remove the cgroups of runs whose jhansi process is gone; return how many runs."""
    layout = cgroup_layout() if layout is None else layout
    runs: set[str] = set()
    for kind, path in _leftovers(layout):
        kind({"any": path}).remove()
        if not path.exists():
            runs.add(path.name)
    return len(runs)
