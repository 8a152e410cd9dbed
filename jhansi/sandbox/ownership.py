"""Handing a sandbox's own directories to the host uid the sandbox runs as.

A named sandbox's home (and any other directory the sandbox owns) outlives runs,
and runs of one sandbox may use different backends: rootful Docker and bwrap as
root run the sandbox as host uid 1000, rootless Podman driven by another user as
one of that user's subordinate uids, and an unprivileged user's sandboxes run as
that user. Before each run the backend hands the directory to its uid, so that
every backend sees and writes the same files.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from jhansi.errors import SandboxError


def hand_over(path: Path, uid: int, gid: int) -> None:
    """Make ``uid:gid`` own ``path`` and everything in it.

    Runs only when the owner differs (the first run, or another engine than
    last time), so the steady state costs one ``lstat``. Symlinks are changed
    themselves, never followed.
    """
    st = path.lstat()
    if st.st_uid == uid and (st.st_gid == gid or os.getuid() != 0):
        return
    if os.getuid() != 0:
        raise SandboxError(
            f"the sandbox runs as host uid {uid}, and jhansi (uid {os.getuid()}) cannot give "
            f"it the sandbox home {path}",
            hint="Use rootless Podman (it maps your own uid into the sandbox), rootful Docker, "
            "or the bwrap backend.",
        )
    from jhansi.sandbox.tree import walk

    os.lchown(path, uid, gid)
    try:
        for rel, entry in walk(path):
            if entry.st_uid != uid or entry.st_gid != gid:
                os.lchown(path / rel, uid, gid)
    except OSError as exc:  # TooDeep, or a path past the kernel's length limit
        raise SandboxError(
            f"cannot hand the sandbox's directory {path} to its user: {exc.strerror or exc}",
            hint="A script nested directories past any real use; remove the sandbox "
            "(`jhansi sandbox rm NAME`) or that directory.",
        ) from None


def _in_subordinate_ranges(ident: int, path: Path) -> str | None:
    """The owner of a ``/etc/subuid``-style range holding ``ident``, if any."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        start, count = int(parts[1]), int(parts[2])
        if start <= ident < start + count:
            return parts[0]
    return None


def check_dedicated_id(uid: int, gid: int) -> None:
    """Refuse to run root's sandbox as ``uid``/``gid`` when anyone else holds them.

    Every process of the sandbox's host uid can signal it, trace it and enter its
    filesystem through ``/proc/PID/root``: the id must belong to no account, group or
    subordinate range (rootless engines' users), or that owner could reach into the
    sandbox, and through ``--rw`` into what jhansi applies to the project.
    """
    import grp
    import pwd

    holders: list[str] = []
    with contextlib.suppress(KeyError):
        holders.append(f"user {pwd.getpwuid(uid).pw_name}")
    with contextlib.suppress(KeyError):
        holders.append(f"group {grp.getgrgid(gid).gr_name}")
    for what, ident, path in (("uid", uid, "/etc/subuid"), ("gid", gid, "/etc/subgid")):
        owner = _in_subordinate_ranges(ident, Path(path))
        if owner is not None:
            holders.append(f"the subordinate {what} range of {owner} ({path})")
    if holders:
        raise SandboxError(
            f"the host id {uid}:{gid} that jhansi gives root's sandboxes is taken by "
            + ", ".join(holders),
            hint="Free that id (it must belong to no account, group or subordinate range), "
            "or run jhansi as an unprivileged user.",
        )
