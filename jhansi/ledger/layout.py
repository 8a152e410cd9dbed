"""A ledger directory: which one is used, and the files it holds.

A ledger is a directory (mode 0700)::

    ledger.jsonl     the records, one canonical JSON line each        (0600)
    head.json        the signed head: seq and hash of a recent record (0600)
    lock             what appenders flock                             (0600)
    blobs/ab/cd…     content the records reference                    (0600, dirs 0700)

and the signing key lives in ``<data dir>/keys/ledger-ed25519.pem`` (see
:mod:`jhansi.ledger.checkpoint`). Appending is :mod:`jhansi.ledger.store`.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from jhansi.errors import LedgerError
from jhansi.paths import Paths

if TYPE_CHECKING:
    from jhansi.config import Settings

LEDGER_FILE: Final = "ledger.jsonl"
HEAD_FILE: Final = "head.json"
LOCK_FILE: Final = "lock"
BLOBS_DIR: Final = "blobs"


@dataclass(frozen=True, slots=True)
class LedgerLayout:
    """The files of a ledger directory."""

    directory: Path

    @property
    def ledger_file(self) -> Path:
        """The records."""
        return self.directory / LEDGER_FILE

    @property
    def head_file(self) -> Path:
        """The latest signed checkpoint."""
        return self.directory / HEAD_FILE

    @property
    def lock_file(self) -> Path:
        """What appenders lock."""
        return self.directory / LOCK_FILE

    @property
    def blobs_dir(self) -> Path:
        """The content-addressed store."""
        return self.directory / BLOBS_DIR


def default_directory(paths: Paths) -> Path:
    """The ledger when nothing says otherwise: ``<data dir>/ledger``."""
    return paths.data / "ledger"


def resolve_directory(
    settings: Settings | None, paths: Paths, override: Path | None = None
) -> Path:
    """``--ledger DIR``, else ``[ledger] path`` / ``JHANSI_LEDGER``, else the default."""
    if override is not None:
        return override.expanduser().absolute()
    if settings is not None and settings.ledger.path:
        return Path(settings.ledger.path)
    return default_directory(paths)


def follow_directory(directory: Path) -> Path:
    """The ledger directory with a symbolic link to it resolved, once, for the whole process.

    A user may keep the ledger on another disk through a link; a link someone
    else planted must not redirect the ledger. So the link itself must belong
    to this user (or root) and sit in a directory nobody else can write to;
    otherwise :class:`LedgerError`. The resolved path is what jhansi then uses,
    reports and records. Links *inside* the directory are never followed.
    """
    path = directory.absolute()
    try:
        st = os.lstat(path)
    except OSError:
        return path  # created later, by preflight
    if not stat.S_ISLNK(st.st_mode):
        return path
    try:
        parent = path.parent.stat()
    except OSError:
        parent = None
    others_write = parent is not None and parent.st_mode & 0o022 and not parent.st_mode & 0o1000
    if st.st_uid not in (os.getuid(), 0) or others_write:
        raise LedgerError(
            f"the ledger directory {path} is a symbolic link that another user could have "
            "placed (it is not yours, or its directory is writable by others)",
            hint="Point the ledger at the real directory (--ledger DIR, JHANSI_LEDGER, "
            "[ledger] path), or replace the link with one of your own.",
        )
    return Path(os.path.realpath(path))


def not_a_link(path: Path) -> None:
    """Refuse a symbolic link where the ledger keeps a file: it would redirect the writes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise LedgerError(
            f"{path} is a symbolic link: jhansi never reads or appends to a ledger file "
            "through a link (someone could have planted it)",
            hint=f"Replace the link with the file it points to (after checking it), or move "
            f"{path.parent} aside to start a new ledger.",
        )


def hint_for(exc: OSError, directory: Path) -> str:
    """What to do about ``exc``, an error writing to the ledger in ``directory``."""
    code = exc.errno
    elsewhere = (
        "or point the ledger at a writable local directory "
        "(--ledger DIR, JHANSI_LEDGER, or [ledger] path)."
    )
    if code == errno.EROFS:
        return f"{directory} is on a read-only file system: remount it read-write, {elsewhere}"
    if code in (errno.EACCES, errno.EPERM):
        return f"Give your user write access to {directory}, {elsewhere}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"Free some space on the disk holding {directory}, {elsewhere}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"A file is in the way of the directory {directory}: move it, {elsewhere}"
    return f"Check {directory}, {elsewhere}"


__all__ = [
    "BLOBS_DIR",
    "HEAD_FILE",
    "LEDGER_FILE",
    "LOCK_FILE",
    "LedgerLayout",
    "default_directory",
    "follow_directory",
    "hint_for",
    "not_a_link",
    "resolve_directory",
]
