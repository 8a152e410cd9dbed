"""The helpers of this user: which are running (``jhansi helper status``), and stopping them.

Each helper (:mod:`jhansi.helper`) holds an exclusive lock on ``<name>.lock`` in the
helper directory (:func:`jhansi.cli._helper_client.helper_dir`) for its whole life,
and writes its pid, how many runs it has served, and whether it has loaded everything
(``1`` once :data:`jhansi.helper.PRELOAD_LATER` is loaded) into it. A lock that can be
taken belongs to a helper that is gone: its files are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from jhansi.cli._helper_client import helper_dir, helper_key, socket_name

__all__ = ["HelperInfo", "list_helpers", "own_helper_name", "stop_helpers"]


@dataclass(frozen=True, slots=True)
class HelperInfo:
    """A helper's files in the helper directory, and whether it is running."""

    name: str
    """``helper-<checksum>``: which key it serves."""
    pid: int | None
    """Its process, while it runs."""
    running: bool
    served: int = 0
    """How many runs it has forked."""
    loaded: bool = False
    """Whether it has loaded what runs with new requirements need, too (it serves
    before: those runs load the rest themselves until then)."""

    def as_dict(self) -> dict[str, object]:
        """The JSON form."""
        return {
            "name": self.name,
            "pid": self.pid,
            "running": self.running,
            "served": self.served,
            "loaded": self.loaded,
        }


def list_helpers(directory: str | None = None) -> list[HelperInfo]:
    """The helpers in ``directory`` (default: this user's); dead ones' files are removed."""
    where = Path(directory or helper_dir())
    try:
        locks = sorted(p for p in where.iterdir() if p.suffix == ".lock")
    except OSError:
        return []
    found: list[HelperInfo] = []
    for lock in locks:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                words = os.pread(fd, 64, 0).decode("ascii", "replace").split()
                numbers = [int(w) for w in words if w.isdigit()]
                pid = numbers[0] if numbers else None
                served = numbers[1] if len(numbers) > 1 else 0
                loaded = len(numbers) > 2 and numbers[2] == 1
                found.append(HelperInfo(lock.stem, pid, True, served, loaded))
                continue
            for leftover in (lock.with_suffix(".sock"), lock):
                leftover.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return found


def own_helper_name() -> str:
    """The name of the helper this process's ``jhansi run`` would use (or start).

    Other names in the same directory belong to other installations or checkouts,
    other interpreters, or other sessions of this user (another cgroup or namespace):
    their runs, not this one's.
    """
    return socket_name(helper_key())


def stop_helpers(directory: str | None = None, *, only: str | None = None) -> list[HelperInfo]:
    """Ask the running helpers (the one named ``only``, else all) to exit (SIGTERM);
    return those asked.

    Runs in progress in a helper's children are not affected.
    """
    stopped: list[HelperInfo] = []
    for helper in list_helpers(directory):
        if helper.pid is None or (only is not None and helper.name != only):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(helper.pid, signal.SIGTERM)
            stopped.append(helper)
    return stopped
