"""The one wrapper around the uv binary: its environment, its configuration, its errors.

The binary comes from the ``uv`` PyPI package (a dependency of jhansi), never
from ``PATH``, so that the resolver is the version jhansi was tested with.

Configuration. uv reads its settings from the environment (``UV_*``) and from
``uv.toml`` / ``pyproject.toml`` files it discovers upwards from its working
directory, plus the user's and the system's ``uv.toml``. jhansi keeps what the
*user* configured and drops what a *project* could inject:

* ``UV_NO_CONFIG=1`` turns discovery off, and the user-level file
  (``$XDG_CONFIG_HOME/uv/uv.toml``, else the system-level one) is handed back
  explicitly through ``UV_CONFIG_FILE`` — unless the user set ``UV_CONFIG_FILE``
  themselves, which wins. A ``uv.toml`` inside the project never counts: a
  sandboxed script run with ``--rw`` could write one into ``/work`` and redirect
  the next lock to an index of its choosing. (uv merges user and system files;
  jhansi honours one of them, the user's when both exist.)
* The user's index settings pass through untouched (``UV_INDEX_URL``,
  ``UV_DEFAULT_INDEX``, ``UV_INDEX``, ``UV_EXTRA_INDEX_URL``, ``UV_FIND_LINKS``,
  ``UV_INDEX_STRATEGY``, ``UV_KEYRING_PROVIDER``, ``UV_CACHE_DIR``, ``UV_OFFLINE``,
  proxies, certificates …). uv ignores pip's settings; jhansi maps
  ``PIP_INDEX_URL`` and ``PIP_EXTRA_INDEX_URL`` onto uv's when the user has no uv
  index setting, so a CI job configured for pip keeps its mirror. No index host
  is named anywhere in jhansi.
* Variables that would change what jhansi asked for, without being part of a
  lock's recorded inputs, are removed (:data:`OVERRIDDEN`): hash checking off,
  source builds forced, constraints, resolution strategy, a cut-off date …
* ``UV_PYTHON_DOWNLOADS=never``: uv never fetches an interpreter; it is handed
  the one running jhansi (``--python``), which it only uses to byte-compile
  and to name script shebangs: what packages are chosen depends on
  ``--python-version`` / ``--python-platform`` alone.

Every call is logged at DEBUG on the ``jhansi.uv`` logger as ``uv call: ARGS``
(the tests count uv calls from that log: a warm run makes none).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jhansi._subprocess import run_tool
from jhansi.errors import ExitCode, ToolError
from jhansi.report import Reporter

logger = logging.getLogger("jhansi.uv")

#: Variables removed from uv's environment: jhansi passes its own value, or the
#: setting would change the lock or the environment outside the lock's inputs.
OVERRIDDEN = frozenset(
    {
        "UV_NO_CONFIG",
        "UV_PYTHON",
        "UV_PYTHON_DOWNLOADS",
        "UV_SYSTEM_PYTHON",
        "UV_BREAK_SYSTEM_PACKAGES",
        "UV_PROJECT",
        "UV_PROJECT_ENVIRONMENT",
        "UV_WORKING_DIR",
        "UV_NO_VERIFY_HASHES",
        "UV_COMPILE_BYTECODE",
        "UV_LINK_MODE",
        "UV_NO_BUILD",
        "UV_NO_BUILD_PACKAGE",
        "UV_NO_BINARY",
        "UV_NO_BINARY_PACKAGE",
        "UV_NO_BUILD_ISOLATION",
        "UV_NO_BUILD_ISOLATION_PACKAGE",
        "UV_CONSTRAINT",
        "UV_OVERRIDE",
        "UV_BUILD_CONSTRAINT",
        "UV_EXCLUDE",
        "UV_EXCLUDE_NEWER",
        "UV_PRERELEASE",
        "UV_RESOLUTION",
        "UV_FORK_STRATEGY",
        "UV_TORCH_BACKEND",
        "UV_NO_SOURCES",
    }
)

#: pip's index variables, and the uv variables that take precedence over each.
_PIP_INDEX = (
    ("PIP_INDEX_URL", "UV_DEFAULT_INDEX", ("UV_DEFAULT_INDEX", "UV_INDEX_URL")),
    ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL", ("UV_EXTRA_INDEX_URL", "UV_INDEX")),
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

DEFAULT_TIMEOUT = 600.0
"""Seconds a uv call may take; a cold install of a large stack is the slow case."""


def uv_binary() -> Path:
    """The uv executable shipped by the ``uv`` PyPI package."""
    try:
        from uv import find_uv_bin

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError) as exc:
        raise ToolError(
            f"cannot find the uv binary jhansi depends on ({exc.__class__.__name__})",
            hint="Reinstall jhansi: `uv tool install --reinstall jhansi` or "
            "`pip install --force-reinstall jhansi` (uv is one of its dependencies).",
            exit_code=ExitCode.DEPENDENCIES,
        ) from None


def host_python() -> str | None:
    """The interpreter running jhansi, which uv is told to use instead of searching."""
    return sys.executable or None


def _user_config_file(env: Mapping[str, str]) -> Path | None:
    """The ``uv.toml`` uv itself would read for this user, else the system's."""
    candidates: list[Path] = []
    xdg_home = env.get("XDG_CONFIG_HOME")
    if xdg_home:
        candidates.append(Path(xdg_home) / "uv" / "uv.toml")
    elif env.get("HOME"):
        candidates.append(Path(env["HOME"]) / ".config" / "uv" / "uv.toml")
    for directory in (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":"):
        if directory:
            candidates.append(Path(directory) / "uv" / "uv.toml")
    candidates.append(Path("/etc/uv/uv.toml"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def uv_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment uv runs with: ``base`` (default: this process's) made safe.

    See the module docstring for what is kept, dropped and set, and why.
    """
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k not in OVERRIDDEN}
    for pip_name, uv_name, uv_names in _PIP_INDEX:
        value = env.get(pip_name, "").strip()
        if value and not any(env.get(name) for name in uv_names):
            env[uv_name] = value
    if not env.get("UV_CONFIG_FILE"):
        env.pop("UV_CONFIG_FILE", None)
        config = _user_config_file(env)
        if config is not None:
            env["UV_CONFIG_FILE"] = str(config)
    env["UV_NO_CONFIG"] = "1"
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_NO_PROGRESS"] = "1"
    env["NO_COLOR"] = "1"
    return env


def resolver_settings(base: Mapping[str, str] | None = None) -> str:
    """What, besides the requirements and the target, decides what uv resolves.

    uv's and pip's variables as uv gets them (:func:`uv_environment`: the user's
    indexes, ``UV_PRERELEASE``, ``UV_RESOLUTION``...) and the bytes of the config file
    it reads, as one string: two lock decisions with equal settings resolve alike.
    Keys only; it holds index credentials, so it is hashed, never stored.
    """
    import json

    env = uv_environment(base)
    names = sorted(k for k in env if k.startswith(("UV_", "PIP_")))
    config: str | None = None
    if env.get("UV_CONFIG_FILE"):
        try:
            config = Path(env["UV_CONFIG_FILE"]).read_bytes().hex()
        except OSError:
            config = "unreadable"
    return json.dumps([[k, env[k]] for k in names] + [config], ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class NoWheel:
    """uv refused a package because no wheel of it fits the target (jhansi never builds)."""

    name: str
    """The distribution, as uv spelled it."""
    spec: str
    """The version or range uv named (``==1.0.0``, ``<=2.3.1``), or ``""``."""
    detail: str
    """uv's own explanation (which tags it found instead), one line, or ``""``."""


_NO_WHEEL_RESOLVE = re.compile(
    r"(?:^|\s)(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<spec>(?:==|<=|>=|!=|~=|<|>)[^\s]*)? "
    r"ha(?:s|ve) no (?:usable wheels|wheels with a matching)"
)
_NO_WHEEL_REQUIRED = re.compile(r"Wheels are required for `(?P<name>[^`]+)`")
_NO_WHEEL_INSTALL = re.compile(
    r"Package `(?P<name>[^`]+)` can't be installed because it (?:is marked as `--no-build` "
    r"but )?has no (?:binary distribution|compatible wheel)"
)


def no_wheel(stderr: str) -> NoWheel | None:
    """Recognise uv's "no wheel for this target" failures (resolver or installer)."""
    text = _ANSI.sub("", stderr)
    details = [
        " ".join(line.split()[1:])
        for line in _paragraphs(text)
        if line.startswith("hint:") and "building from source is disabled" not in line
    ]
    detail = details[0] if details else ""
    match = _NO_WHEEL_RESOLVE.search(text)
    if match:
        return NoWheel(match["name"], match["spec"] or "", detail)
    match = _NO_WHEEL_INSTALL.search(text) or _NO_WHEEL_REQUIRED.search(text)
    if match:
        return NoWheel(match["name"], "", detail)
    return None


_NOT_FOUND = re.compile(
    r"Because (?P<name>[A-Za-z0-9][A-Za-z0-9._-]*) was not found in the package registry"
)


def not_found(stderr: str) -> str | None:
    """The distribution uv could not find on any configured index, if that is what failed."""
    match = _NOT_FOUND.search(_ANSI.sub("", stderr))
    return match["name"] if match else None


def _paragraphs(text: str) -> list[str]:
    """uv's message lines, with indented continuation lines joined to the line above."""
    out: list[str] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if raw[:1].isspace() and out and not raw.strip().startswith("cause:"):
            out[-1] = f"{out[-1]} {raw.strip()}"
        else:
            out.append(raw.strip())
    return out


def error_summary(stderr: str, *, limit: int = 400) -> str:
    """One line saying why uv failed: its ``error:`` line, first and last ``cause:``."""
    lines = [" ".join(line.split()) for line in _paragraphs(_ANSI.sub("", stderr))]
    picked: list[str] = []
    for index, line in enumerate(lines):
        if line.startswith("error:"):
            picked.append(line.removeprefix("error:").strip())
            causes = [c for c in lines[index + 1 :] if c.startswith("cause:")]
            # The first cause says what uv was doing, the last one the root of it.
            ends = causes[:1] + causes[-1:] if len(causes) > 1 else causes
            picked.extend(c.removeprefix("cause:").strip() for c in ends)
            break
    if not picked:
        picked = [line for line in lines if not line.startswith("warning:")][-1:]
    summary = ": ".join(p.rstrip(".:") for p in picked if p) or "uv failed"
    return summary if len(summary) <= limit else summary[: limit - 1] + "…"


def run_uv(
    args: Sequence[str | Path],
    *,
    what: str,
    hint: str = "",
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    reporter: Reporter | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``uv ARGS`` and return its result; a failure raises :class:`ToolError` (exit 7).

    ``env`` is the environment to start from (default: this process's), made
    safe by :func:`uv_environment`. ``what`` names the step for the message
    ("resolve dependencies with uv"), ``hint`` says what to do when it fails.
    uv's ``warning:`` lines go to ``reporter.warning``. The raised error's
    ``stderr`` holds everything uv said, for callers that diagnose it
    (:func:`no_wheel`, :func:`not_found`).
    """
    argv = [str(a) for a in args]
    logger.debug("uv call: %s", shlex.join(argv))
    started = time.perf_counter()
    try:
        proc = run_tool(
            [uv_binary(), *argv],
            what=what,
            hint=hint,
            env=uv_environment(env),
            input=input,
            timeout=timeout,
            check=False,
            cwd=cwd,
        )
    except ToolError as exc:  # not startable, or timed out: still a dependency failure
        raise ToolError(
            exc.message, hint=exc.hint, stderr=exc.stderr, exit_code=ExitCode.DEPENDENCIES
        ) from None
    logger.debug("uv took %.3f s (%s)", time.perf_counter() - started, what)
    stderr = proc.stderr.decode("utf-8", "replace")
    if reporter is not None:
        for line in _paragraphs(_ANSI.sub("", stderr)):
            if line.startswith("warning:"):
                reporter.warning("uv: " + " ".join(line.removeprefix("warning:").split()))
    if proc.returncode != 0:
        logger.debug("uv failed with exit status %d:\n%s", proc.returncode, stderr)
        raise ToolError(
            f"cannot {what}: {error_summary(stderr)}",
            hint=hint or "Run again with --debug to see everything uv said.",
            stderr=stderr,
            exit_code=ExitCode.DEPENDENCIES,
        )
    return proc
