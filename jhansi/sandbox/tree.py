"""Walking and removing directory trees a sandbox wrote, whatever their shape.

A sandbox controls its home (and a ``--rw`` layer): it can nest directories
thousands deep, take away its own permissions, or plant links. Python 3.11's
``os.walk`` and ``shutil.rmtree`` recurse (a ``RecursionError`` past about a
thousand levels) and build paths longer than the kernel accepts. Here every
walk is iterative, relative to directory descriptors opened without following
links, and bounded in the descriptors it holds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Directories deeper than this are not walked (one descriptor is held per level).
MAX_DEPTH = 256
#: While removing, a directory this deep is moved up to the top instead of entered.
_REMOVE_DEPTH = 64


class TooDeep(OSError):
    """A tree nests deeper than the walk allows."""

    def __init__(self, where: str, limit: int) -> None:
        super().__init__(errno.ELOOP, f"{where}: directories nest deeper than {limit} levels")


def walk(root: Path, *, max_depth: int = MAX_DEPTH) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` as ``(relative path, lstat)``, parents before children.

    Links are entries, never followed; an unreadable directory is listed, not entered.
    Past ``max_depth`` levels it raises :class:`TooDeep`.
    """
    top = os.open(root, _DIR_FLAGS)
    stack: list[tuple[int, str, list[str]]] = []
    try:
        stack.append((top, "", _names(top)))
        while stack:
            fd, prefix, names = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            rel = prefix + name
            yield rel, st
            if not stat.S_ISDIR(st.st_mode):
                continue
            if len(stack) >= max_depth:
                raise TooDeep(rel, max_depth)
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                below = _names(child)
            except OSError:
                os.close(child)
                continue
            stack.append((child, rel + "/", below))
    finally:
        for fd, _, _ in stack:
            with contextlib.suppress(OSError):
                os.close(fd)


def _names(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return sorted((e.name for e in entries), reverse=True)


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything in it, at any depth, without following a link.

    Directories the sandbox made unsearchable are given back their owner's bits
    first; a directory nested past a bounded depth is moved up to the top (same
    file system, a rename) and removed from there, so neither the stack nor the
    descriptors grow with the tree's depth.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    top = os.open(path, _DIR_FLAGS)
    try:
        _empty(top)
    finally:
        os.close(top)
    path.rmdir()


def _empty(top: int) -> None:
    """Remove everything in the directory ``top`` (a descriptor)."""
    stack: list[tuple[int, str]] = [(top, "")]
    moved = 0
    try:
        while stack:
            fd, name_in_parent = stack[-1]
            entered = False
            for name in _names(fd):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=fd)
                    continue
                if len(stack) >= _REMOVE_DEPTH:
                    moved += 1
                    os.rename(
                        name,
                        f".jhansi-removing-{os.getpid()}-{moved}",
                        src_dir_fd=fd,
                        dst_dir_fd=top,
                    )
                    continue
                # A directory the sandbox made unsearchable: its owner may chmod it back
                # (it is a directory, not a link: lstat said so, and nothing runs now).
                with contextlib.suppress(OSError):
                    os.chmod(name, 0o700, dir_fd=fd, follow_symlinks=True)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                stack.append((child, name))
                entered = True
                break
            if entered:
                continue
            stack.pop()
            if stack:
                os.close(fd)
                os.rmdir(name_in_parent, dir_fd=stack[-1][0])
    finally:
        for fd, _name in stack[1:]:
            with contextlib.suppress(OSError):
                os.close(fd)
