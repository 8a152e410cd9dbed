"""A real FUSE file system for tests: a read-only view of a directory whose every entry
reports its ctime as its mtime, as sshfs does (SFTP has no change time).

On such a file system a directory's ctime does not tell that its entries changed:
``touch -d``, ``tar`` or ``rsync -t`` put a directory's mtime back, and with it the
ctime seen through the mount. It speaks the kernel's FUSE protocol on ``/dev/fuse``
itself (no libfuse binding is installed here); mounting needs root, so callers run
it in a private mount namespace (``unshare -m``)::

    mount_view(backing, target)   # served by a daemon thread until the process ends

Only what a walk, an overlay and a read need is answered; every other request gets
ENOSYS, as from a file system that lacks it. Nothing is cached by the kernel (every
entry and attribute is valid for 0 s), so each look-up reaches the backing directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import threading

_IN = struct.Struct("<IIQQIIIHH")  # fuse_in_header
_OUT = struct.Struct("<IiQ")  # fuse_out_header
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr
_ENTRY = struct.Struct("<QQQQII")  # fuse_entry_out before its fuse_attr
_DIRENT = struct.Struct("<QQII")

_LOOKUP, _FORGET, _GETATTR, _OPEN, _READ, _STATFS, _RELEASE = 1, 2, 3, 14, 15, 17, 18
_FLUSH, _INIT, _OPENDIR, _READDIR, _RELEASEDIR, _DESTROY, _BATCH_FORGET = 25, 26, 27, 28, 29, 38, 42


def _attr(st: os.stat_result) -> bytes:
    mtime, mtime_ns = divmod(st.st_mtime_ns, 1_000_000_000)
    return _ATTR.pack(
        st.st_ino,
        st.st_size,
        st.st_blocks,
        int(st.st_atime),
        mtime,
        mtime,  # ctime: the mtime, as sshfs reports it
        0,
        mtime_ns,
        mtime_ns,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_rdev,
        4096,
        0,
    )


def _serve(fd: int, backing: str) -> None:
    paths = {1: backing}
    nodes = {backing: 1}

    def node(path: str) -> int:
        if path not in nodes:
            nodes[path] = len(paths) + 1
            paths[nodes[path]] = path
        return nodes[path]

    while True:
        try:
            data = os.read(fd, 1 << 20)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                continue  # a request interrupted before it was read
            return  # unmounted
        length, op, unique, nodeid, *_ = _IN.unpack_from(data)
        body = data[_IN.size : length]

        def reply(payload: bytes = b"", error: int = 0, unique: int = unique) -> None:
            os.write(fd, _OUT.pack(_OUT.size + len(payload), -error, unique) + payload)

        if op in (_FORGET, _BATCH_FORGET):
            continue  # never answered
        try:
            if op == _INIT:
                # fuse_init_out: protocol 7.31, max_write 64 KiB, time granularity 1 ns
                reply(struct.pack("<IIIIHHIIHHII24x", 7, 31, 0, 0, 1, 1, 65536, 1, 1, 0, 0, 0))
            elif op == _LOOKUP:
                name = body.split(b"\0")[0].decode()
                path = f"{paths[nodeid]}/{name}"
                reply(_ENTRY.pack(node(path), 0, 0, 0, 0, 0) + _attr(os.lstat(path)))
            elif op == _GETATTR:
                reply(struct.pack("<QII", 0, 0, 0) + _attr(os.lstat(paths[nodeid])))
            elif op == _OPENDIR:
                reply(struct.pack("<QIi", 0, 0, 0))
            elif op == _READDIR:
                _, offset, size = struct.unpack_from("<QQI", body)
                reply(_listing(paths[nodeid], offset, size))
            elif op == _OPEN:
                reply(struct.pack("<QIi", os.open(paths[nodeid], os.O_RDONLY), 0, 0))
            elif op == _READ:
                handle, offset, size = struct.unpack_from("<QQI", body)
                reply(os.pread(handle, size, offset))
            elif op == _RELEASE:
                os.close(struct.unpack_from("<Q", body)[0])
                reply()
            elif op == _STATFS:  # overlayfs asks its layers for their name length
                v = os.statvfs(backing)
                reply(
                    struct.pack(
                        "<QQQQQIIII24x",
                        v.f_blocks,
                        v.f_bfree,
                        v.f_bavail,
                        v.f_files,
                        v.f_ffree,
                        v.f_bsize,
                        255,
                        v.f_frsize,
                        0,
                    )
                )
            elif op in (_FLUSH, _RELEASEDIR):
                reply()
            elif op == _DESTROY:
                reply()
                return
            else:
                reply(error=errno.ENOSYS)
        except OSError as exc:
            reply(error=exc.errno or errno.EIO)


def _listing(path: str, offset: int, size: int) -> bytes:
    with os.scandir(path) as entries:
        names = [".", "..", *sorted(e.name for e in entries)]
    out = b""
    for index, name in enumerate(names[offset:], start=offset + 1):
        st = os.lstat(path if name in (".", "..") else f"{path}/{name}")
        raw = name.encode()
        entry = _DIRENT.pack(st.st_ino, index, len(raw), stat.S_IFMT(st.st_mode) >> 12) + raw
        entry += b"\0" * (-len(entry) % 8)
        if len(out) + len(entry) > size:
            break
        out += entry
    return out


def mount_view(backing: str, target: str) -> None:
    """Mount the view of ``backing`` at ``target`` (type ``fuse.sshlike``), served by a
    daemon thread of this process."""
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={fd},rootmode=40755,user_id=0,group_id=0,allow_other".encode()
    flags = 2 | 4  # MS_NOSUID | MS_NODEV
    if libc.mount(b"sshlike", target.encode(), b"fuse.sshlike", flags, options) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot mount a FUSE view at {target}: {os.strerror(code)}")
    threading.Thread(target=_serve, args=(fd, backing), daemon=True).start()
