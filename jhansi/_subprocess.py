"""The one way jhansi runs an external program (uv, bwrap, ...).

Arguments are always a list (never a shell string); a failure becomes a
:class:`~jhansi.errors.ToolError` carrying the program's stderr, so that callers
translate it into a message with a fix instead of leaking a traceback.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from jhansi.errors import ToolError

logger = logging.getLogger("jhansi.subprocess")


def run_tool(
    argv: Sequence[str | Path],
    *,
    what: str,
    hint: str = "",
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float | None = 120,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion and return its result.

    ``what`` names the step for the error message ("resolve dependencies with uv").
    With ``check`` (the default) a non-zero exit raises :class:`ToolError`.
    """
    args = [str(a) for a in argv]
    logger.debug("exec %s", args)
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise ToolError(
            f"cannot {what}: {args[0]} is not installed",
            hint=hint or f"Install {Path(args[0]).name} and try again.",
        ) from None
    except PermissionError:
        raise ToolError(
            f"cannot {what}: {args[0]} is not executable",
            hint=hint or f"Check the permissions of {args[0]}.",
        ) from None
    except subprocess.TimeoutExpired:
        raise ToolError(
            f"cannot {what}: {Path(args[0]).name} did not finish within {timeout:g} s",
            hint=hint or "Try again; if it keeps happening, run with --debug.",
        ) from None
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
        raise ToolError(f"cannot {what}: {last}", hint=hint, stderr=stderr)
    return proc
