"""The run's first step: the script read and checked on the host, and its project.

Bad input never starts a sandbox: a script that is missing, binary, not UTF-8, too
large or does not parse is an :class:`~jhansi.errors.InputError` naming what is
wrong. Code from stdin is written to a private file the sandbox can read; the
project is the nearest directory with ``pyproject.toml`` or ``.git``, unless that
is the root or the home directory.
"""

from __future__ import annotations

import ast
import io
import os
import tempfile
import time
import tokenize
from pathlib import Path

from jhansi.config import Settings
from jhansi.errors import InputError, UsageError
from jhansi.paths import Paths, ensure_private_dir
from jhansi.report import Reporter
from jhansi.request import RunRequest, Script
from jhansi.sandbox.interface import WORKDIR

STDIN_NAME = "stdin.py"
#: ``[sandbox] max_script_size``'s default.
DEFAULT_MAX_SCRIPT_SIZE = 1 << 20


def new_run_id() -> str:
    """A sortable, unique run id: milliseconds since the epoch and 64 random bits."""
    return f"{int(time.time() * 1000):013x}-{os.urandom(8).hex()}"


def _decode(raw: bytes, where: str) -> str:
    if b"\x00" in raw:
        raise InputError(
            f"{where} is a binary file, not a Python script",
            hint="Pass the .py source file.",
        )
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        return raw.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        position = f" (byte {exc.start})" if isinstance(exc, UnicodeDecodeError) else ""
        raise InputError(
            f"{where} is not UTF-8 text{position}",
            hint="Save it as UTF-8, or declare its encoding in a `# -*- coding: ... -*-` line.",
        ) from None


def check_source(text: str, where: str) -> None:
    """Refuse code that does not parse, naming the line and column, before anything runs."""
    try:
        ast.parse(text, filename=where)
    except SyntaxError as exc:
        line = exc.lineno or 0
        column = exc.offset or 0
        raise InputError(
            f"{where}:{line}:{column}: syntax error: {exc.msg}",
            hint="Fix the script; nothing was run.",
        ) from None
    except ValueError as exc:  # e.g. null bytes after decoding
        raise InputError(f"{where}: {exc}", hint="Fix the script; nothing was run.") from None
    except (RecursionError, MemoryError):
        # CPython's parser gives up on expressions nested or chained thousands deep
        # (``x = ------...1``, ``1 + 1 + ...``): hostile or generated input, never a
        # script a person maintains. The size cap bounds what it costs to find out.
        raise InputError(
            f"{where}: the code nests too deeply for Python's parser",
            hint="Split the deeply nested or chained expression; nothing was run.",
        ) from None


def too_large(where: str, size: int | None, limit: int) -> InputError:
    """The refusal of a script over ``[sandbox] max_script_size`` (``size`` None: unknown,
    more than the limit)."""
    from jhansi.config import format_size

    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return InputError(
        f"{where} is {what}; scripts over {format_size(limit)} are refused unparsed",
        hint="Split it, or raise [sandbox] max_script_size (JHANSI_SANDBOX_MAX_SCRIPT_SIZE) "
        "if you mean to run it; nothing was run.",
    )


def read_script(path: Path, limit: int = DEFAULT_MAX_SCRIPT_SIZE) -> str:
    """The text of the script at ``path``, checked to be a readable, decodable file of at
    most ``limit`` bytes (read no further: a file may grow while it is read)."""
    if not path.exists():
        raise InputError(
            f"no such file: {path}",
            hint="Check the path, or run `jhansi run -` to read the code from stdin.",
        )
    if path.is_dir():
        candidate = path / "__main__.py"
        suggestion = candidate if candidate.is_file() else path / "main.py"
        raise InputError(
            f"{path} is a directory, not a script",
            hint=f"Name the Python file to run, for example `jhansi run {suggestion}`.",
        )
    if not path.is_file():
        raise InputError(f"{path} is not a regular file", hint="Pass a .py source file.")
    try:
        size = path.stat().st_size
        if size > limit:
            raise too_large(str(path), size, limit)
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise InputError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="Check the file's permissions.",
        ) from None
    if len(raw) > limit:
        raise too_large(str(path), None, limit)
    return _decode(raw, str(path))


def find_project(start: Path) -> Path:
    """The nearest ancestor of ``start`` holding ``pyproject.toml`` or ``.git``, else ``start``."""
    start = start.absolute()
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").exists() or (directory / ".git").exists():
            return directory
    return start


def unsafe_project(project: Path) -> str | None:
    """Why ``project`` must not be mounted as a whole, or ``None``."""
    resolved = project.resolve()
    if resolved == Path("/"):
        return "the root directory"
    home = Path.home().resolve()
    if resolved == home:
        return "your home directory"
    if resolved in home.parents:
        return f"a parent of your home directory ({resolved})"
    return None


def prepare_script(
    request: RunRequest, run_id: str, *, settings: Settings, paths: Paths, reporter: Reporter
) -> tuple[Script, Path | None]:
    """The script ``request`` names (read, checked), and the project to mount at
    /work (``None``: none is safe to mount, and the reporter was told)."""
    if request.interactive:
        script = Script(Path(os.devnull), "<interactive>", from_stdin=False)
        start = request.project or Path.cwd()
    elif request.script is None:
        code = request.code or ""
        limit = settings.sandbox.max_script_size
        try:
            size = len(code.encode("utf-8"))
        except UnicodeEncodeError as exc:  # stdin's undecodable bytes (surrogateescape)
            raise InputError(
                f"<stdin> is not UTF-8 text (character {exc.start})",
                hint="Send the code as UTF-8.",
            ) from None
        if size > limit:
            raise too_large("<stdin>", size, limit)
        check_source(code, "<stdin>")
        script = Script(_stdin_file(paths, run_id, code), "<stdin>", from_stdin=True, text=code)
        start = request.project or Path.cwd()
    else:
        path = request.script.absolute()
        text = read_script(path, settings.sandbox.max_script_size)
        check_source(text, str(request.script))
        script = Script(path, str(request.script), from_stdin=False, text=text)
        start = request.project or path.parent
    project = (request.project or find_project(start)).absolute()
    if not project.is_dir():
        raise UsageError(
            f"--project {project}: not a directory", hint="Name the project's directory."
        )
    why = unsafe_project(project)
    if why:
        reporter.warning(
            f"not mounting {why} as the project: only the script is visible at {WORKDIR}; "
            "pass --project DIR to mount a project directory"
        )
        return script, None
    return script, project


def _stdin_file(paths: Paths, run_id: str, code: str) -> Path:
    # Read by the sandbox user, so world-readable inside a private directory.
    base = ensure_private_dir(paths.runtime)
    directory = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=base))
    directory.chmod(0o755)
    path = directory / STDIN_NAME
    path.write_text(code, encoding="utf-8")
    path.chmod(0o644)
    return path


def write_file(path: Path, data: bytes) -> None:
    """Write a file the user asked for, atomically, or explain why it cannot be."""
    target = path.absolute()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(target)
    except OSError as exc:
        raise UsageError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="Choose a writable path for the file.",
        ) from None


def remove_quietly(path: Path) -> None:
    """Remove the file code from stdin was written to, and its directory, if they are there."""
    try:
        path.unlink(missing_ok=True)
        path.parent.rmdir()
    except OSError:
        pass
