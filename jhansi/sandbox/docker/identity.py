"""Who a container sandbox is, inside and on the host, and what that uid can reach.

Decided here, from the engine and the invoking user, because only the backend
knows how the engine maps uids: files the sandbox writes into its home must stay
readable and deletable by the user who ran jhansi, and the sandbox never runs as
root.

- Rootful engine, jhansi run by root: the spec's uid (1000) inside and on the
  host; the home is handed to that uid (``chown``); root can delete anything.
- Rootful engine, jhansi run by user U: U's uid and gid inside, so files are U's.
- Rootless Podman run by the same user as jhansi: ``keep-id``, the invoking uid
  is the uid inside.
- Rootless Podman driven by another user (root in CI): the spec's uid maps to a
  subordinate uid of the engine's user (``/libpod/info`` idMappings); the home
  is handed to that host uid, and every bind source must be reachable by the
  engine's user — if not, a :class:`SandboxError` names the directory.
- Rootless Docker: the spec's uid maps to a subordinate uid that an
  unprivileged user cannot hand the home to; jhansi refuses with the
  alternatives rather than run a sandbox whose files the user could not delete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jhansi.errors import SandboxError
from jhansi.sandbox.engines import EngineInfo, map_id
from jhansi.sandbox.interface import (
    ROOT_SANDBOX_HOST_UID,
    ROOT_SANDBOX_ID_BASE,
    ROOT_SANDBOX_ID_SPAN,
)
from jhansi.sandbox.ownership import check_dedicated_range


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the sandbox runs as, inside and on the host."""

    uid: int
    gid: int
    """The ids inside the container (``User``)."""
    host_uid: int
    host_gid: int
    """The ids that own on the host what the sandbox writes."""
    userns_mode: str | None
    """``keep-id`` for rootless Podman run by the invoking user."""
    engine_uid: int | None
    """The host uid that opens the bind sources, when it is neither root nor the invoker."""
    how: str
    """One line for the record."""


def _subordinate_start(user: str | int, path: Path = Path("/etc/subuid")) -> int | None:
    """The first id of ``user``'s subordinate range (name or uid), if it has one."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == str(user):
            return int(fields[1])
    return None


def username(uid: int) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def sandbox_identity(
    engine: EngineInfo,
    uid: int,
    gid: int,
    *,
    invoker_uid: int | None = None,
    invoker_gid: int | None = None,
    root_id: int = ROOT_SANDBOX_HOST_UID,
) -> Identity:
    """Who the sandbox is for ``engine`` when ``invoker_uid`` runs jhansi (see the module doc).

    ``uid``/``gid`` are the spec's (what a sandbox is when nothing forces otherwise);
    ``root_id`` the host id root's sandbox runs as on a rootful engine (its own:
    :func:`~jhansi.sandbox.interface.spec_root_id`).
    """
    me = os.getuid() if invoker_uid is None else invoker_uid
    my_gid = os.getgid() if invoker_gid is None else invoker_gid
    identity: Identity
    if engine.name == "podman" and engine.rootless and engine.uid_map:
        owner = engine.engine_uid
        if owner == me:
            identity = Identity(
                me, my_gid, me, my_gid, "keep-id", None, f"uid {me} (yours, Podman keep-id)"
            )
        else:
            host_uid = map_id(engine.uid_map, uid)
            host_gid = map_id(engine.gid_map or engine.uid_map, gid)
            if host_uid is None or host_gid is None:
                raise SandboxError(
                    f"rootless Podman (user {username(owner or 0) or owner}) has no host uid "
                    f"for the sandbox's uid {uid}",
                    hint="Give the engine's user a subordinate uid range (`usermod "
                    "--add-subuids 100000-165535 USER`), then `podman system migrate`.",
                )
            identity = Identity(
                uid,
                gid,
                host_uid,
                host_gid,
                None,
                owner,
                f"uid {uid} (host uid {host_uid} of rootless Podman's user "
                f"{username(owner or 0) or owner})",
            )
    elif engine.rootless:
        # Rootless Docker: container root is the daemon's user, 1.. its subordinate range.
        owner_name = username(me) or str(me)
        start = _subordinate_start(owner_name) or _subordinate_start(me)
        if start is None:
            raise SandboxError(
                f"rootless Docker: cannot tell which host uid the sandbox's uid {uid} is "
                f"(no /etc/subuid range for {owner_name})",
                hint="Use rootless Podman, rootful Docker, or the bwrap backend.",
            )
        host = start + uid - 1
        identity = Identity(
            uid, gid, host, host, None, None, f"uid {uid} (host uid {host}, rootless Docker)"
        )
    elif any("name=userns" in s for s in engine.security_options):
        start = _subordinate_start("dockremap")
        if start is None:
            raise SandboxError(
                "the engine remaps user namespaces (userns-remap) but /etc/subuid has no "
                "range for dockremap, so jhansi cannot tell who owns the sandbox's files",
                hint="Use the default userns-remap user (dockremap), or the bwrap backend.",
            )
        gid_start = _subordinate_start("dockremap", Path("/etc/subgid")) or start
        identity = Identity(
            uid,
            gid,
            start + uid,
            gid_start + gid,
            None,
            None,
            f"uid {uid} (host uid {start + uid}, userns-remap)",
        )
    elif me == 0:
        # Not the spec's 1000 (often a person's account, whose processes could trace the
        # container's): the id no one holds, the same bwrap gives root's sandboxes.
        check_dedicated_range(ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN)
        identity = Identity(
            root_id,
            root_id,
            root_id,
            root_id,
            None,
            None,
            f"uid {root_id} (this sandbox's own host id, which no account holds)",
        )
    else:
        identity = Identity(me, my_gid, me, my_gid, None, None, f"uid {me} (yours)")
    if identity.uid == 0:
        raise SandboxError(
            "the sandbox would run as root, which jhansi never does",
            hint="Run jhansi as an unprivileged user, or use rootful Docker as root.",
        )
    return identity


def _groups_of(uid: int, gid: int) -> set[int]:
    name = username(uid)
    if name is None:
        return {gid}
    try:
        return set(os.getgrouplist(name, gid))
    except OSError:
        return {gid}


def permits(st: os.stat_result, uid: int, gids: set[int], want: int) -> bool:
    """Whether ``uid`` (in ``gids``) has ``want`` (``os.R_OK|W_OK|X_OK`` bits) by mode bits.

    ACLs are not read: a directory reachable only through an ACL is reported
    unreachable, which errs on the side of a clear message.
    """
    if uid == 0:
        return True
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def check_traversable(path: Path, uid: int, who: str) -> None:
    """:class:`SandboxError` unless ``uid`` can reach ``path`` (search every parent).

    What a rootless engine needs to bind ``path``: its processes are root only
    inside their user namespace, so on files owned by ids outside it (root's,
    the invoking user's) plain mode bits apply.
    """
    gids = _groups_of(uid, uid)
    for parent in reversed(path.absolute().parents):
        if not permits(parent.stat(), uid, gids, os.X_OK):
            raise SandboxError(
                f"{who} cannot read {parent}, so it cannot mount {path}",
                hint=f"Let it through (`chmod o+x {parent}`), or keep the project, the sandbox "
                "home and jhansi's data in directories that user can reach.",
            )
