"""Handing a sandbox's own directories to the host uid the sandbox runs as.

A named sandbox's home (and any other directory the sandbox owns) outlives runs,
and runs of one sandbox may use different backends: rootful Docker and bwrap as
root run the sandbox as host uid 1000, rootless Podman driven by another user as
one of that user's subordinate uids, and an unprivileged user's sandboxes run as
that user. Before each run the backend hands the directory to its uid, so that
every backend sees and writes the same files.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from jhansi.errors import SandboxError

#: Mode bits a file the sandbox left behind never keeps from one run to the next.
_SETID = stat.S_ISUID | stat.S_ISGID


def hand_over(path: Path, uid: int, gid: int) -> None:
    """Make ``uid:gid`` own ``path`` and everything in it, private, with no setuid or
    setgid file in it.

    Every run: a sandbox may have left a setuid copy of a shell in its home (Docker's
    seccomp profile lets a container's user set it on its own files) and opened the
    home to others (``chmod 755``); another local user running that file would
    become the sandbox's host uid and could enter its next run. So the directory
    goes back to 0700 and every setuid/setgid bit on a file is cleared. Ownership
    changes only where it differs (the first run, or another engine than last time).
    Symlinks are changed themselves, never followed.
    """
    st = path.lstat()
    change_owner = not (st.st_uid == uid and (st.st_gid == gid or os.getuid() != 0))
    if change_owner and os.getuid() != 0:
        raise SandboxError(
            f"the sandbox runs as host uid {uid}, and jhansi (uid {os.getuid()}) cannot give "
            f"it the sandbox home {path}",
            hint="Use rootless Podman (it maps your own uid into the sandbox), rootful Docker, "
            "or the bwrap backend.",
        )
    from jhansi.sandbox.interface import ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN
    from jhansi.sandbox.tree import walk

    if (
        os.getuid() == 0
        and ROOT_SANDBOX_ID_BASE <= uid < ROOT_SANDBOX_ID_BASE + ROOT_SANDBOX_ID_SPAN
    ):
        evict(uid)
    try:
        if change_owner:
            os.lchown(path, uid, gid)
        if stat.S_IMODE(st.st_mode) != 0o700:
            path.chmod(0o700)
        for rel, entry in walk(path):
            if change_owner and (entry.st_uid != uid or entry.st_gid != gid):
                os.lchown(path / rel, uid, gid)  # chown clears setuid/setgid itself
            elif entry.st_mode & _SETID and stat.S_ISREG(entry.st_mode):
                _clear_setid(path / rel)
    except OSError as exc:  # TooDeep, or a path past the kernel's length limit
        raise SandboxError(
            f"cannot hand the sandbox's directory {path} to its user: {exc.strerror or exc}",
            hint="A script nested directories past any real use; remove the sandbox "
            "(`jhansi sandbox rm NAME`) or that directory.",
        ) from None


def _clear_setid(file: Path) -> None:
    """Clear the setuid and setgid bits of the regular file ``file``, by descriptor (a
    link swapped in its place is never followed; a FIFO is not waited on)."""
    fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_mode & _SETID:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~_SETID)
    finally:
        os.close(fd)


def evict(uid: int) -> int:
    """Kill every process of host ``uid`` (one of root's sandbox ids, held for a run by
    its sandbox's lock); return how many.

    No account holds the id, so a process that has it outside a running sandbox got
    it through a file a sandbox left behind, and would wait there to enter the
    sandbox's next run.
    """
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            os.kill(int(entry.name), 9)
            killed += 1
        except OSError:
            continue
    return killed


@functools.cache
def check_dedicated_range(base: int, span: int) -> None:
    """Refuse to run root's sandboxes as ids in ``[base, base + span)`` when anyone else
    holds one (asked once per process).

    Every process of a sandbox's host uid can signal it, trace it and enter its
    filesystem through ``/proc/PID/root``: no id of the range may belong to an
    account, a group or a subordinate range (rootless engines' users), or that owner
    could reach into a sandbox, and through ``--rw`` into what jhansi applies to a
    project.
    """
    import grp
    import pwd

    end = base + span
    holders = [f"user {u.pw_name}" for u in pwd.getpwall() if base <= u.pw_uid < end]
    holders += [f"group {g.gr_name}" for g in grp.getgrall() if base <= g.gr_gid < end]
    for what, path in (("uid", "/etc/subuid"), ("gid", "/etc/subgid")):
        owner = _overlapping_range(base, span, Path(path))
        if owner is not None:
            holders.append(f"the subordinate {what} range of {owner} ({path})")
    if holders:
        raise SandboxError(
            f"the host ids {base}-{end - 1} that jhansi gives root's sandboxes are taken by "
            + ", ".join(holders[:3]),
            hint="Free those ids (they must belong to no account, group or subordinate "
            "range), or run jhansi as an unprivileged user.",
        )


def _overlapping_range(base: int, span: int, path: Path) -> str | None:
    """The owner of a ``/etc/subuid``-style range that overlaps ``[base, base + span)``."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        start, count = int(parts[1]), int(parts[2])
        if start < base + span and base < start + count:
            return parts[0]
    return None
