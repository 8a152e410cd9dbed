"""Which file system a directory is on, and whether it is a network one.

A ledger on a network file system cannot keep its promises: ``flock`` there is
emulated (NFS) or local to one client (CIFS), ``O_APPEND`` is computed by the
client so two hosts appending at once overwrite each other, and ``fsync`` may
return before the server has the data. jhansi refuses such a ledger rather
than record into it unreliably.

Detection reads ``statfs(2)``'s ``f_type`` (the kernel's magic number for the
file system) and, to name it and to see FUSE file systems such as sshfs, the
type in ``/proc/self/mountinfo``. On other systems, or when neither answers,
nothing is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: statfs f_type magic numbers of network file systems (linux/magic.h and file systems' own).
NETWORK_MAGIC: Final[dict[int, str]] = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x564C: "ncpfs",
    0x73757245: "coda",
    0x5346414F: "afs",
    0x6B414653: "afs",
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x13661366: "ibrix",
}
#: File system names (mountinfo) that are network ones, including FUSE clients.
NETWORK_NAMES: Final = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "ncpfs",
        "coda",
        "afs",
        "ceph",
        "9p",
        "lustre",
        "gpfs",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.davfs",
        "davfs",
        "fuse.cephfs",
        "fuse.gcsfuse",
        "fuse.goofys",
        "fuse.juicefs",
    }
)


@dataclass(frozen=True, slots=True)
class FsInfo:
    """What is known about the file system holding a path."""

    magic: int | None
    """statfs ``f_type``, if it could be read."""
    name: str | None
    """The type in ``/proc/self/mountinfo``, if found (``ext4``, ``nfs4``, ``fuse.sshfs``)."""
    mount_point: str | None

    @property
    def network(self) -> str | None:
        """The network file system's name, or ``None`` if this is not known to be one."""
        if self.name and self.name.lower() in NETWORK_NAMES:
            return self.name
        if self.magic is not None and self.magic in NETWORK_MAGIC:
            return self.name or NETWORK_MAGIC[self.magic]
        return None


def _statfs_magic(path: Path) -> int | None:
    """``f_type`` from statfs(2); ``None`` where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # larger than struct statfs on every arch
        if libc.statfs(os.fsencode(path), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    # f_type is the first member: a long (__fsword_t) except on s390x (unsigned int).
    if os.uname().machine == "s390x":  # platform.machine(), without importing platform
        return ctypes.c_uint.from_buffer(buf).value
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 4 <= len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="replace")


def _mount_fstype(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> tuple[str, str]:
    """(type, mount point) of the mount holding ``path``; ``("", "")`` if unknown."""
    try:
        text = mountinfo.read_text(errors="replace")
    except OSError:
        return "", ""
    target = str(path)
    best, best_type = "", ""
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount_point = _unescape(fields[4])
        inside = (
            target == mount_point
            or mount_point == "/"
            or target.startswith(mount_point.rstrip("/") + "/")
        )
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type, best


def filesystem(path: Path) -> FsInfo:
    """What file system holds ``path`` (its nearest existing ancestor if it does not exist)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    with contextlib.suppress(OSError):
        probe = probe.resolve()
    name, mount_point = _mount_fstype(probe)
    return FsInfo(_statfs_magic(probe), name or None, mount_point or None)
