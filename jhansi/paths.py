"""Where jhansi keeps its data, configuration, cache and runtime files.

The platform's conventions come from platformdirs. ``JHANSI_HOME`` relocates all
four under one directory (``data/``, ``config/``, ``cache/``, ``run/``), which is
what tests and throwaway CI machines use.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jhansi.errors import SandboxError

APP_NAME = "jhansi"


@dataclass(frozen=True, slots=True)
class Paths:
    """The four directories jhansi uses; none is created until it is needed."""

    data: Path
    """Ledger, named sandboxes, signing keys: what must outlive a cache wipe."""
    config: Path
    """The user configuration file ``config.toml``."""
    cache: Path
    """Environments and other content-addressed caches: safe to delete."""
    runtime: Path
    """Sockets and locks of running sandboxes."""

    @property
    def user_config_file(self) -> Path:
        """The user-level configuration file."""
        return self.config / "config.toml"

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Paths:
        """The directories for this user, honouring ``JHANSI_HOME`` when it is set."""
        env = os.environ if environ is None else environ
        home = env.get("JHANSI_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(
                data=root / "data",
                config=root / "config",
                cache=root / "cache",
                runtime=root / "run",
            )
        import platformdirs

        dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
        # platformdirs warns and falls back to a shared /tmp path without
        # XDG_RUNTIME_DIR (cron, CI, su): use a per-user directory instead.
        xdg_runtime = env.get("XDG_RUNTIME_DIR")
        if xdg_runtime:
            runtime = Path(xdg_runtime) / APP_NAME
        else:
            runtime = Path(tempfile.gettempdir()) / f"{APP_NAME}-{os.getuid()}"
        return cls(
            data=Path(dirs.user_data_dir),
            config=Path(dirs.user_config_dir),
            cache=Path(dirs.user_cache_dir),
            runtime=runtime,
        )


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _refuse(path: Path, why: str) -> SandboxError:
    return SandboxError(
        f"jhansi will not use {path}: {why}",
        hint=f"Remove {path} if something else made it, or point jhansi elsewhere: set "
        "XDG_RUNTIME_DIR (run files) or JHANSI_HOME (all of jhansi's directories) to a "
        "directory of yours.",
    )


def check_private_dir(path: Path, *, uid: int | None = None) -> None:
    """Refuse ``path`` unless it is a real directory of ``uid`` (default: this process)
    that nobody else can write.

    Anyone who can write it (or who made it before jhansi did, in a shared place such
    as ``/tmp``) could put a link where jhansi then mounts or writes a file.
    """
    import stat

    uid = os.geteuid() if uid is None else uid
    try:
        st = path.lstat()
    except OSError as exc:
        raise _refuse(path, exc.strerror or str(exc)) from None
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, f"it is a symbolic link (owned by {_owner(st.st_uid)})")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, f"it is not a directory (owned by {_owner(st.st_uid)})")
    if st.st_uid != uid:
        raise _refuse(
            path, f"it is owned by {_owner(st.st_uid)}, not {_owner(uid)} (mode {mode:o})"
        )
    if mode & 0o022:
        raise _refuse(
            path, f"it is writable by {'others' if mode & 0o002 else 'its group'} (mode {mode:o})"
        )


def _check_ancestor(path: Path, uid: int, gid: int) -> None:
    """A directory above one of jhansi's: whoever can rename entries in it could swap
    jhansi's directory. Root, the user, or a sticky directory (``/tmp``) only."""
    import stat

    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, uid):
        raise _refuse(
            path,
            f"it is owned by {_owner(st.st_uid)} (mode {mode:o}), who could swap "
            "what jhansi keeps in it",
        )
    writable = mode & 0o002 or (mode & 0o020 and st.st_gid != gid)
    if writable and not mode & stat.S_ISVTX:
        raise _refuse(path, f"others can rename what is in it (mode {mode:o}, not sticky)")


def ensure_private_dir(path: Path, *, mode: int = 0o700) -> Path:
    """Create ``path`` (and missing parents) with ``mode`` if missing, check it; return it.

    Whether made now or found, ``path`` must be a real directory of this user that
    nobody else can write (:func:`check_private_dir`), and so must every parent
    jhansi makes; the parents it finds must be the user's or root's, or sticky.
    Raises :class:`~jhansi.errors.SandboxError` naming the directory otherwise.
    """
    uid, gid = os.geteuid(), os.getegid()
    path = path.absolute()
    for parent in reversed(path.parents):
        try:
            parent.mkdir(mode=0o700)
        except FileExistsError:
            if parent != Path(parent.anchor):
                _check_ancestor(parent, uid, gid)
            continue
        except OSError as exc:
            raise _refuse(parent, exc.strerror or str(exc)) from None
        check_private_dir(parent, uid=uid)
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(path, exc.strerror or str(exc)) from None
    check_private_dir(path, uid=uid)
    return path
