"""The bwrap backend: runs a :class:`SandboxSpec` in a fresh bubblewrap sandbox.

It puts together what the sibling modules work out (the binary, the interpreter,
the host root, the options and the seccomp filter, the host user) and runs bwrap:
the child joins the run's cgroup and takes its rlimits (:mod:`jhansi.sandbox.limits`),
drops to the sandbox's host uid when jhansi runs as root, and execs bwrap, whose
output is streamed until it ends or the timeout kills the whole sandbox.

bwrap's options travel through a memfd (``--args``), not the command line, so
that the environment given to the sandbox is not visible in ``ps`` to other
users of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import jhansi.housekeeping as housekeeping
from jhansi.errors import SandboxError
from jhansi.sandbox.bwrap.binary import (
    BwrapInfo,
    bundled_bwrap,
    bwrap_facts,
    bwrap_features,
    bwrap_version,
    find_bwrap,
    require_features,
    userns_hint,
)
from jhansi.sandbox.bwrap.gate import Gate
from jhansi.sandbox.bwrap.interpreter import (
    Interpreter,
    ask_interpreter,
    default_python,
    probe_interpreter,
)
from jhansi.sandbox.bwrap.options import build_command, build_options, check_spec, shm_size
from jhansi.sandbox.bwrap.root import cached_host_root
from jhansi.sandbox.bwrap.seccomp import DENIED_SYSCALLS, seccomp_filter
from jhansi.sandbox.bwrap.user import (
    HostUser,
    check_usable,
    hand_over_dir,
    mount_reachable,
    sandbox_host_user,
)
from jhansi.sandbox.interface import (
    GATE_FD,
    PYTHON,
    Backend,
    BackendInfo,
    CopyOnWrite,
    DiscardOutput,
    ExecResult,
    ExecStatus,
    Mount,
    OutputSink,
    SandboxSpec,
    Stream,
    TailBuffer,
    spec_root_id,
    threads_enforcement,
    without_gate,
)
from jhansi.sandbox.limits import RunLimits, plan_limits, prune_cgroups
from jhansi.sandbox.probe import binary_key, cached
from jhansi.sandbox.sources import Staging, check_own

if TYPE_CHECKING:
    from jhansi.deps.target import Target


_DRAIN_GRACE = 2.0
_EXIT_CODE = re.compile(rb'"exit-code"\s*:\s*(-?\d+)')


class _ChildFds:
    """File descriptors handed to bwrap, closed in jhansi once bwrap has them."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def data(self, content: bytes) -> int:
        fd = os.memfd_create("jhansi-bwrap", os.MFD_CLOEXEC)
        self.fds.append(fd)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def add(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def _forward_stdin(source: BinaryIO, sink: BinaryIO) -> None:
    """Copy ``source`` into the sandbox's stdin until either side ends (a daemon thread)."""
    read = getattr(source, "read1", source.read)
    try:
        while True:
            chunk = read(65536)
            if not chunk:
                break
            sink.write(chunk)
            sink.flush()
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError, ValueError):
            sink.close()


def _preexec(
    limits: RunLimits, staging: Staging | None, user: HostUser, joined: int | None = None
) -> Callable[[], None]:
    """What the child does between fork and exec: cgroup and rlimits, then (as root) the
    pinned sources and the drop to ``user``, in that order (joining the cgroup and
    mounting need root). ``joined``: a pipe to say on, once the cgroup is joined."""

    def preexec() -> None:
        limits.preexec()
        if joined is not None:
            with contextlib.suppress(OSError):
                os.write(joined, b"j")
        if staging is not None:
            staging.preexec()
        if user.drop:
            os.setgroups([])
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)

    return preexec


def _bwrap_error(stderr: bytes, returncode: int | None) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    for line in reversed(lines):
        if line.startswith("bwrap:"):
            return line
    if returncode is not None and returncode < 0:
        return f"bwrap was killed by signal {-returncode} before the command started"
    return f"bwrap exited with status {returncode} before the command started" + (
        f": {lines[-1]}" if lines and lines[-1] else ""
    )


