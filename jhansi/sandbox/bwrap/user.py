"""Who a bwrap sandbox is on the host, and what that uid can reach.

The sandbox is never host root: when jhansi runs as root, the child drops to
:data:`~jhansi.sandbox.interface.ROOT_SANDBOX_HOST_UID` (the host uid rootful
Docker gives the sandbox too) before bwrap runs, and bwrap makes the user
namespace unprivileged; the mount sources are then bound from descriptors
(:mod:`jhansi.sandbox.sources`). Run by another user, the sandbox is that user.
The sandbox's own directories (``Mount.owned``) are handed to that host uid
before every run (:func:`jhansi.sandbox.ownership.hand_over`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from jhansi.errors import SandboxError
from jhansi.sandbox.bwrap.root import is_under
from jhansi.sandbox.interface import (
    ROOT_SANDBOX_HOST_UID,
    ROOT_SANDBOX_ID_BASE,
    ROOT_SANDBOX_ID_SPAN,
    SANDBOX_UID,
    Mount,
    SandboxSpec,
)
from jhansi.sandbox.ownership import check_dedicated_range, hand_over
from jhansi.sandbox.sources import check_own


def hand_over_dir(path: Path, user: HostUser) -> None:
    """Give a sandbox's own directory to the host uid it runs as (see ``Mount.owned``)."""
    if not user.drop:
        # Run by a user, the sandbox is that user: a directory another uid owns (an
        # engine's run) cannot be taken back without root.
        try:
            st = path.lstat()
        except OSError as exc:
            raise SandboxError(
                f"cannot use the sandbox directory {path}: {exc.strerror or exc}"
            ) from None
        if st.st_uid != user.uid:
            raise SandboxError(
                f"the sandbox directory {path} belongs to uid {st.st_uid}, and the bwrap "
                f"sandbox runs as you (uid {user.uid}), who cannot take it back",
                hint=f"Give it back (`sudo chown -R {user.uid}:{user.gid} {path}`), use "
                "another sandbox (--sandbox NAME), or the backend that made it.",
            )
        return
    check_own(path, None)  # a link here would hand over what it points at
    hand_over(path, user.uid, user.gid)


def _searchable(st: os.stat_result, user: HostUser) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == user.gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def mount_reachable(mount: Mount, spec: SandboxSpec, user: HostUser) -> bool:
    """Whether the sandbox's host uid can reach an ``empty`` (mask) mount's target at all.

    A mask below a directory that uid cannot search (a root-only directory in the
    project) hides nothing the sandbox could see, and unprivileged bwrap could not
    make it: it is left out. Every other mount is kept.
    """
    if mount.kind != "empty":
        return True
    binds = [m for m in spec.mounts if m.kind == "bind" and is_under(mount.target, m.target)]
    if not binds:
        return True
    outer = max(binds, key=lambda m: len(m.target))
    try:
        relative = mount.source.relative_to(outer.source)
    except ValueError:
        return True
    directory = outer.source
    for part in ("", *relative.parts[:-1]):
        directory = directory / part if part else directory
        try:
            if not _searchable(directory.lstat(), user):
                return False
        except OSError:
            return True
    return True


def check_usable(path: Path, user: HostUser, *, write: bool) -> None:
    """Refuse a bind the sandbox's (unprivileged) host uid could not use anyway: a project
    it cannot read (or, writable, write), said plainly rather than as bwrap's chdir error."""
    st = path.stat()
    shift = 6 if st.st_uid == user.uid else 3 if st.st_gid == user.gid else 0
    bits = (st.st_mode >> shift) & 0o7
    wanted = 0o4 | (0o1 if stat.S_ISDIR(st.st_mode) else 0) | (0o2 if write else 0)
    if bits & wanted != wanted:
        what = "read and write" if write else "read"
        raise SandboxError(
            f"the sandbox runs as host uid {user.uid} (jhansi runs as root, and the sandbox is "
            f"never root), which cannot {what} {path} (mode {stat.S_IMODE(st.st_mode):o})",
            hint=(
                f"Let it through (`chmod o+{'rwX' if write else 'rX'} {path}`), "
                if not write
                else "Run without --rw (write to the sandbox home instead), "
            )
            + "or run jhansi as the user who owns it.",
        )


@dataclass(frozen=True, slots=True)
class HostUser:
    """The host uid/gid a bwrap sandbox runs as, and why (for the record)."""

    uid: int
    gid: int
    drop: bool
    """jhansi runs as root: the child drops to ``uid``/``gid`` before bwrap runs."""
    reason: str


def sandbox_host_user(
    uid: int | None = None, gid: int | None = None, *, root_id: int = ROOT_SANDBOX_HOST_UID
) -> HostUser:
    """Who the sandbox is on the host when ``uid`` (default: this process) runs jhansi.

    Never root: root's sandbox runs as ``root_id`` (:func:`spec_root_id`: one id of a
    range no account holds, per sandbox), so that a read-only bind shows it nothing
    root-only, a kernel bug reached from it does not land as root, and no other
    sandbox shares its uid. Anyone else's sandbox is that user.
    """
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    if uid == 0:
        check_dedicated_range(ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN)
        return HostUser(
            root_id,
            root_id,
            drop=True,
            reason=f"host uid {root_id}, gid {root_id}, no supplementary groups (jhansi runs "
            "as root: bwrap is started as that unprivileged uid, this sandbox's own, which no "
            "account holds and rootful Docker gives it too, and makes an unprivileged user "
            f"namespace in which the sandbox is uid {SANDBOX_UID})",
        )
    return HostUser(uid, gid, drop=False, reason=f"host uid {uid} (the user who runs jhansi)")
