"""Whether a directory tree is as a walk left it: each directory's device, inode and ctime.

Two walks of the project come before every run on a copy-on-write ``/work``: the
masks (:func:`jhansi.sandbox.masks.find_masked`) and, when the sandbox is not the
project's owner, its writable twins (:func:`jhansi.sandbox.overlay.open_directories`).
On a checkout with a virtual environment in it (thousands of directories) each costs
tens of milliseconds, and their answers change only when a directory's entries or
attributes do. So a walk's answer is kept, with a **stamp** of every directory it
listed, and reused only while every stamp, taken again, is the same.

Why the stamp is ``(st_dev, st_ino, st_ctime_ns)``:

- adding, removing or renaming an entry in a directory, and changing its mode,
  owner or extended attributes, set the directory's ctime to the current time;
- no one can set a ctime by hand: ``utimes`` (``touch -d``, ``tar``, ``rsync -t``)
  sets the mtime, and with it the ctime to *now*, so unlike an mtime a ctime cannot
  be put back to a remembered value (short of setting the machine's clock);
- a mount over a directory changes the device and inode found at its path, and a
  directory replaced by another (or by a link) changes its parent's ctime.

Each stamp is taken *before* its directory is listed, so a change while the walk
lists it is seen next time. Directories are looked up again parents first, without
following a link at the last component; a parent replaced by a link has changed
its own parent's ctime, which is checked first.

A ctime has the resolution of the kernel's coarse clock (a few milliseconds): two
changes to a directory within one tick leave the same ctime. Had the walk listed the
directory between them, the second would go unseen. So where a walk's answer
matters to what the sandbox may see (the masks), it is kept only if every directory
it stamped had last changed well before the walk began (:data:`SETTLED_NS`); a
directory changed just before is walked again next time.

A ctime means all this only where the kernel keeps it for a local file system. On
FUSE (sshfs reports the mtime as ctime, and ``tar`` or ``rsync -t`` put a
directory's mtime back), network file systems (attributes cached, changed by other
machines), FAT (no change time) and the like, a stamp proves nothing: a walk that
stamped a directory on any file system but those of :data:`TRUSTED_TYPES` is not
kept, nor reused if its device is now another type (:func:`trusted`).

What a stamp cannot see is left to the callers, who never keep such a walk: an
answer that depends on where a symbolic link leads (a masked link's target may be
reached through directories outside the tree), a walk that could not look at a
directory (not listed, it has no stamp: what it holds may be seen once it can be,
and that may change with no ctime changing, by a group the user joins), or a walk
cut short by its deadline. The code that made an answer is part of its key
(:func:`code_identity`): a newer jhansi matches anew.
The kept answers live in the sandbox's layer directory, which is jhansi's (0711,
outside anything mounted into a sandbox); an entry that does not read, or whose key
differs, is ignored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: A directory's stamp: its path relative to the tree's root ("" for the root), its
#: device, inode and ctime in nanoseconds.
Stamp = tuple[str, int, int, int]

_FORMAT = 1
#: How long before a walk began every directory it stamped must have last changed, for
#: a walk that must not miss a change to be kept: far beyond a clock tick.
SETTLED_NS = 2_000_000_000
#: Directories a kept walk may name (a larger tree is walked each run).
MAX_STAMPS = 200_000
#: File systems (as ``/proc/self/mountinfo`` names them) on which a directory's ctime
#: is set by the local kernel whenever its entries or attributes change. Not overlayfs
#: (a directory only in a lower layer shows that layer's ctime, whatever it is).
TRUSTED_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs"})
_MOUNTINFO = "/proc/self/mountinfo"


def stamp_of(rel: str, st: os.stat_result) -> Stamp:
    """The stamp of the directory at ``rel`` whose status is ``st``."""
    return (rel, st.st_dev, st.st_ino, st.st_ctime_ns)


def unchanged(root: str, stamps: list[Stamp]) -> bool:
    """Whether every directory stamped under ``root`` is still a directory with the
    same stamp (the root's own status follows a link, as the walk's open did), on a
    file system whose ctimes can be trusted. Stamps without the root's are never
    unchanged (a walk that could not look at its root proves nothing)."""
    if not any(stamp[0] == "" for stamp in stamps):
        return False
    for rel, dev, ino, ctime in stamps:
        try:
            # str paths: thousands of look-ups, no Path object each
            st = os.stat(root) if rel == "" else os.lstat(f"{root}/{rel}")  # noqa: PTH116
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino, st.st_ctime_ns) != (
            dev,
            ino,
            ctime,
        ):
            return False
    return trusted(s[1] for s in stamps)


def trusted(devices: Iterable[int]) -> bool:
    """Whether every device is a mounted file system of :data:`TRUSTED_TYPES` (by
    ``/proc/self/mountinfo``; a device it does not name, such as a btrfs subvolume's
    own, is not trusted)."""
    wanted = set(devices)
    found: dict[int, str] = {}
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="replace") as handle:  # noqa: PTH123
            for line in handle:
                # "ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [TAGS...] - TYPE SOURCE ..."
                fields, _, rest = line.partition(" - ")
                major, _, minor = fields.split(" ", 3)[2].partition(":")
                device = os.makedev(int(major), int(minor))
                if device in wanted:
                    found[device] = rest.split(" ", 1)[0]
    except (OSError, ValueError, IndexError):
        return False
    return all(found.get(device) in TRUSTED_TYPES for device in wanted)


@functools.lru_cache(maxsize=8)
def code_identity(source: str) -> str:
    """What names the code in the file ``source`` (a module's ``__file__``) for a key:
    jhansi's version and the file's BLAKE3, so that an answer is reused only by the code
    that made it (read once per process: the code loaded is the code that runs)."""
    import blake3

    from jhansi._version import __version__

    try:
        with open(source, "rb") as handle:  # noqa: PTH123
            digest = blake3.blake3(handle.read()).hexdigest()
    except OSError:
        digest = "unread"
    return f"{__version__}:{digest}"


def load(cache: Path, key: Mapping[str, Any]) -> tuple[list[list[Stamp]], Any] | None:
    """The kept ``(stamps, answer)`` for ``key``, or ``None`` (none kept, another key,
    or an entry that does not read). The caller checks the stamps (:func:`unchanged`)."""
    try:
        with cache.open("rb") as handle:
            entry = json.loads(handle.read(64 << 20))
    except (OSError, ValueError):
        return None
    try:
        if entry["format"] != _FORMAT or entry["key"] != json.loads(json.dumps(dict(key))):
            return None
        trees = [
            [(str(r), int(d), int(i), int(c)) for r, d, i, c in tree] for tree in entry["stamps"]
        ]
        return trees, entry["answer"]
    except (KeyError, TypeError, ValueError):
        return None


def keep(
    cache: Path,
    key: Mapping[str, Any],
    stamps: list[list[Stamp]],
    answer: Any,
    *,
    began_ns: int | None = None,
) -> None:
    """Keep ``answer`` for ``key`` with the stamps of the trees it came from (each a
    list, checked in order, each with its root's); too many stamps, one on a
    file system not :func:`trusted`, or a cache that cannot be written, and nothing is
    kept (the next run walks again). ``began_ns``: when the walk began
    (:func:`time.time_ns`); a directory that changed less than :data:`SETTLED_NS`
    before it (or after) keeps nothing."""
    settled = None if began_ns is None else began_ns - SETTLED_NS
    if (
        sum(len(tree) for tree in stamps) > MAX_STAMPS
        or (settled is not None and any(s[3] > settled for tree in stamps for s in tree))
        or not all(any(stamp[0] == "" for stamp in tree) for tree in stamps)
        or not trusted(s[1] for tree in stamps for s in tree)
    ):
        forget(cache)
        return
    from jhansi._cache import write_cache_file

    document = {"format": _FORMAT, "key": dict(key), "stamps": stamps, "answer": answer}
    data = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if not write_cache_file(cache, data):
        forget(cache)


def forget(cache: Path) -> None:
    """Drop what is kept (never raises)."""
    with contextlib.suppress(OSError):
        cache.unlink(missing_ok=True)
