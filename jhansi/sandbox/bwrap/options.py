"""bwrap's options for a :class:`~jhansi.sandbox.interface.SandboxSpec`.

An empty tmpfs as root, then read-only binds of the host root
(:mod:`jhansi.sandbox.bwrap.root`) with the site-packages masked, a synthetic
``/etc/passwd``, ``/etc/group`` and ``/etc/hosts``, fresh ``/proc`` (read-only)
and ``/dev``, size-capped tmpfs at ``/tmp`` and ``/dev/shm``, then the spec's
mounts, and finally the root itself remounted read-only. Every namespace is new
(only loopback networking), all capabilities are dropped, and nested user
namespaces are refused where bwrap can do so.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from jhansi.errors import SandboxError
from jhansi.sandbox.bwrap.binary import BwrapFeatures
from jhansi.sandbox.bwrap.interpreter import Interpreter
from jhansi.sandbox.bwrap.root import HostRoot, is_under, parents_of
from jhansi.sandbox.interface import (
    HOME,
    PYTHON,
    SANDBOX_USER,
    Limits,
    SandboxSpec,
    thread_env,
)
from jhansi.sandbox.masks import check_mounts, masks_directory

#: The sandbox's hostname.
HOSTNAME = "sandbox"
TMP = "/tmp"  # noqa: S108 (inside the sandbox: its own size-capped tmpfs)
SHM = "/dev/shm"  # noqa: S108 (likewise)
SHM_MAX = 64 << 20
DataFd = Callable[[bytes], int]
#: What bwrap binds for a host path (``own``: a sandbox's own directory, never a link).
BindSource = Callable[[str, bool], str]


def _same_path(path: str, _own: bool) -> str:
    return path


def shm_size(limits: Limits) -> int:
    """The cap of /dev/shm: that of /tmp, at most 64 MiB (Docker's default)."""
    return min(limits.tmp_size, SHM_MAX)


def passwd_file(uid: int, gid: int) -> bytes:
    """A ``/etc/passwd`` with root, the sandbox user and nobody."""
    lines = ["root:x:0:0:root:/root:/usr/sbin/nologin"]
    if uid not in (0, 65534):
        lines.append(f"{SANDBOX_USER}:x:{uid}:{gid}:{SANDBOX_USER}:{HOME}:/bin/sh")
    lines.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    return ("\n".join(lines) + "\n").encode()


def group_file(gid: int) -> bytes:
    """A ``/etc/group`` with root, the sandbox user's group and nogroup."""
    lines = ["root:x:0:"]
    if gid not in (0, 65534):
        lines.append(f"{SANDBOX_USER}:x:{gid}:")
    lines.append("nogroup:x:65534:")
    return ("\n".join(lines) + "\n").encode()


def hosts_file() -> bytes:
    """A ``/etc/hosts`` that names loopback (the only network there is)."""
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\t{HOSTNAME}\n".encode()


def _check_path(target: str, what: str) -> None:
    if not target.startswith("/") or os.path.normpath(target) != target or target == "/":
        raise SandboxError(
            f"{what} {target!r} is not a normalized absolute path below /",
            hint="This is a bug in jhansi: please report it.",
        )


def check_spec(spec: SandboxSpec) -> None:
    """Refuse a spec this backend cannot carry out as written (it never loosens one)."""
    if spec.network != "none":
        raise SandboxError(f"the bwrap backend has no network mode {spec.network!r}")
    if spec.runtime is not None:
        raise SandboxError(
            f"the bwrap backend cannot use the OCI runtime {spec.runtime!r}",
            hint="Use the docker backend for that runtime, or unset [sandbox] runtime.",
        )
    if spec.uid == 0 or spec.gid == 0:
        raise SandboxError("the sandbox user must not be root (uid/gid 0)")
    if not spec.argv:
        raise SandboxError("nothing to run: the sandbox command is empty")
    _check_path(spec.workdir, "the working directory")
    for mount in spec.mounts:
        _check_path(mount.target, "the mount target")
        if mount.kind == "overlay":
            overlay = mount.overlay
            if overlay is None or overlay.upper.parent != overlay.work.parent:
                raise SandboxError(
                    f"the overlay at {mount.target} needs its upper and work directories "
                    "side by side",
                    hint="This is a bug in jhansi or in the caller of its API; please report it.",
                )
        if not mount.source.exists() and not mount.source.is_symlink():
            raise SandboxError(
                f"cannot mount {mount.source} at {mount.target}: it does not exist",
                hint="It was removed while jhansi prepared the run; run again.",
            )
    for key in spec.env:
        if not key or "=" in key:
            raise SandboxError(f"invalid environment variable name {key!r}")


def _root_dirs(spec: SandboxSpec, root: HostRoot) -> list[str]:
    """Directories to make on the sandbox's (still writable) root before anything else.

    bwrap makes missing parents itself, but with mode 0700; these get 0755.
    Nothing is made under a mount (that would write to the host, or fail).
    """
    mounted = [*root.binds, *(p for _, p in root.symlinks), "/proc", "/dev", TMP]
    mounted += [m.target for m in spec.mounts]
    wanted: set[str] = {"/etc", spec.workdir}
    for path in [*root.binds, *(m.target for m in spec.mounts)]:
        wanted.update(parents_of(path))
    dirs = [d for d in wanted if not any(is_under(d, m) for m in mounted)]
    # bwrap makes parents before children; sorted by depth, then name.
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def build_options(
    spec: SandboxSpec,
    root: HostRoot,
    features: BwrapFeatures,
    data: DataFd,
    *,
    seccomp: bytes | None = None,
    source: BindSource = _same_path,
) -> list[str]:
    """bwrap's options for ``spec`` (everything before the command).

    ``data(content)`` returns a file descriptor the child will read ``content``
    from (``--ro-bind-data``, ``--seccomp``); ``source(path, own)`` the path bwrap
    binds for a host path (a pinned stand-in: see :meth:`BwrapBackend.run`).
    """

    # Never mount over (or below) a link in the project: bwrap mounts after pivot_root,
    # and its creat() of a masked link's target would make a file on the host.
    check_mounts(spec.mounts)

    def perms(mode: str) -> list[str]:
        return ["--perms", mode] if features.perms else []

    def size(limit: int) -> list[str]:
        return ["--size", str(limit)] if features.size else []

    args = ["--unshare-all", "--unshare-user"]
    if features.disable_userns:
        args.append("--disable-userns")
    args += ["--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL"]
    args += ["--uid", str(spec.uid), "--gid", str(spec.gid), "--hostname", HOSTNAME]
    for key, value in thread_env(spec.env, spec.limits.cpus).items():
        args += ["--setenv", key, value]
    for directory in _root_dirs(spec, root):
        args += [*perms("0755"), "--dir", directory]
    # The host's system, read-only; its Python packages hidden.
    for target, path in root.symlinks:
        args += ["--symlink", target, path]
    for path in root.binds:
        args += ["--ro-bind", source(path, False), path]
    for path in root.masks:
        args += [*perms("0555"), "--tmpfs", path, "--remount-ro", path]
    args += [*perms("0644"), "--ro-bind-data", str(data(passwd_file(spec.uid, spec.gid)))]
    args += ["/etc/passwd"]
    args += [*perms("0644"), "--ro-bind-data", str(data(group_file(spec.gid))), "/etc/group"]
    args += [*perms("0644"), "--ro-bind-data", str(data(hosts_file())), "/etc/hosts"]
    # Kernel filesystems; the only writable tmpfs are size-capped.
    # /proc read-only: a sandbox whose host uid is 0 (never jhansi's own choice:
    # see BwrapBackend.run) could write global sysctls by file mode alone; bwrap
    # covers /proc/sys only when the directory itself is writable, which it is not.
    args += ["--proc", "/proc"]
    for path, is_dir in root.proc_masks:
        if is_dir:
            args += [*perms("0555"), "--tmpfs", path, "--remount-ro", path]
        else:
            args += [*perms("0444"), "--ro-bind-data", str(data(b"")), path]
    args += ["--remount-ro", "/proc", "--dev", "/dev"]
    args += [*size(shm_size(spec.limits)), *perms("1777"), "--tmpfs", SHM]
    args += ["--remount-ro", "/dev"]
    args += [*size(spec.limits.tmp_size), *perms("1777"), "--tmpfs", TMP]
    for mount in spec.mounts:
        if mount.kind == "bind":
            bound = source(str(mount.source), mount.owned)
            args += ["--ro-bind" if mount.read_only else "--bind", bound, mount.target]
        elif mount.kind == "overlay" and mount.overlay is not None:
            # bwrap stacks the sources given first lowest: the project, then the masks.
            for lower in reversed(mount.overlay.lower):
                args += ["--overlay-src", source(str(lower), False)]
            # Upper and work must be on one mount: the layer's directory is bound once.
            layer = source(str(mount.overlay.upper.parent), False)
            upper = f"{layer}/{mount.overlay.upper.name}"
            args += ["--overlay", upper, f"{layer}/{mount.overlay.work.name}", mount.target]
        elif mount.kind == "socket":
            # connect() needs no write access to the mount, only to the socket's mode:
            # read-only keeps the sandbox from changing the socket's mode or owner.
            bound = source(str(mount.source), False)
            args += ["--ro-bind" if mount.read_only else "--bind", bound, mount.target]
        elif masks_directory(mount.source):
            args += [*perms("0555"), "--tmpfs", mount.target, "--remount-ro", mount.target]
        else:
            args += [*perms("0444"), "--ro-bind-data", str(data(b"")), mount.target]
    args += ["--remount-ro", "/", "--chdir", spec.workdir]
    if seccomp is not None:
        args += ["--seccomp", str(data(seccomp))]
    for arg in args:
        if "\0" in arg:
            # --args is NUL-separated: a NUL would smuggle in options of its own.
            raise SandboxError(f"a sandbox option contains a NUL byte: {arg!r}")
    return args


def build_command(spec: SandboxSpec, interpreter: Interpreter) -> list[str]:
    """The command run in the sandbox: ``PYTHON`` replaced by the interpreter's path."""
    argv = list(spec.argv)
    if argv[0] == PYTHON:
        argv[0] = str(interpreter.path)
    return argv
