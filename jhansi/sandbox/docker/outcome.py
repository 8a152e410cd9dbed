"""How a container sandbox ended: the script's own end, or the runtime's.

jhansi's bootstrap writes an end marker to stderr as the script ends; a container
that exits without one was ended by the runtime or the engine (gVisor's kernel
refused a thread, a kill from outside), whatever its exit status says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from jhansi.sandbox.docker.container import is_gvisor
from jhansi.sandbox.interface import PYTHON, ExecStatus

#: The signal a container killed for the timeout or by the OOM killer reports.
SIGKILL: Final = 9

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
            return Outcome(ExecStatus.KILLED_OOM, code, signal or SIGKILL)
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
        return Outcome(ExecStatus.KILLED_OOM, code, signal or SIGKILL)
    return Outcome(ExecStatus.FAILED, code, signal)
