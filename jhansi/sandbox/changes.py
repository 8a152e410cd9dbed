"""What a run changed in the directories it could write: added, modified, deleted files.

A snapshot records each file's size, modification time and inode, and nothing
more: hashing a home of gigabytes before every run would make the tool too slow
to keep on. After the run, only files whose stat changed are hashed (BLAKE3).

Everything here works on a directory the script controlled, so every cost is
bounded (:class:`Budget`): the walk is iterative (a stack, never recursion),
holds one descriptor per level and stops descending past :data:`MAX_DEPTH`; a
snapshot stops after ``entries`` entries or when its deadline passes, and says
so (:attr:`Snapshot.incomplete`); hashing stops at a byte and a time budget, and
a file past it is recorded with its size and why it was not hashed. Only regular
files are ever opened, with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO swapped in after
the stat cannot block jhansi). Names are kept as the file system gave them
(``os.fsdecode``: bytes that are not UTF-8 become lone surrogates) and recorded
reversibly by :func:`name_fields`.
"""

from __future__ import annotations

import base64
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Stat = tuple[int, int, int, int]
"""(size, mtime_ns, inode, mode)."""

ChangeKind = Literal["added", "modified", "deleted"]

#: Directory levels a walk descends (one descriptor is held per level); deeper
#: directories are listed as entries but not entered, and the snapshot says so.
MAX_DEPTH = 256
#: Entries one snapshot keeps at most (~200 bytes of host memory each).
MAX_ENTRIES = 500_000
#: Bytes hashed after a run, in total.
HASH_BYTES = 4 << 30
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def name_fields(key: str, text: str) -> dict[str, str]:
    """``{key: text}``, or for a name that is not UTF-8, ``{key: shown, key_b64: raw}``.

    ``text`` is a name as :func:`os.fsdecode` gives it: bytes that are not UTF-8 are
    lone surrogates, which JSON (and the ledger's canonical form) cannot hold. Then
    ``key`` holds the name with each such byte written ``\\xNN`` (readable, but not
    unique: a real backslash looks the same) and ``key_b64`` the exact bytes in
    base64, from which the name is restored (:func:`name_from_fields`).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(text)
        return {
            key: raw.decode("utf-8", "backslashreplace"),
            f"{key}_b64": base64.b64encode(raw).decode("ascii"),
        }
    return {key: text}


def name_from_fields(fields: dict[str, object], key: str) -> bytes:
    """The exact bytes of a name recorded by :func:`name_fields`."""
    encoded = fields.get(f"{key}_b64")
    if isinstance(encoded, str):
        return base64.b64decode(encoded)
    value = fields.get(key)
    return str(value).encode("utf-8")


def shown_name(text: str) -> str:
    """A name for people: bytes that are not UTF-8 as ``\\xNN`` (control characters
    are the printer's business: :func:`jhansi.ledger.read.terminal_safe`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


@dataclass(frozen=True, slots=True)
class Budget:
    """How much a snapshot, a diff and its hashing may cost.

    ``deadline`` is a :func:`time.monotonic` instant shared by every step after a
    run (the after-snapshot, the diff and the hashing), so together they end by it;
    :func:`budget_for` derives it from the run's timeout.
    """

    deadline: float
    entries: int = MAX_ENTRIES
    hash_bytes: int = HASH_BYTES
    depth: int = MAX_DEPTH


def budget_for(timeout: float, *, now: float | None = None) -> Budget:
    """The budget of one snapshot or post-run step: a quarter of the run's timeout,
    at least 5 s and at most 60 s (so a run never outlasts its timeout by more than
    a minute of bookkeeping, whatever the script left behind)."""
    seconds = min(max(timeout / 4, 5.0), 60.0)
    return Budget(deadline=(time.monotonic() if now is None else now) + seconds)


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file a run added, modified or deleted."""

    area: str
    """Where, as the sandbox saw it: ``/home/sandbox`` or ``/work``."""
    path: str
    """Relative to ``area``, as :func:`os.fsdecode` gives it (see :func:`name_fields`)."""
    change: ChangeKind
    size: int | None
    """The new size; ``None`` for deleted files."""
    blake3: str | None
    """BLAKE3 of the new content; ``None`` for deleted files, non-regular files and
    files not hashed (``not_hashed`` says why)."""
    not_hashed: str = ""
    """Why a regular file's content was not hashed (over the budget, changed while
    being read ...); empty otherwise."""

    def as_dict(self) -> dict[str, object]:
        """JSON types only (``--json``, the ledger, the MCP server)."""
        found: dict[str, object] = {
            "area": self.area,
            **name_fields("path", self.path),
            "change": self.change,
            "size": self.size,
            "blake3": self.blake3,
        }
        if self.not_hashed:
            found["not_hashed"] = self.not_hashed
        return found


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The stat of every file (every entry but directories) under a directory at one
    moment, or of as many as the budget allowed: ``incomplete`` then says why."""

    root: Path
    area: str
    files: dict[str, Stat]
    incomplete: str = ""
    """Why some entries were not listed (entry or time budget, depth); empty if none."""
    not_entered: int = 0
    """Directories listed but not entered (deeper than the budget's depth, unreadable)."""


