"""The host interpreter a bwrap sandbox runs: found through shims, probed once, cached.

The sandbox runs the host's own Python; what it must bind (the interpreter's
prefixes) and mask (its site-packages) is asked of the interpreter itself, run
isolated from ``/`` so that a project's version files cannot choose it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from jhansi.errors import SandboxError
from jhansi.sandbox.probe import binary_key, cached

#: Runs on the host interpreter (3.8+) with ``-I -S``: what the sandbox must bind and mask.
_PROBE = """\
import json, site, sys
prefixes = sorted({sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix})
print(json.dumps({
    "executable": sys.executable,
    "version": "%d.%d.%d" % sys.version_info[:3],
    "implementation": sys.implementation.name,
    "prefixes": prefixes,
    "site": site.getsitepackages(prefixes),
}))
"""

PYTHON_HINT = (
    "Set [sandbox] python (or JHANSI_SANDBOX_PYTHON) to the path of a Python 3.8+ interpreter."
)


@dataclass(frozen=True, slots=True)
class Interpreter:
    """A host interpreter, as the sandbox will see it."""

    path: Path
    """Its real path (no symlinks, never a shim): what runs in the sandbox."""
    version: str
    implementation: str
    prefixes: tuple[Path, ...]
    """Where its standard library lives (bound read-only)."""
    site_dirs: tuple[Path, ...]
    """Its site-packages directories (masked)."""


def ask_interpreter(path: str, code: str) -> bytes:
    """What the interpreter at ``path`` prints for ``code`` (run isolated, without site).

    Run from ``/``: a version manager's shim picks its interpreter from version files
    in the working directory and its parents (``.python-version``), which a checkout
    controls: an untrusted project must not choose which host interpreter runs.
    """
    try:
        proc = subprocess.run(
            [path, "-I", "-S", "-c", code], capture_output=True, timeout=60, check=False, cwd="/"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"cannot run the interpreter {path}: {exc}", hint=PYTHON_HINT) from None
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip()[-300:]
        raise SandboxError(f"{path} is not a usable Python interpreter: {why}", hint=PYTHON_HINT)
    return proc.stdout


#: Files through which version managers (pyenv, asdf, mise) choose what a shim runs.
_VERSION_FILES = (".python-version", ".tool-versions", ".mise.toml", "mise.toml")
_VERSION_ENV = ("PYENV", "ASDF", "MISE", "RTX")


def _shim_key(path: str, real: str) -> str:
    """Everything a version manager's shim consults to pick an interpreter, as a key.

    The shim's own file, PATH, the managers' variables, and the version files in /
    and in the managers' roots: if any of them changes, the shim is asked again.
    """
    parts = [binary_key(real), os.environ.get("PATH", "")]
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(_VERSION_ENV))
    # The shim is asked from / (see ask_interpreter): the version files there and in the managers'
    # roots are what it reads, never the working directory's.
    roots = [Path("/"), Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))]
    for directory in roots:
        for name in (*_VERSION_FILES, "version"):
            candidate = directory / name
            try:
                st = candidate.stat()
            except OSError:
                continue
            parts.append(f"{candidate}:{st.st_size}:{st.st_mtime_ns}")
    return path + "|" + "|".join(parts)


@cache
def resolve_python(path: str, cache_dir: Path | None = None) -> str:
    """The real path of the interpreter that ``path`` runs, through symlinks and shims
    (pyenv's are shell scripts: asking one costs ~80 ms, so the answer is cached under
    everything the shim consults)."""
    real = os.path.realpath(path)
    try:
        with Path(real).open("rb") as handle:
            if handle.read(4) == b"\x7fELF":
                return real
    except OSError as exc:
        raise SandboxError(
            f"cannot read the interpreter {path}: {exc.strerror or exc}", hint=PYTHON_HINT
        ) from None

    def ask() -> object:
        return ask_interpreter(path, "import sys; print(sys.executable)").decode().strip()

    executable = str(cached(cache_dir, "shims.json", _shim_key(path, real), ask))
    if not executable or not Path(executable).exists():
        raise SandboxError(f"{path} does not say which interpreter it runs", hint=PYTHON_HINT)
    return os.path.realpath(executable)


def _probe(real: str, cache_dir: Path | None) -> object:
    """The probe's answer for the interpreter at ``real``, cached on disk.

    Running it costs ~20 ms of every ``jhansi run``; the answer depends only on the
    binary, so :func:`jhansi.sandbox.probe.cached` keeps it under the binary's stat.
    """
    return cached(
        cache_dir,
        "interpreters.json",
        binary_key(real),
        lambda: json.loads(ask_interpreter(real, _PROBE)),
    )


@cache
def _interpreter_at(real: str, cache_dir: Path | None) -> Interpreter:
    try:
        data = _probe(real, cache_dir)
        assert isinstance(data, dict)  # noqa: S101 - narrowed for the type checker
        version = str(data["version"])
        major_minor = tuple(int(p) for p in version.split(".")[:2])
        prefixes = [Path(os.path.realpath(p)) for p in data["prefixes"]]
        site_dirs = [Path(p) for p in data["site"]]
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise SandboxError(f"{real} answered jhansi's probe with nonsense: {exc}") from None
    if major_minor < (3, 8):
        raise SandboxError(
            f"the interpreter {real} is Python {version}; the sandbox needs 3.8 or newer",
            hint=PYTHON_HINT,
        )
    return Interpreter(
        path=Path(real),
        version=version,
        implementation=str(data.get("implementation", "")),
        prefixes=tuple(prefixes),
        site_dirs=tuple(site_dirs),
    )


def probe_interpreter(path: str, cache_dir: Path | None = None) -> Interpreter:
    """The interpreter that ``path`` runs: its real path, version, prefixes and site
    directories (asked once per process). A bare command name (``python3.12``) is looked
    up on PATH, never taken relative to the current directory."""
    if "/" not in path:
        found = shutil.which(path)
        if not found:
            raise SandboxError(f"no {path} on PATH for the bwrap backend", hint=PYTHON_HINT)
        path = found
    return _interpreter_at(resolve_python(path, cache_dir), cache_dir)


@cache
def default_python() -> str:
    """``python3`` on PATH (possibly a shim: :func:`probe_interpreter` resolves it)."""
    found = shutil.which("python3")
    if not found:
        raise SandboxError("no python3 on PATH for the bwrap backend", hint=PYTHON_HINT)
    return found
