"""Housekeeping that no result depends on, done after the answer where that is safe.

Removing a container that has exited takes a container engine tens of milliseconds,
and nothing a run reports depends on it: its result is recorded (``exec.end`` and the
signed checkpoint) before. A backend hands such work to :func:`later`.

- In a library caller (:func:`jhansi.run`, tests), :func:`later` does the work at
  once: when a run returns, its container is gone.
- In the ``jhansi`` command (``jhansi mcp`` too), which calls :func:`defer` first,
  the work starts in a thread at once and the command goes on (recording the run's
  end, printing its result); the process calls :func:`finish` before it exits. In the helper's child
  (:mod:`jhansi.helper`) the command's status and its standard streams are handed
  back first, so a terminal, a pipe or a CI step has its answer while the child
  finishes.

Work that fails says so in the log only: what it leaves (a stopped container) is
removed by the next run's prune, as it always was when removal failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["defer", "finish", "later", "pending"]

_pending: list[threading.Thread] = []
_lock = threading.Lock()
_deferring = False


def defer() -> None:
    """From now on, :func:`later` runs its work in the background (the CLI's own
    process, which calls :func:`finish` before it exits)."""
    global _deferring
    _deferring = True


def later(work: Callable[[], None], name: str) -> None:
    """Do ``work`` now, or (after :func:`defer`) start it in a thread and return."""
    if not _deferring:
        work()
        return
    # Not a daemon: an interpreter that exits normally waits for it too.
    thread = threading.Thread(target=_quietly, args=(work, name), name=name)
    with _lock:
        _pending[:] = [t for t in _pending if t.is_alive()]  # a long-lived server's
        _pending.append(thread)
    thread.start()


def _quietly(work: Callable[[], None], name: str) -> None:
    """``work()``; a failure goes to the log, never as a traceback over the answer."""
    try:
        work()
    except Exception as exc:  # what is left behind is pruned by a later run
        import logging

        logging.getLogger("jhansi").debug("housekeeping %s failed: %r", name, exc)


def pending() -> int:
    """How many pieces of deferred work have not finished."""
    with _lock:
        return sum(thread.is_alive() for thread in _pending)


def finish(timeout: float = 60) -> bool:
    """Wait for the deferred work (at most ``timeout`` seconds in all); whether it ended."""
    deadline = time.monotonic() + timeout
    while True:
        with _lock:
            if not _pending:
                return True
            thread = _pending[0]
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
        with _lock:
            _pending.remove(thread)
