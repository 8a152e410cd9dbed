"""The small overlay each backend mounts once, to find out whether it can mount one."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from jhansi.sandbox.interface import WORKDIR, Mount, Overlay, XattrNamespace
from jhansi.sandbox.overlay import LayerDirs, build_masks
from jhansi.sandbox.overlay_read import is_whiteout, read_small

#: Runs in the sandbox (Python 3.8+, standard library): the lower layer shows, the mask
#: layer's opaque directory hides, a new file and a deletion land in the upper layer.
OVERLAY_PROBE = (
    "import os\n"
    "assert open('/work/seen.txt').read() == 'lower', 'the lower layer does not show'\n"
    "assert os.listdir('/work/hidden') == [], 'the mask layer does not hide'\n"
    "open('/work/new.txt', 'w').write('new')\n"
    "os.unlink('/work/gone.txt')\n"
)


@dataclass(frozen=True, slots=True)
class ProbeLayers:
    """A small overlay made to find out whether a backend can mount one."""

    root: Path
    mount: Mount

    def check(self) -> str:
        """``""`` when the probe's writes landed in the upper layer and nowhere else."""
        overlay = self.mount.overlay
        if overlay is None:  # pragma: no cover - always set by probe_layers
            return "no overlay"
        # What the sandbox left is read without following a link (as everywhere else).
        wrote = read_small(overlay.upper, "new.txt", 16)
        try:
            gone = os.lstat(overlay.upper / "gone.txt")
            lower = self.mount.source
            intact = (lower / "gone.txt").exists() and not (lower / "new.txt").exists()
        except OSError as exc:
            return f"the writes did not land in the upper layer ({exc.strerror or exc})"
        if wrote != b"new" or not is_whiteout(gone) or not intact:
            return "the overlay did not behave as overlayfs does"
        return ""


def probe_layers(where: Path, xattr: XattrNamespace) -> ProbeLayers:
    """A throwaway lower, mask, upper and work directory in ``where`` (one file system
    with the real layers), as a mount at /work."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=".probe-", dir=where))
    root.chmod(0o711)
    lower = root / "lower"
    (lower / "hidden").mkdir(parents=True, mode=0o755)
    lower.chmod(0o755)
    (lower / "seen.txt").write_text("lower", encoding="utf-8")
    (lower / "gone.txt").write_text("gone", encoding="utf-8")
    (lower / "hidden" / "secret.txt").write_text("secret", encoding="utf-8")
    for path in (lower / "seen.txt", lower / "gone.txt", lower / "hidden" / "secret.txt"):
        path.chmod(0o644)
    dirs = LayerDirs(root, lower)
    for directory in (dirs.upper, dirs.work):
        directory.mkdir(mode=0o700)
    build_masks(dirs, ["hidden"], xattr)
    overlay = Overlay((dirs.masks, lower), dirs.upper, dirs.work, xattr)
    mount = Mount(lower, WORKDIR, read_only=False, kind="overlay", overlay=overlay)
    return ProbeLayers(root, mount)


def remove_probe(probe: ProbeLayers) -> None:
    """Delete a probe's directories."""
    from jhansi.sandbox.tree import remove_tree

    with contextlib.suppress(OSError):
        remove_tree(probe.root)