def snapshot(
    root: Path, area: str, *, skip: Iterable[str] = (), budget: Budget | None = None
) -> Snapshot:
    """Stat every entry below ``root`` (symlinks are not followed; ``skip`` names
    top-level entries to leave out, such as masked paths), within ``budget``."""
    budget = budget or Budget(deadline=time.monotonic() + 60.0)
    skipped = set(skip)
    files: dict[str, Stat] = {}
    incomplete = ""
    not_entered = 0
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        return Snapshot(root, area, files, f"cannot open {area}: {exc.strerror or exc}")
    # Each frame: (its fd, its prefix, the names left to visit in it).
    stack: list[tuple[int, str, list[str]]] = []
    try:
        top = _listing(root_fd)
    except OSError as exc:
        os.close(root_fd)
        return Snapshot(root, area, files, f"cannot list {area}: {exc.strerror or exc}")
    stack.append((root_fd, "", top))
    try:
        seen = 0
        while stack and not incomplete:
            fd, prefix, names = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                continue
            name = names.pop()
            if not prefix and name in skipped:
                continue
            seen += 1
            if seen > budget.entries:
                incomplete = f"more than {budget.entries} entries"
                break
            if seen % 1024 == 0 and time.monotonic() > budget.deadline:
                incomplete = "the time budget ran out"
                break
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # gone since it was listed
            rel = prefix + name
            if not stat.S_ISDIR(st.st_mode):
                # Directories are walked, not recorded: their changes are their entries'.
                files[rel] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
                continue
            if len(stack) >= budget.depth:
                not_entered += 1
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                not_entered += 1
                continue
            try:
                below = _listing(child)
            except OSError:
                os.close(child)
                not_entered += 1
                continue
            stack.append((child, rel + "/", below))
    except OSError as exc:
        incomplete = f"listing failed: {exc.strerror or exc}"
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    if not incomplete and not_entered:
        incomplete = (
            f"{not_entered} director{'ies' if not_entered != 1 else 'y'} not entered "
            f"(deeper than {budget.depth} levels, or unreadable)"
        )
    return Snapshot(root, area, files, incomplete, not_entered)


def _listing(fd: int) -> list[str]:
    """The names in the directory ``fd`` (sorted, reversed: popped in order)."""
    with os.scandir(fd) as scan:
        return sorted((e.name for e in scan), reverse=True)


class _Hasher:
    """Hashes files within a byte and time budget."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.left = budget.hash_bytes

    def hash(self, root: Path, rel: str, expected: Stat) -> tuple[str | None, str]:
        """(BLAKE3, "") or (None, why not); never opens a non-regular file."""
        if not stat.S_ISREG(expected[3]):
            return None, ""
        size = expected[0]
        if size > self.left:
            return None, (
                f"over the hashing budget ({size} bytes; {self.left} of "
                f"{self.budget.hash_bytes} bytes left)"
            )
        if time.monotonic() > self.budget.deadline:
            return None, "the hashing time budget ran out"
        try:
            fd = _open_below(root, rel)
        except OSError as exc:
            return None, f"cannot open: {exc.strerror or exc}"
        try:
            return self._read(fd, expected)
        except OSError as exc:
            return None, f"cannot read: {exc.strerror or exc}"
        finally:
            os.close(fd)

    def _read(self, fd: int, expected: Stat) -> tuple[str | None, str]:
        import blake3

        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != expected[2]:
            return None, "replaced since it was listed"
        hasher = blake3.blake3()
        remaining = st.st_size
        while remaining > 0:
            if time.monotonic() > self.budget.deadline:
                return None, "the hashing time budget ran out"
            chunk = os.read(fd, min(_CHUNK, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            remaining -= len(chunk)
            self.left -= len(chunk)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or remaining:
            return None, "changed while it was being hashed"
        return hasher.hexdigest(), ""


def _open_below(root: Path, rel: str) -> int:
    """An fd of the regular file ``rel`` below ``root``, opened without following a
    symlink at any level (a path longer than ``PATH_MAX`` is opened level by level)."""
    parts = rel.split("/")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Diff:
    """The changes between two snapshots, and whether the list is complete."""

    changes: list[FileChange]
    incomplete: str = ""
    """Why the list may miss changes (a snapshot was cut short); empty if complete."""
    not_hashed: int = 0
    """Regular files whose content was not hashed (see :attr:`FileChange.not_hashed`)."""


def compare(before: Snapshot, after: Snapshot, budget: Budget | None = None) -> Diff:
    """The entries that differ between two snapshots of one directory, sorted by path.

    When the first snapshot was cut short, an entry only in the second may have been
    there all along: those are not listed as added. When the second was, an entry
    only in the first may still be there: those are not listed as deleted. Either
    way :attr:`Diff.incomplete` says so.
    """
    budget = budget or Budget(deadline=time.monotonic() + 60.0)
    hasher = _Hasher(budget)
    changes: list[FileChange] = []
    unhashed = 0
    for rel, new in after.files.items():
        old = before.files.get(rel)
        if old == new:
            continue
        if old is None and before.incomplete:
            continue
        kind: ChangeKind = "added" if old is None else "modified"
        digest, why = hasher.hash(after.root, rel, new)
        unhashed += bool(why)
        changes.append(FileChange(after.area, rel, kind, new[0], digest, why))
    if not after.incomplete:
        for rel in before.files.keys() - after.files.keys():
            changes.append(FileChange(before.area, rel, "deleted", None, None))
    reasons = [f"before the run: {before.incomplete}"] if before.incomplete else []
    if after.incomplete:
        reasons.append(f"after the run: {after.incomplete}")
    changes.sort(key=lambda c: (c.area, c.path))
    return Diff(changes, "; ".join(reasons), unhashed)


def diff(before: Snapshot, after: Snapshot, budget: Budget | None = None) -> list[FileChange]:
    """The files that differ between two snapshots of one directory, sorted by path
    (:func:`compare` without its completeness report)."""
    return compare(before, after, budget).changes


__all__ = [
    "HASH_BYTES",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "Budget",
    "Diff",
    "FileChange",
    "Snapshot",
    "budget_for",
    "compare",
    "diff",
    "name_fields",
    "name_from_fields",
    "shown_name",
    "snapshot",
]
