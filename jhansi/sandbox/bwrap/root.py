"""The sandbox's root filesystem: what of the host a bwrap sandbox sees, all read-only.

``/usr`` and the usrmerge links, the dynamic loader's cache, the CA certificates,
fontconfig's configuration and cache, the interpreter's prefix, with every
``site-packages``/``dist-packages`` directory masked and the kernel state Docker
hides in ``/proc`` hidden too. Working it out globs several trees, so the answer
is kept between runs while the directories it looked into are unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from jhansi.errors import SandboxError
from jhansi.sandbox.bwrap.interpreter import PYTHON_HINT, Interpreter
from jhansi.sandbox.probe import binary_key

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


def is_under(path: str, parent: str) -> bool:
    """Whether ``path`` is ``parent`` or below it (as strings: nothing is resolved)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def parents_of(path: str) -> list[str]:
    """The directories above ``path``, nearest first, without ``/``."""
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
        if text == "/" or is_under(home_text, text):
            raise SandboxError(
                f"the interpreter {interpreter.path} lives in {text}, which would expose "
                + ("the whole host" if text == "/" else "your home directory")
                + " to the sandbox",
                hint=PYTHON_HINT,
            )
        if not any(is_under(text, b) for b in binds):
            binds.append(text)
    if not any(is_under(str(interpreter.path), b) for b in binds):
        binds.append(str(interpreter.path))
    candidates = {host(str(p)) for p in interpreter.site_dirs}
    for root in ("/usr", "/usr/local", *(str(p) for p in interpreter.prefixes)):
        for pattern in _SITE_GLOBS:
            candidates.update(host(root).glob(pattern))
    masks: set[str] = set()
    for candidate in candidates:
        path = inside(candidate) if candidate.is_dir() else None
        if path is not None and any(is_under(path, b) for b in binds):
            masks.add(path)
    # A mask inside another cannot be mounted (the outer one is read-only, and empty).
    kept = sorted(m for m in masks if not any(o != m and is_under(m, o) for o in masks))
    proc = tuple((p, host(p).is_dir()) for p in _PROC_MASKS if host(p).exists())
    return HostRoot(tuple(symlinks), tuple(binds), tuple(kept), proc)


#: Changes when :func:`host_root` binds something new, so that roots kept by an
#: earlier version are not used.
_HOST_ROOT_RULES = 2


@cache
def cached_host_root(interpreter: Interpreter, cache_dir: Path | None = None) -> HostRoot:
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