@dataclass(slots=True)
class _Run:
    """What one bwrap process did, gathered while it ran."""

    stdout: TailBuffer
    stderr: TailBuffer
    status: bytes = b""
    """What bwrap wrote to ``--json-status-fd``."""
    timed_out: bool = False
    oom: bool = False
    returncode: int | None = None
    duration_ms: int = 0
    error: str = ""
    """Set when bwrap could not even be started."""

    def result(self, enforcement: dict[str, str]) -> ExecResult:
        """The :class:`ExecResult` this run amounts to."""

        def result(
            status: ExecStatus, code: int | None, sig: int | None, error: str = ""
        ) -> ExecResult:
            return ExecResult(
                status,
                code,
                sig,
                self.duration_ms,
                self.stdout.tail(),
                self.stderr.tail(),
                error=error,
                enforcement=enforcement,
            )

        if self.error:
            return result(ExecStatus.ENGINE_ERROR, None, None, self.error)
        if self.timed_out:
            return result(ExecStatus.TIMED_OUT, None, signal.SIGKILL)
        # bwrap writes the command's exit code only once the command was started.
        match = _EXIT_CODE.search(self.status)
        if match is None:
            if self.oom:
                return result(ExecStatus.KILLED_OOM, None, signal.SIGKILL)
            return result(
                ExecStatus.ENGINE_ERROR,
                None,
                None,
                _bwrap_error(self.stderr.tail().data, self.returncode),
            )
        code = int(match.group(1))
        if code == 0:
            return result(ExecStatus.SUCCEEDED, 0, None)
        if self.oom:
            return result(ExecStatus.KILLED_OOM, None, signal.SIGKILL)
        # bwrap reports death by signal N as 128 + N (the shell's convention), which
        # cannot be told apart from exit(128 + N): the code is passed on as it is.
        return result(ExecStatus.FAILED, code, None)


def _userns_refused(error: str) -> bool:
    text = error.lower()
    return "namespace" in text or "uid map" in text or "uid_map" in text


