"""One exception root for everything jhansi refuses or fails at.

Every error carries what went wrong (``message``), what the user can do about it
(``hint``) and the process exit code the CLI uses. The CLI catches
:class:`JhansiError` in exactly one place and prints those two lines; anything
else that escapes is a bug and keeps its traceback.

Exit codes are part of the public interface (documented in the README):
``jhansi run`` passes the script's own exit code through, so jhansi's own
outcomes use a small fixed set, and ``--json`` output always carries an explicit
``status`` so that machines never have to guess from the number.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """jhansi's own exit codes (a script's exit code passes through unchanged)."""

    OK = 0
    USAGE = 2
    """Bad command line, malformed or invalid configuration."""
    POLICY = 3
    """Refused by policy (vulnerability, licence, provenance)."""
    SANDBOX = 4
    """No usable sandbox backend, or the engine failed."""
    LEDGER = 5
    """The ledger cannot be written, or does not verify."""
    INPUT = 6
    """The script cannot be run as given: missing, not a file, not UTF-8, syntax error."""
    DEPENDENCIES = 7
    """Dependencies cannot be planned, locked or installed (for example an unresolved import)."""
    REPLAY_DIFFERS = 8
    """``jhansi replay``: the replay ran, and its outcome differs from the recorded run's."""
    NOT_REPRODUCIBLE = 9
    """``jhansi replay``: the run cannot be reproduced as recorded (its image is gone, a
    value it was given is not in the ledger, a wheel is no longer served ...)."""
    INTERRUPTED = 130
    """Interrupted by the user (Ctrl-C)."""
    TIMED_OUT = 124
    """The script ran past its wall-clock timeout and was killed."""
    KILLED_OOM = 137
    """The script was killed for exceeding its memory limit."""


class JhansiError(Exception):
    """The root of every error jhansi raises on purpose.

    ``message`` says what went wrong, ``hint`` what to do about it; both are
    single lines meant for a person. ``exit_code`` is what the CLI exits with.
    """

    exit_code: ExitCode = ExitCode.USAGE
    recorded: bool = False
    """Set once the error is in the ledger (so that it is recorded exactly once)."""

    def __init__(self, message: str, *, hint: str = "", exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def diagnostics(self) -> str:
        """The two lines the CLI prints: what went wrong, then what to do."""
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class UsageError(JhansiError):
    """A command line that cannot be carried out as written."""

    exit_code = ExitCode.USAGE


class ConfigError(JhansiError):
    """A configuration file or value that is malformed or invalid."""

    exit_code = ExitCode.USAGE


class InputError(JhansiError):
    """The script itself cannot be run: missing, unreadable, not UTF-8, not Python."""

    exit_code = ExitCode.INPUT


class PolicyError(JhansiError):
    """Refused by policy before anything ran."""

    exit_code = ExitCode.POLICY


class SandboxError(JhansiError):
    """No sandbox could be started, or the engine failed while running one."""

    exit_code = ExitCode.SANDBOX


class LedgerError(JhansiError):
    """The ledger cannot be written or does not verify."""

    exit_code = ExitCode.LEDGER


class DependencyError(JhansiError):
    """The script's dependencies cannot be planned, locked or installed."""

    exit_code = ExitCode.DEPENDENCIES


class ReplayError(JhansiError):
    """A recorded run that cannot be replayed as it was recorded."""

    exit_code = ExitCode.NOT_REPRODUCIBLE


class ToolError(JhansiError):
    """An external program (uv, bwrap, ...) failed; ``stderr`` holds what it said."""

    exit_code = ExitCode.SANDBOX

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        stderr: str = "",
        exit_code: ExitCode | None = None,
    ) -> None:
        super().__init__(message, hint=hint, exit_code=exit_code)
        self.stderr = stderr
