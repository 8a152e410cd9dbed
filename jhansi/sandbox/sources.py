"""Mount sources pinned by file descriptor, for a bwrap that runs as another host uid.

Two threats meet here. A mount source named by path can be swapped (a link put
in its place) between jhansi's check and bwrap's mount; and when jhansi runs as
root, bwrap runs as the unprivileged :data:`~jhansi.sandbox.interface.ROOT_SANDBOX_HOST_UID`
and cannot even traverse root's 0700 directories (``/root/.cache``, the runtime
directory, the data directory) to reach the sources.

bwrap's ``--bind-fd`` does not help: bwrap (0.8 to 0.11) turns ``/proc/self/fd/N``
back into a path with ``realpath()`` before mounting, which re-resolves the text
(swappable) as the unprivileged uid (traversal denied). So jhansi, still root in
the child between fork and exec, makes the mounts itself:

1. each source is opened once in jhansi with ``O_PATH | O_NOFOLLOW`` (the last
   component is never a link; a user-chosen path was resolved once before) and its
   device and inode are remembered (:class:`Source`);
2. in the child, in a mount namespace of its own whose mounts never propagate back
   to the host, a small tmpfs (mode 0711) is mounted on a fresh empty directory
   jhansi made in ``/tmp`` (:class:`Staging`), each source is opened again, its
   device and inode compared with those of step 1 (a swapped source is refused),
   and bound from that descriptor (``/proc/self/fd/N``: the kernel binds exactly
   the open object, no path is resolved again) onto an entry of the tmpfs;
3. bwrap, now as the unprivileged uid, binds the tmpfs's entries: their parents
   are traversable, and they cannot change (nothing else sees that namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from jhansi.errors import SandboxError

_CLONE_NEWNS: Final = 0x00020000
_MS_NOSUID: Final = 0x2
_MS_NODEV: Final = 0x4
_MS_NOEXEC: Final = 0x8
_MS_BIND: Final = 0x1000
_MS_REC: Final = 0x4000
_MS_SLAVE: Final = 0x80000
_OPEN_FLAGS: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Source:
    """A mount source opened without following a link, and the object it is."""

    path: Path
    """Where it was opened (no link in its last component)."""
    device: int
    inode: int
    is_dir: bool


def open_source(path: Path) -> tuple[int, Source]:
    """An ``O_PATH`` descriptor of ``path`` (never through a link in its last component).

    Raises :class:`SandboxError` when ``path`` is a link or cannot be opened.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise SandboxError(
            f"cannot open the mount source {path}: {exc.strerror or exc}",
            hint="It was removed or replaced while jhansi prepared the run; run again.",
        ) from None
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        os.close(fd)
        raise SandboxError(
            f"the mount source {path} is a symbolic link",
            hint="Something replaced one of jhansi's own files with a link: remove it and "
            "run again.",
        )
    return fd, Source(path, st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))


def check_own(path: Path, uid: int | None) -> None:
    """Refuse ``path`` unless it is a real directory (not a link) owned by ``uid``
    (any owner with ``None``).

    For the sandbox's own directories (its home), checked right before they are
    opened: a link there would mount whatever it points at.
    """
    try:
        st = path.lstat()
    except OSError as exc:
        raise SandboxError(
            f"cannot use the sandbox directory {path}: {exc.strerror or exc}",
            hint="Run again; if it keeps failing, remove the directory.",
        ) from None
    if not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else f"owned by uid {st.st_uid}"
        raise SandboxError(
            f"the sandbox directory {path} is {what} (mode {stat.S_IMODE(st.st_mode):o}), "
            "not a directory" + (f" of uid {uid}" if uid is not None else ""),
            hint=f"Remove {path} (something else made or replaced it) and run again.",
        )


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc  # loaded once, before any fork
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.unshare.argtypes = [ctypes.c_int]
        _libc = lib
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


class Staging:
    """Where a root jhansi's child binds the sources for an unprivileged bwrap.

    Make it in jhansi (:meth:`add` each source), call :meth:`preexec` in the child
    (as root, before the uid is dropped), and :meth:`close` after the run.
    """

    def __init__(self) -> None:
        self._lib = _lib()  # dlopen before fork: the child only calls
        # A fresh name in the sticky /tmp (not TMPDIR, which may be private: the
        # unprivileged bwrap must traverse it): only root can rename or remove it.
        base = next((p for p in ("/tmp", "/var/tmp") if Path(p).is_dir()), None)  # noqa: S108
        self.directory = Path(tempfile.mkdtemp(prefix="jhansi-stage-", dir=base))
        self._sources: list[tuple[Source, int]] = []
        self._fds: list[int] = []

    def add(self, path: Path) -> str:
        """Open ``path`` now (see :func:`open_source`); the path bwrap should bind instead."""
        fd, source = open_source(path)
        self._fds.append(fd)
        self._sources.append((source, fd))
        return f"{self.directory}/{len(self._sources) - 1}"

    def preexec(self) -> None:
        """In the child, as root: a private mount namespace with every source bound."""
        lib = self._lib
        _check(lib.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        # Nothing mounted from here on reaches the host's namespace.
        _check(lib.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None), "mount --make-rslave /")
        target = os.fsencode(self.directory)
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        _check(lib.mount(b"jhansi", target, b"tmpfs", flags, b"mode=0711,size=16k"), "tmpfs")
        for index, (source, _fd) in enumerate(self._sources):
            entry = os.fsencode(f"{self.directory}/{index}")
            # Opened again here: a descriptor from the host's namespace cannot be bound
            # in this one. It must be the very object opened (and checked) before.
            fd = os.open(source.path, _OPEN_FLAGS | (os.O_DIRECTORY if source.is_dir else 0))
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (source.device, source.inode):
                raise OSError(f"{source.path} was replaced while the sandbox was prepared")
            if source.is_dir:
                os.mkdir(entry, 0o700)  # noqa: PTH102 (bytes path, in the forked child)
            else:
                os.close(os.open(entry, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            fd_path = f"/proc/self/fd/{fd}".encode()
            _check(lib.mount(fd_path, entry, None, _MS_BIND | _MS_REC, None), f"bind {source.path}")
            os.close(fd)

    def close(self) -> None:
        """Close the descriptors and remove the (empty, on the host) directory."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        with contextlib.suppress(OSError):
            self.directory.rmdir()
        if self.directory.exists():  # pragma: no cover (the tmpfs never reaches the host)
            shutil.rmtree(self.directory, ignore_errors=True)
