"""Reading the sandbox's upper layer (and the project below it) without following a link.

The upper directory is a tree the sandbox wrote. Host code reads it only by
descriptor: directories opened ``O_NOFOLLOW | O_DIRECTORY`` component by component,
entries ``lstat``-ed, regular files opened ``O_NOFOLLOW | O_NONBLOCK`` and checked
with ``fstat``; links are read, never followed; FIFOs, sockets and devices are never
opened. Overlay's own markers are read the way the kernel does: a character device
0/0 is a *whiteout* (the name was deleted), a directory with ``overlay.opaque=y``
hides everything below it in the lower layers — in the attribute namespace the
layer's mount used (``state.json``'s ``xattr``) and no other: a script may set the
other one, and the kernel ignores it. Redirects and metacopy are off (the
backends mount with ``redirect_dir=off``/``nofollow``), so no other marker exists.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import blake3

from jhansi.sandbox.interface import XattrNamespace
from jhansi.sandbox.layer import _DIR_FLAGS, _FILE_FLAGS, Entry, _lentry, _parent, _walk

#: The overlay attribute that makes a directory hide the lower layers below it.
OPAQUE = "overlay.opaque"
_NAMESPACES: tuple[XattrNamespace, ...] = ("user", "trusted")


def is_whiteout(st: os.stat_result) -> bool:
    """Whether an upper entry is overlayfs's mark of a deleted name (char device 0/0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def namespace_of(value: object) -> XattrNamespace | None:
    """The overlay attribute namespace a layer's state records (``None``: unknown)."""
    return next((n for n in _NAMESPACES if n == value), None)


def is_opaque(dir_fd: int, namespace: XattrNamespace | None) -> bool:
    """Whether the directory ``dir_fd`` hides the lower layers below it, as the kernel
    read it: in the ``namespace`` the layer's mount uses, never another (a script may
    set ``user.overlay.opaque`` where the overlay uses ``trusted.*``: the kernel ignores
    it, and so must jhansi). Unknown namespace: nothing is opaque (nothing deleted)."""
    if namespace is None:
        return False
    try:
        return os.getxattr(dir_fd, f"{namespace}.{OPAQUE}") == b"y"
    except OSError:
        return False


def listing(where: int | Path) -> list[str]:
    """The names in the directory ``where`` (a descriptor, or a path)."""
    with os.scandir(where) as entries:
        return [e.name for e in entries]


def project_entry(project_fd: int, rel: str) -> Entry | None:
    """The project's entry at ``rel`` (``None``: absent, or below a link or a file)."""
    try:
        with _parent(project_fd, rel) as (parent, name):
            return _lentry(name, parent)
    except (OSError, ValueError):
        return None


def project_subtree(project_fd: int, rel: str) -> list[tuple[str, Entry]]:
    """The project's entries below the directory ``rel`` (parents first)."""
    try:
        with _parent(project_fd, rel) as (parent, name):
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except (OSError, ValueError):
        return []
    try:
        return [(f"{rel}/{sub}", entry) for sub, entry, _ in _walk(fd)]
    finally:
        os.close(fd)


def read_small(root: Path, rel: str, limit: int) -> bytes | None:
    """The bytes of the regular file ``rel`` under ``root`` if it has at most ``limit``
    (no link followed on the way; ``None`` otherwise)."""
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return None
    try:
        with _parent(root_fd, rel) as (parent, name):
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            return os.read(fd, limit + 1)[:limit]
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None
    finally:
        os.close(root_fd)


def hash_file(root: Path, rel: str) -> str | None:
    """BLAKE3 of the regular file ``rel`` under ``root`` (no link followed), or ``None``."""
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return None
    try:
        with _parent(root_fd, rel) as (parent, name):
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            hasher = blake3.blake3()
            while chunk := os.read(fd, 1 << 20):
                hasher.update(chunk)
            return hasher.hexdigest()
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None
    finally:
        os.close(root_fd)
