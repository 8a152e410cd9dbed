"""What a run changed in the directories it could write: added, modified, deleted files.

A snapshot records each file's size, modification time and inode, and nothing
more: hashing a home of gigabytes before every run would make the tool too slow
to keep on. After the run, only files whose stat changed are hashed (BLAKE3).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Stat = tuple[int, int, int, int]
"""(size, mtime_ns, inode, mode)."""

ChangeKind = Literal["added", "modified", "deleted"]


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file a run added, modified or deleted."""

    area: str
    """Where, as the sandbox saw it: ``/home/sandbox`` or ``/work``."""
    path: str
    """Relative to ``area``."""
    change: ChangeKind
    size: int | None
    """The new size; ``None`` for deleted files."""
    blake3: str | None
    """BLAKE3 of the new content; ``None`` for deleted files and non-regular files."""

    def as_dict(self) -> dict[str, object]:
        """JSON types only (``--json``, the ledger, the MCP server)."""
        return {
            "area": self.area,
            "path": self.path,
            "change": self.change,
            "size": self.size,
            "blake3": self.blake3,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The stat of every file under a directory at one moment."""

    root: Path
    area: str
    files: dict[str, Stat]


def snapshot(root: Path, area: str, *, skip: Iterable[str] = ()) -> Snapshot:
    """Stat every file below ``root`` (symlinks are not followed; ``skip`` names top-level
    entries to leave out, such as masked paths)."""
    skipped = set(skip)
    files: dict[str, Stat] = {}
    root_text = str(root)
    for directory, dirs, names in os.walk(root_text):
        rel_dir = os.path.relpath(directory, root_text)
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d not in skipped]
            names = [n for n in names if n not in skipped]
        for name in names:
            full = os.path.join(directory, name)  # noqa: PTH118 - hot loop, plain strings
            try:
                st = os.lstat(full)
            except OSError:
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)  # noqa: PTH118
            files[rel] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
    return Snapshot(root=root, area=area, files=files)


def _hash(path: Path, mode: int) -> str | None:
    if not stat.S_ISREG(mode):
        return None
    import blake3

    hasher = blake3.blake3()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
    except OSError:
        return None
    return hasher.hexdigest()


def diff(before: Snapshot, after: Snapshot) -> list[FileChange]:
    """The files that differ between two snapshots of one directory, sorted by path."""
    changes: list[FileChange] = []
    for rel, new in after.files.items():
        old = before.files.get(rel)
        if old == new:
            continue
        kind: ChangeKind = "added" if old is None else "modified"
        changes.append(FileChange(after.area, rel, kind, new[0], _hash(after.root / rel, new[3])))
    for rel in before.files.keys() - after.files.keys():
        changes.append(FileChange(before.area, rel, "deleted", None, None))
    return sorted(changes, key=lambda c: (c.area, c.path))