class BwrapBackend(Backend):
    """Runs a :class:`SandboxSpec` with bubblewrap and the host's Python interpreter."""

    name = "bwrap"

    def __init__(
        self,
        bwrap: BwrapInfo,
        *,
        python: Path | None = None,
        cache_dir: Path | None = None,
        overlay: BwrapInfo | None = None,
    ) -> None:
        self.bwrap = bwrap
        self.python = python
        """The interpreter when a spec names none (default: ``python3`` on PATH, resolved)."""
        self.cache_dir = cache_dir
        """Where interpreter probes are kept between runs (``None``: probe every process)."""
        self.overlay_bwrap = overlay
        """The bwrap that runs specs with an ``overlay`` mount, when :attr:`bwrap` has no
        overlay mounts (Debian 12's 0.8) and the bundled one does (``None``: :attr:`bwrap`
        itself, if it can)."""

    def _overlay_binary(self) -> BwrapInfo | None:
        if self.overlay_bwrap is not None:
            return self.overlay_bwrap
        if bwrap_features(self.bwrap.path, self.cache_dir).overlay:
            return self.bwrap
        return None

    def _binary(self, spec: SandboxSpec) -> BwrapInfo:
        """The bwrap that runs ``spec``."""
        if any(m.kind == "overlay" for m in spec.mounts):
            found = self._overlay_binary()
            if found is None:
                raise SandboxError(
                    f"bubblewrap {self.bwrap.version} ({self.bwrap.path}) cannot mount the "
                    "copy-on-write /work (--overlay needs bubblewrap 0.10 or newer)",
                    hint='Install a newer bubblewrap, or set [sandbox] bwrap = "bundled".',
                )
            return found
        return self.bwrap

    @classmethod
    def from_settings(
        cls, choice: str, python: str | None, *, cache_dir: Path | None = None
    ) -> BwrapBackend:
        """The backend for ``[sandbox] bwrap`` and ``[sandbox] python``.

        ``auto`` falls back to the bundled bwrap when the system's is too old to
        cap /tmp. The interpreter is resolved to its real path here (through
        pyenv-style shims), once per process.
        """
        info = find_bwrap(choice, cache_dir=cache_dir)
        if choice == "auto" and not bwrap_features(info.path, cache_dir).size:
            bundled = bundled_bwrap()
            if bundled is not None:
                info = BwrapInfo(path=bundled, origin="bundled", version=bwrap_version(bundled))
        require_features(info, bwrap_features(info.path, cache_dir))
        # The system's bwrap is preferred; for the copy-on-write /work (overlay mounts,
        # bubblewrap 0.10), the bundled one runs when the system's is older.
        overlay = None
        if choice == "auto" and not bwrap_features(info.path, cache_dir).overlay:
            bundled = bundled_bwrap()
            if bundled is not None and bwrap_features(bundled, cache_dir).overlay:
                version = (
                    bwrap_facts(bundled, cache_dir)[0] if cache_dir else bwrap_version(bundled)
                )
                overlay = BwrapInfo(path=bundled, origin="bundled", version=version)
        interpreter = probe_interpreter(python or default_python(), cache_dir)
        return cls(info, python=interpreter.path, cache_dir=cache_dir, overlay=overlay)

    def _interpreter(self, spec: SandboxSpec) -> Interpreter:
        chosen = spec.python if spec.python is not None else self.python
        return probe_interpreter(
            str(chosen) if chosen is not None else default_python(), self.cache_dir
        )

    def target(self, spec: SandboxSpec) -> Target:
        """The host interpreter the sandbox runs, probed once (cached on disk)."""
        from jhansi.deps.plan import fallback_stdlib
        from jhansi.deps.target import PROBE_CODE, target_from_probe

        path = str(self._interpreter(spec).path)
        data = cached(
            self.cache_dir,
            "targets.json",
            binary_key(path),
            lambda: json.loads(ask_interpreter(path, PROBE_CODE)),
        )
        if not isinstance(data, dict):
            raise SandboxError(f"{path} answered jhansi's target probe with nonsense")
        return target_from_probe(data, fallback_stdlib())

    def info(self, spec: SandboxSpec) -> BackendInfo:
        """bwrap's path, version and origin, and the interpreter that will run."""
        interpreter = self._interpreter(spec)
        binary = self._binary(spec)
        features = bwrap_features(binary.path, self.cache_dir)
        machine = os.uname().machine
        return BackendInfo(
            "bwrap",
            {
                "bwrap": str(binary.path),
                "bwrap_version": binary.version,
                "bwrap_origin": binary.origin,
                "python": str(interpreter.path),
                "python_version": interpreter.version,
                "python_implementation": interpreter.implementation,
                "host_uid": str(os.getuid()),
                "user": sandbox_host_user(root_id=spec_root_id(spec)).reason,
                "nested_userns": "refused" if features.disable_userns else "allowed (bwrap < 0.8)",
                "seccomp": f"denies {', '.join(DENIED_SYSCALLS)}, openat2, setuid/setgid "
                "modes, and foreign ABIs"
                if seccomp_filter(machine) is not None
                else f"none (no syscall table for {machine})",
            },
        )

    def _ready_overlay(self, mount: Mount, user: HostUser, binary: BwrapInfo) -> str:
        """Hand an overlay's upper and work directories to the sandbox's host uid (opening
        the project's directories for it when it is not their owner); what the record says."""
        from jhansi.sandbox.overlay import ready_upper

        overlay = mount.overlay
        if overlay is None:  # pragma: no cover - check_spec refused it
            raise SandboxError("an overlay mount without its layers")
        check_own(overlay.upper.parent, None)
        for directory in (overlay.upper, overlay.work):
            hand_over_dir(directory, user)
        ready_upper(overlay, mount.source, user.uid, user.gid)
        return (
            f"copy-on-write: overlayfs mounted by bwrap {binary.version} ({binary.origin}) in "
            f"the sandbox's user namespace; writes land in {overlay.upper}, the project is a "
            "read-only lower layer under the masks, and nothing reaches it until "
            "`jhansi sandbox apply`"
        )

    def copy_on_write(self, spec: SandboxSpec, where: Path, project: Path) -> CopyOnWrite | str:
        """bwrap's ``--overlay`` (0.10+, the bundled build when the system's is older),
        tried once per binary, user and file system of ``where`` (remembered)."""
        binary = self._overlay_binary()
        if binary is None:
            return (
                f"bubblewrap {self.bwrap.version} ({self.bwrap.path}) has no overlay mounts "
                "(0.10 or newer has them; the bundled bwrap is not there)"
            )
        try:
            device = where.stat().st_dev
            key = f"overlay:{os.getuid()}:{device}:{binary.path}|{binary_key(str(binary.path))}"
        except OSError as exc:
            return f"cannot use {where}: {exc.strerror or exc}"
        problem = cached(
            self.cache_dir, "overlay.json", key, lambda: self._try_overlay(spec, where)
        )
        if problem:
            return f"bwrap could not mount an overlay there ({problem})"
        return CopyOnWrite(
            f"overlayfs mounted by bwrap {binary.version} ({binary.origin})", xattr="user"
        )

    def _try_overlay(self, spec: SandboxSpec, where: Path) -> str:
        """Mount a small overlay the way a run would; ``""`` when it worked, else why not."""
        from jhansi.sandbox.overlay_probe import OVERLAY_PROBE, probe_layers, remove_probe

        dirs = probe_layers(where, "user")
        try:
            probe = replace(
                spec,
                run_id=f"{spec.run_id}-overlay",
                argv=(PYTHON, "-I", "-S", "-c", OVERLAY_PROBE),
                mounts=(dirs.mount,),
                interactive=False,
                limits=replace(spec.limits, timeout=min(spec.limits.timeout, 60.0)),
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
        """Remove the cgroups of runs whose jhansi process died; return how many."""
        return prune_cgroups()

    def run(
        self,
        spec: SandboxSpec,
        output: OutputSink,
        *,
        stdin: BinaryIO | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> ExecResult:
        """Run ``spec`` in a fresh bubblewrap sandbox, streaming its output to ``output``.

        With ``before_start`` and a command that takes a gate (:data:`GATE_FD`), bwrap
        is started first and ``before_start`` runs while the sandbox is set up (joining
        its cgroup, mounting, starting the interpreter); the command waits at the gate
        until ``before_start`` has returned. If it raises, the gate is closed unopened:
        the command exits without running anything, and the sandbox is killed.
        """
        check_spec(spec)
        interpreter = self._interpreter(spec)
        binary = self._binary(spec)
        features = bwrap_features(binary.path, self.cache_dir)
        require_features(binary, features)
        root = cached_host_root(interpreter, self.cache_dir)
        user = sandbox_host_user(root_id=spec_root_id(spec))
        work_enforcement = ""
        for mount in spec.mounts:
            if mount.kind == "overlay" and mount.overlay is not None:
                if user.drop:
                    check_usable(mount.source, user, write=False)
                work_enforcement = self._ready_overlay(mount, user, binary)
            elif mount.owned:
                hand_over_dir(mount.source, user)
            elif mount.kind == "bind" and user.drop:
                check_usable(mount.source, user, write=not mount.read_only)
        if user.drop:
            spec = replace(
                spec, mounts=tuple(m for m in spec.mounts if mount_reachable(m, spec, user))
            )
        limits = plan_limits(spec.limits, spec.run_id)
        staging: Staging | None = None
        try:
            if user.drop:
                staging = Staging()

            def source(path: str, own: bool) -> str:
                # The sandbox's own directories must not be links; a user-chosen path
                # (the project, a script) is resolved once, and what it named is bound.
                if own:
                    check_own(Path(path), user.uid)
                else:
                    path = os.path.realpath(path)
                return staging.add(Path(path)) if staging is not None else path

            enforcement = {
                **limits.enforcement,
                "user": user.reason,
                "timeout": f"SIGKILL to the whole sandbox after {spec.limits.timeout:g} s ("
                + ("every process in its cgroup, and " if limits.cgroup is not None else "")
                + "bwrap's process group; the pid namespace dies with its init)",
                "tmp": f"tmpfs size={spec.limits.tmp_size} at /tmp, "
                f"size={shm_size(spec.limits)} at /dev/shm",
                "threads": threads_enforcement(spec),
            }
            if work_enforcement:
                enforcement["work"] = work_enforcement
            fds = _ChildFds()
            gate = Gate(None, None)
            joined: int | None = None  # where the child says it joined the cgroup
            status_read, status_write = os.pipe2(os.O_CLOEXEC)
            try:
                fds.add(status_write)
                options = build_options(
                    spec,
                    root,
                    features,
                    fds.data,
                    seccomp=seccomp_filter(os.uname().machine),
                    source=source,
                )
                options += ["--json-status-fd", str(status_write)]
                args_fd = fds.data(b"".join(os.fsencode(o) + b"\0" for o in options))
                command = build_command(spec, interpreter)
                if before_start is not None and GATE_FD in command:
                    gate_read, gate_write = os.pipe2(os.O_CLOEXEC)
                    fds.add(gate_read)
                    gate = Gate(gate_write, before_start)
                    command = [str(gate_read) if w == GATE_FD else w for w in command]
                else:
                    command = without_gate(command)
                    if before_start is not None:
                        before_start()
                argv = [str(binary.path), "--args", str(args_fd), "--"]
                argv += [*limits.command_prefix, *command]
                if gate.fd is not None and limits.cgroup is not None:
                    # A join through cgroup.procs (v2, or v1 without ``tasks``) waits
                    # for the kernel's RCU grace period, which takes twice as long while
                    # the other CPU runs Python: the record is written once the child
                    # has joined, while bwrap starts.
                    joined = gate.after_join()
                preexec = _preexec(limits, staging, user, joined)
                result = self._execute(
                    argv, fds, status_read, spec, output, stdin, limits, gate, preexec, binary
                ).result(enforcement)
            finally:
                gate.close()
                fds.close()
                os.close(status_read)
        finally:
            # Nothing of the sandbox outlives its run; removing the emptied cgroup
            # (waiting for the killed to be gone) is housekeeping, after the answer.
            limits.kill()
            housekeeping.later(limits.close, "jhansi-cgroup-removal")
            if staging is not None:
                staging.close()
        if result.status is ExecStatus.ENGINE_ERROR and user.drop and _userns_refused(result.error):
            raise SandboxError(
                f"bwrap cannot make the sandbox as host uid {user.uid}: {result.error}",
                hint="jhansi runs bwrap as an unprivileged uid when root runs it, which needs "
                "unprivileged user namespaces. "
                + userns_hint().removesuffix(", or use the docker backend.")
                + " Or use the docker backend (--backend docker).",
            )
        return result

    def _execute(
        self,
        argv: list[str],
        fds: _ChildFds,
        status_read: int,
        spec: SandboxSpec,
        output: OutputSink,
        stdin: BinaryIO | None,
        limits: RunLimits,
        gate: Gate,
        preexec: Callable[[], None],
        binary: BwrapInfo | None = None,
    ) -> _Run:
        """Start bwrap and see it to its end (or kill it at the timeout, or on an exception).

        With a gate, bwrap is started in a thread (joining a new cgroup can take tens
        of milliseconds) while this thread runs ``before_start``; then the gate opens.
        """
        run = _Run(TailBuffer(spec.limits.output_limit), TailBuffer(spec.limits.output_limit))
        started = time.monotonic()

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=fds.fds,
                start_new_session=True,
                preexec_fn=preexec,  # into the cgroup (and down from root) before bwrap runs
                env={},  # bwrap is pid 1 in the sandbox: /proc/1/environ is readable there
                bufsize=0,
            )

        try:
            proc = gate.spawn(start)
        except (OSError, subprocess.SubprocessError) as exc:
            gate.close()
            run.error = f"cannot start bwrap ({(binary or self.bwrap).path}): {exc}"
            return run
        fds.close()  # bwrap has its copies; ours would hold the status pipe open
        try:
            gate.open()
            if stdin is not None and proc.stdin is not None:
                threading.Thread(
                    target=_forward_stdin,
                    args=(stdin, proc.stdin),
                    name=f"jhansi-stdin-{spec.run_id}",
                    daemon=True,
                ).start()
            self._pump(proc, status_read, spec, output, run, limits)
        except BaseException:
            self._kill(proc, limits)
            raise
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        run.returncode = proc.returncode
        run.duration_ms = int((time.monotonic() - started) * 1000)
        run.oom = limits.oom_killed()
        return run

    def _kill(self, proc: subprocess.Popen[bytes], limits: RunLimits) -> None:
        """SIGKILL the sandbox: bwrap's process group and, with a cgroup, all in it."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        limits.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        status_read: int,
        spec: SandboxSpec,
        output: OutputSink,
        run: _Run,
        limits: RunLimits,
    ) -> None:
        """Stream output until bwrap is done, or the timeout kills the sandbox."""
        if proc.stdout is None or proc.stderr is None:  # pragma: no cover (always pipes)
            raise SandboxError("bwrap's output pipes are missing")
        streams: dict[int, tuple[Stream, TailBuffer]] = {
            proc.stdout.fileno(): ("stdout", run.stdout),
            proc.stderr.fileno(): ("stderr", run.stderr),
        }
        status = bytearray()
        deadline = time.monotonic() + spec.limits.timeout
        drain_until: float | None = None  # set once bwrap is done or killed
        with selectors.DefaultSelector() as selector:
            for fd in (*streams, status_read):
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                now = time.monotonic()
                if drain_until is None and now >= deadline:
                    run.timed_out = True
                    self._kill(proc, limits)
                    drain_until = now + _DRAIN_GRACE
                if drain_until is not None and now >= drain_until:
                    break  # a pipe still open after the sandbox is gone: stop waiting
                wait = (drain_until if drain_until is not None else deadline) - now
                for key, _ in selector.select(max(wait, 0.0)):
                    fd = int(key.fd)
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        selector.unregister(fd)
                        if fd == status_read and drain_until is None:
                            # bwrap closes it as it exits: what is left is a short drain.
                            drain_until = time.monotonic() + _DRAIN_GRACE
                    elif fd == status_read:
                        status += chunk
                    else:
                        name, tail = streams[fd]
                        tail.feed(chunk)
                        output.write(name, chunk)
        run.status = bytes(status)
        if proc.returncode is None:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0) + _DRAIN_GRACE)
            except subprocess.TimeoutExpired:
                run.timed_out = run.timed_out or time.monotonic() >= deadline
                self._kill(proc, limits)
