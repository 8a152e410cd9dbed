"""Handing a sandbox's own directories to the host uid the sandbox runs as.

A named sandbox's home (and any other directory the sandbox owns) outlives runs,
and runs of one sandbox may use different backends: rootful Docker and bwrap as
root run the sandbox as host uid 1000, rootless Podman driven by another user as
one of that user's subordinate uids, and an unprivileged user's sandboxes run as
that user. Before each run the backend hands the directory to its uid, so that
every backend sees and writes the same files.
"""

from __future__ import annotations

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
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = os.path.join(root, name)  # noqa: PTH118
            if os.lstat(entry).st_uid != uid:
                os.lchown(entry, uid, gid)
