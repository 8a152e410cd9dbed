"""The gate: where the sandbox's command waits until the run is recorded.

bwrap is started while the run's record is written (joining a cgroup and setting
up the mounts take tens of milliseconds); the command (``entry.py --gate FD``)
waits on a pipe until the record is there, and exits unrun if it never is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable


class Gate:
    """Where the sandbox's command waits (``entry.py --gate FD``) until the run is recorded.

    Without a descriptor (``fd is None``) there is nothing to wait at: ``before_start``
    has run already (or there is none).
    """

    def __init__(self, fd: int | None, before_start: Callable[[], None] | None) -> None:
        self.fd = fd
        self.before_start = before_start
        self._joined: tuple[int, int] | None = None

    def after_join(self) -> int:
        """A descriptor for the child to write a byte to once it has joined the cgroup:
        ``before_start`` waits for it (or for the child's start to end without it).

        Joining through ``cgroup.procs`` takes the kernel's thread-group lock, which
        waits for an RCU grace period: until every CPU has passed a quiescent state,
        about 5 ms with the other CPU idle, 11-15 ms while it runs ``before_start``'s
        Python. (On v1 the child joins through ``tasks`` instead, which skips it.) The
        sandbox's own start (bwrap, then the interpreter up to the gate) takes longer
        than the record, so the record waits for the join and overlaps the rest.
        """
        self._joined = os.pipe()
        return self._joined[1]

    def spawn(self, start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        """``start()``; with a gate, while ``before_start`` runs in a thread.

        bwrap is started from this thread, not the other one: ``--die-with-parent``
        kills the sandbox when the *thread* that started it ends. If ``before_start``
        raises, the gate is closed (the command exits unrun), bwrap is killed, and the
        exception is re-raised here.
        """
        if self.fd is None or self.before_start is None:
            return start()
        before_start = self.before_start
        failed: list[BaseException] = []
        go = threading.Event()
        joined = self._joined

        def work() -> None:
            go.wait()
            if joined is not None:
                # A byte once the child joined; end of file if it never does (the write
                # end is closed here once the child has exec'd or failed).
                with contextlib.suppress(OSError):
                    os.read(joined[0], 1)
            try:
                before_start()
            except BaseException as exc:  # handed to this thread below
                failed.append(exc)

        worker = threading.Thread(target=work, name="jhansi-record-start", daemon=True)
        worker.start()
        try:
            # The worker waits to be let go: started, it would hold the interpreter lock
            # for its first slice (up to 5 ms) and the fork would wait. Let go now, it
            # runs once this thread blocks, which is right after the fork, while the
            # child joins the cgroup and execs bwrap.
            go.set()
            try:
                proc = start()
            finally:
                self._close_joined(write_only=True)
        except BaseException:
            _join(worker)
            self.close()
            raise
        _join(worker)
        self._close_joined()
        if failed:
            self.close()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            raise failed[0]
        return proc

    def open(self) -> None:
        """Let the command go on."""
        if self.fd is not None:
            try:
                with contextlib.suppress(OSError):  # gone already: its status says why
                    os.write(self.fd, b"1")
            finally:
                self.close()

    def close(self) -> None:
        """Close the gate unopened (idempotent)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        self._close_joined()

    def _close_joined(self, *, write_only: bool = False) -> None:
        if self._joined is None:
            return
        read, write = self._joined
        for fd in (write,) if write_only else (read, write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._joined = None if not write_only else (read, -1)


def _join(thread: threading.Thread) -> None:
    """Wait for ``thread`` even through Ctrl-C (re-raised once it has ended): what it
    writes to the ledger must be finished, or known not to be, before anything else."""
    interrupted: KeyboardInterrupt | None = None
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted
