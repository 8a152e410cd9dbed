"""A writable copy of the project that jhansi, not the sandbox, applies to the project.

``jhansi run --rw`` never binds the project itself read-write. Before the run,
:func:`make_layer` copies the project into a staging directory the sandbox owns
(mounted at ``/work``); after it, :func:`plan_changes` compares the staging
directory with what was copied, and :func:`apply_changes` writes the changes into
the project as the invoking user. What this defends:

* The sandbox never holds a descriptor or a path into the project: it cannot
  write the project's inodes (the copy never hard-links) and it cannot race
  jhansi while it applies (the sandbox is gone by then).
* Configuration and locks jhansi reads on the host (:func:`protected_reason`),
  ``.git`` and masked paths are never written, whatever case the name uses.
* Applying never follows a symlink in the project: every parent is opened from a
  descriptor of the project with ``O_NOFOLLOW | O_DIRECTORY``, files are written
  to a temporary name and renamed into place, deletions are ``unlinkat``. A
  layer that replaced a directory by a symlink to ``/etc`` cannot make jhansi
  write there, and a symlink is applied only if its target, by its text, stays in
  the project and passes through no other link (:func:`link_refusal`).
* Nothing the host runs by itself is written (:func:`protected_reason`): a module
  ``python -m jhansi`` would import, compiled Python, pre-commit's configuration ...
* A project file that changed on the host during the run is not overwritten
  (a conflict); the sandbox's version stays in the kept staging directory.

The same pair (a staging copy, a plan against the project) is what a default
copy-on-write ``/work`` and ``jhansi sandbox diff/apply`` need: the plan is data,
and :func:`apply_changes` takes any subset of it.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

Kind = Literal["file", "dir", "link"]
Action = Literal["added", "modified", "deleted", "mode"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: Mode bits a stand-in for a masked path gets: visible, empty, not writable.
_STANDIN_FILE_MODE = 0o444
_STANDIN_DIR_MODE = 0o555
_TEMP_PREFIX = ".jhansi-apply-"

#: Names jhansi (or a tool it runs on the host) reads as configuration or a lock.
_CONFIG_NAMES = frozenset({"jhansi.toml", "pyproject.toml", "pylock.toml", "uv.toml"})
_CONFIG_GLOBS = ("pylock.*.toml",)
#: Files a pyenv/asdf/mise shim reads to choose the interpreter jhansi's probe runs.
_VERSION_NAMES = frozenset(
    {".python-version", ".python-versions", ".tool-versions", ".mise.toml", "mise.toml"}
)
_VERSION_GLOBS = (".mise.*.toml", "mise.*.toml")
#: Directories nothing is ever written under.
_PROTECTED_DIRS = {
    ".jhansi": "jhansi keeps its project state there",
    ".git": "git runs its hooks and config from there",
    ".mise": "mise reads its configuration from there",
    ".github": "CI runs its workflows and actions",
    ".vscode": "the editor runs its tasks and picks the interpreter from there",
    ".idea": "the editor runs its configurations from there",
    ".devcontainer": "the editor builds and runs the container it describes",
    "__pycache__": "Python imports the compiled code there instead of the reviewed source",
}
#: Files a tool runs on its own when you work in the project (not when you run it).
_RUN_NAMES = {
    ".pre-commit-config.yaml": "git commit runs the hooks it names",
    ".pre-commit-hooks.yaml": "pre-commit runs the hooks it names",
    ".envrc": "direnv runs it when you enter the directory",
    ".gitlab-ci.yml": "CI runs it",
}


def protected_reason(rel: str, kind: Kind | None = None) -> str | None:
    """Why the project path ``rel`` (relative, ``/``-separated) is never written, or ``None``.

    Never written: what jhansi (or a tool it runs) reads on the host as configuration
    or a lock, and what the host runs by itself when you work in the project, without
    your running the project's code: a module that ``python -m jhansi`` would import
    instead of an installed one (:func:`_shadowing`), compiled Python, pre-commit's
    configuration, ``.envrc``, CI and editor directories. ``kind`` is the entry's
    (a link named like a module is refused, a directory is not).

    Matched case-insensitively, on every component: a case-insensitive filesystem
    (or a later checkout on one) would read ``JHANSI.TOML`` as ``jhansi.toml``.
    """
    parts = [p.casefold() for p in PurePosixPath(rel).parts]
    for part in parts[:-1]:
        if part in _PROTECTED_DIRS:
            return f"under {part}/: {_PROTECTED_DIRS[part]}"
    name = parts[-1] if parts else ""
    if name in _PROTECTED_DIRS:
        return _PROTECTED_DIRS[name]
    if name in _CONFIG_NAMES or any(fnmatch.fnmatchcase(name, g) for g in _CONFIG_GLOBS):
        return "jhansi reads it as configuration"
    if name in _VERSION_NAMES or any(fnmatch.fnmatchcase(name, g) for g in _VERSION_GLOBS):
        return "a version manager reads it to choose the host's Python"
    if name in _RUN_NAMES:
        return _RUN_NAMES[name]
    if name.endswith(".pyc"):
        return "Python imports compiled code instead of the reviewed source"
    return _shadowing(parts, kind) if parts else None


#: What a file name must end with for Python to import it as a module.
_MODULE_SUFFIXES = (".py", ".pyw", ".pyc", ".pyd", ".so")


def _shadowing(parts: list[str], kind: Kind | None) -> str | None:
    """Why the (casefolded) path ``parts`` could be imported in place of an installed
    module by ``python -m jhansi`` (or any ``python -m`` started in the project, such as
    jhansi's pre-commit hooks): Python puts the working directory first on
    ``sys.path``. At the top: a module file named like one of :func:`host_modules`, or
    a link named like one (it may lead to a package); below a top-level directory named
    like one, any module file. The directory alone imports nothing.
    """
    top = parts[0]
    is_module = top.endswith(_MODULE_SUFFIXES)
    name = top.split(".", 1)[0] if is_module else top
    if name not in host_modules():
        return None
    if len(parts) == 1 and (is_module or kind == "link"):
        return f"`python -m jhansi` in the project would import it instead of {name}"
    if len(parts) > 1 and not is_module and parts[-1].endswith(_MODULE_SUFFIXES):
        return f"`python -m jhansi` in the project would import it as part of {name}"
    return None


@functools.cache
def host_modules() -> frozenset[str]:
    """Top-level module names (casefolded) that jhansi's Python imports from its own
    installation: ``jhansi``, the standard library, and every distribution installed in
    jhansi's environment (``python -m pip``, ``python -m uv`` ... too)."""
    import importlib.metadata
    import sys

    names = {"jhansi", *sys.stdlib_module_names, *sys.builtin_module_names}
    with contextlib.suppress(Exception):  # a broken distribution's metadata: skip it
        names.update(importlib.metadata.packages_distributions())
    return frozenset(n.casefold() for n in names if n.isidentifier())


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a tree, as ``lstat`` saw it (symlinks are never followed)."""

    kind: Kind
    mode: int
    """Permission bits only (``S_IMODE``)."""
    size: int
    mtime_ns: int
    ino: int
    target: str | None = None
    """A symlink's target, as written."""

    def same(self, other: Entry | None) -> bool:
        """Whether ``other`` is this very entry, unchanged (same inode, size, time, mode)."""
        return other is not None and (
            self.kind,
            self.mode,
            self.size,
            self.mtime_ns,
            self.ino,
            self.target,
        ) == (other.kind, other.mode, other.size, other.mtime_ns, other.ino, other.target)


def _entry(st: os.stat_result, target: str | None = None) -> Entry | None:
    if stat.S_ISREG(st.st_mode):
        kind: Kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISLNK(st.st_mode):
        kind = "link"
    else:
        return None  # fifos, sockets, devices: never copied, never applied
    return Entry(kind, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino, target)


def _lentry(name: str, dir_fd: int) -> Entry | None:
    """The entry ``name`` in ``dir_fd``, or ``None`` if absent or special."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
    return _entry(st, target)


#: Deeper than any real project; one descriptor is held per level while walking, and
#: a sandbox that nests directories thousands deep must get an error, not a crash.
MAX_DEPTH = 256


def _walk(
    dir_fd: int, skip: AbstractSet[str] = frozenset(), special: list[str] | None = None
) -> Iterator[tuple[str, Entry, int]]:
    """Every entry under ``dir_fd`` (parents before children), with its parent's fd.

    Directories are opened with ``O_NOFOLLOW``: a symlink is an entry, never a way
    in. Directories named in ``skip`` (masked: hidden whole) are listed, not entered;
    ``skip`` is consulted after each directory is yielded, so a caller may add to it.
    Iterative (a stack, not recursion), and past :data:`MAX_DEPTH` levels it raises
    :class:`ApplyError` rather than exhaust the stack or the descriptors. FIFOs,
    sockets and devices are not yielded; their paths are added to ``special`` if given.
    """
    # Each frame: (the directory's fd or None for the caller's, its prefix, names left).
    stack: list[tuple[int, str, list[str]]] = []

    def listing(fd: int) -> list[str]:
        with os.scandir(fd) as scan:
            return sorted((e.name for e in scan), reverse=True)

    stack.append((dir_fd, "", listing(dir_fd)))
    try:
        while stack:
            fd, prefix, names = stack[-1]
            if not names:
                stack.pop()
                if fd != dir_fd:
                    os.close(fd)
                continue
            name = names.pop()
            entry = _lentry(name, fd)
            rel = prefix + name
            if entry is None:
                if special is not None:
                    with contextlib.suppress(OSError):  # gone since: nothing to say
                        os.stat(name, dir_fd=fd, follow_symlinks=False)
                        special.append(rel)
                continue
            yield rel, entry, fd
            if entry.kind != "dir" or rel in skip:
                continue
            if len(stack) >= MAX_DEPTH:
                raise ApplyError(
                    errno.ELOOP, f"{rel}: directories nest deeper than {MAX_DEPTH} levels"
                )
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # unreadable, or swapped since: its contents are not listed
            try:
                names_below = listing(child)
            except OSError:
                os.close(child)
                continue
            stack.append((child, rel + "/", names_below))
    finally:
        for fd, _, _ in stack:
            if fd != dir_fd:
                os.close(fd)


def _others_can_read(entry: Entry) -> bool:
    """Whether a uid that is neither owner nor in the group reads this entry (enters it,
    for a directory). Symlinks carry no permissions of their own."""
    if entry.kind == "dir":
        return entry.mode & (stat.S_IROTH | stat.S_IXOTH) == (stat.S_IROTH | stat.S_IXOTH)
    if entry.kind == "file":
        return bool(entry.mode & stat.S_IROTH)
    return True


def _copy_data(src: int, dst: int) -> None:
    """Copy a whole file between descriptors in the kernel where it can."""
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


@dataclass(frozen=True, slots=True)
class Layer:
    """A staging copy of a project and what each copied name was, there and in the project."""

    project: Path
    root: Path
    """The staging directory (mounted at ``/work``)."""
    base: dict[str, Entry]
    """The project's entries when the copy was made (masked paths excluded)."""
    copied: dict[str, Entry]
    """The staging directory's entries right after the copy (stand-ins included)."""
    masked: frozenset[str]
    """Relative paths replaced by empty read-only stand-ins."""
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


def make_layer(
    project: Path,
    root: Path,
    masked: Iterable[Path],
    *,
    progress: Callable[[int, int], None] | None = None,
    others_only: bool = False,
) -> Layer:
    """Copy ``project`` into the new directory ``root``; masked paths become stand-ins.

    Regular files are copied (never hard-linked), symlinks are recreated as
    symlinks, directories keep their mode; fifos, sockets and devices are left
    out. ``progress(files, bytes)`` is called about once a second.

    ``others_only``: the sandbox runs as another host uid than jhansi (jhansi runs as
    root). The copy is handed to that uid, so it would read files that the read-only
    project would not show it: a file it could not read there (no read bit for
    others), or a directory it could not enter, becomes a stand-in like a masked one.
    """
    started = time.monotonic()
    hidden = {p.relative_to(project).as_posix() for p in masked}
    base: dict[str, Entry] = {}
    copied: dict[str, Entry] = {}
    root.mkdir(mode=0o700)
    src_root = os.open(project, _DIR_FLAGS)
    dst_root = os.open(root, _DIR_FLAGS)
    dir_fds: dict[str, int] = {"": dst_root}
    dir_modes: list[tuple[str, int]] = []
    count = total = 0
    last = started
    try:
        for rel, entry, src_parent in _walk(src_root, hidden):
            parent_rel, _, name = rel.rpartition("/")
            dst_parent = dir_fds[parent_rel]
            if others_only and not _others_can_read(entry):
                hidden.add(rel)  # before _walk would enter it
            if rel in hidden:
                if entry.kind == "dir":
                    os.mkdir(name, _STANDIN_DIR_MODE, dir_fd=dst_parent)
                else:
                    fd = os.open(
                        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400, dir_fd=dst_parent
                    )
                    os.fchmod(fd, _STANDIN_FILE_MODE)
                    os.close(fd)
                continue
            if entry.kind == "link":
                os.symlink(entry.target or "", name, dir_fd=dst_parent)
            elif entry.kind == "dir":
                os.mkdir(name, 0o700, dir_fd=dst_parent)
                dir_fds[rel] = os.open(name, _DIR_FLAGS, dir_fd=dst_parent)
                dir_modes.append((rel, entry.mode))
            else:
                try:
                    src = os.open(name, _FILE_FLAGS, dir_fd=src_parent)
                except OSError:
                    continue  # unreadable to the invoking user: not in the copy either
                try:
                    dst = os.open(
                        name,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                        0o600,
                        dir_fd=dst_parent,
                    )
                    try:
                        _copy_data(src, dst)
                        os.fchmod(dst, entry.mode & 0o777)
                        os.utime(dst, ns=(entry.mtime_ns, entry.mtime_ns))
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
                count += 1
                total += entry.size
            base[rel] = entry
            if progress is not None and time.monotonic() - last > 1.0:
                last = time.monotonic()
                progress(count, total)
        for rel, mode in reversed(dir_modes):
            os.fchmod(dir_fds[rel], mode & 0o777)
        masked_rel = frozenset(hidden)
        for rel, made, _ in _walk(dst_root, masked_rel):
            copied[rel] = made
    finally:
        for fd in dir_fds.values():
            os.close(fd)
        os.close(src_root)
    return Layer(
        project=project,
        root=root,
        base=base,
        copied=copied,
        masked=frozenset(hidden),
        files=count,
        bytes=total,
        seconds=time.monotonic() - started,
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One name the sandbox changed in the layer, against what was copied."""

    path: str
    action: Action
    old: Entry | None
    """The project's entry when the layer was made (``None``: added)."""
    new: Entry | None
    """The layer's entry after the run (``None``: deleted)."""


Result = Literal["applied", "refused", "conflict"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one :class:`Change`."""

    path: str
    action: Action
    result: Result
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON types only (the ledger, ``--json``)."""
        found = {"path": self.path, "change": self.action}
        if self.reason:
            found["reason"] = self.reason
        return found


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What :func:`apply_changes` did with each change, and where the layer is if kept."""

    outcomes: tuple[Outcome, ...] = ()
    kept: Path | None = None
    """The staging directory, when it was kept (conflicts, or a failed apply)."""
    error: str = ""
    """Why applying stopped (disk full ...); the changes not listed were not applied."""

    def by(self, result: Result) -> list[Outcome]:
        """The outcomes with that result."""
        return [o for o in self.outcomes if o.result == result]

    def as_dict(self) -> dict[str, object]:
        """JSON types only (the ``rw`` field of ``exec.end``)."""
        return {
            "applied": [o.as_dict() for o in self.by("applied")],
            "refused": [o.as_dict() for o in self.by("refused")],
            "conflicts": [o.as_dict() for o in self.by("conflict")],
            "kept": str(self.kept) if self.kept is not None else None,
            "error": self.error,
        }


class ApplyError(OSError):
    """Applying stopped on an error that is not about one change (disk full, read-only)."""


def _same_content(a_fd: int, b_fd: int) -> bool:
    if os.fstat(a_fd).st_size != os.fstat(b_fd).st_size:
        return False
    offset = 0
    while True:
        a = os.pread(a_fd, 1 << 20, offset)
        if a != os.pread(b_fd, 1 << 20, offset):
            return False
        if not a:
            return True
        offset += len(a)


def _parts(rel: str) -> list[str]:
    """``rel``'s components; a path that could leave its root is refused outright."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {rel!r}")
    return parts


@contextlib.contextmanager
def _parent(root_fd: int, rel: str) -> Iterator[tuple[int, str]]:
    """The descriptor of ``rel``'s directory, opened component by component with
    ``O_NOFOLLOW | O_DIRECTORY`` from ``root_fd``, and ``rel``'s last name."""
    parts = _parts(rel)
    fds: list[int] = []
    try:
        current = root_fd
        for part in parts[:-1]:
            current = os.open(part, _DIR_FLAGS, dir_fd=current)
            fds.append(current)
        yield current, parts[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _is_content_change(layer: Layer, rel: str, new: Entry) -> bool:
    """Whether a regular file's bytes differ from the project's (stat first, then bytes)."""
    copied = layer.copied.get(rel)
    if copied is not None and (copied.size, copied.mtime_ns, copied.ino) == (
        new.size,
        new.mtime_ns,
        new.ino,
    ):
        return False
    try:
        with _opened(layer.root, rel) as a, _opened(layer.project, rel) as b:
            return not _same_content(a, b)
    except (OSError, ValueError):
        return True


@contextlib.contextmanager
def _opened(root: Path, rel: str) -> Iterator[int]:
    """``rel`` under ``root`` opened for reading, no symlink followed on the way."""
    root_fd = _open_dir(root)
    try:
        with _parent(root_fd, rel) as (parent, name):
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


def _open_dir(path: Path) -> int:
    return os.open(path, _DIR_FLAGS)


def plan_changes(layer: Layer) -> list[Change]:
    """What the sandbox changed in the layer: deletions deepest first, then additions and
    changes parents first (the order :func:`apply_changes` needs)."""
    root_fd = _open_dir(layer.root)
    try:
        now = {rel: entry for rel, entry, _ in _walk(root_fd)}
    finally:
        os.close(root_fd)
    deleted: list[Change] = []
    others: list[Change] = []
    for rel in layer.copied:
        if rel not in now:
            deleted.append(Change(rel, "deleted", layer.base.get(rel), None))
    for rel, new in now.items():
        copied = layer.copied.get(rel)
        old = layer.base.get(rel)
        if copied is None:
            others.append(Change(rel, "added", None, new))
            continue
        if copied.same(new) or (
            new.kind == "dir" and copied.kind == "dir" and copied.mode == new.mode
        ):
            continue
        if old is None:  # a masked stand-in the sandbox changed
            others.append(Change(rel, "modified", None, new))
            continue
        replaced = old.kind != new.kind or old.target != new.target
        if replaced or (new.kind == "file" and _is_content_change(layer, rel, new)):
            others.append(Change(rel, "modified", old, new))
        elif copied.mode != new.mode:
            others.append(Change(rel, "mode", old, new))
    deleted.sort(key=lambda c: c.path.count("/"), reverse=True)
    others.sort(key=lambda c: c.path.split("/"))
    return deleted + others


def _masked(layer: Layer, rel: str) -> bool:
    return any(rel == m or rel.startswith(m + "/") for m in layer.masked)


def refusal(layer: Layer, change: Change) -> str | None:
    """Why ``change`` is never applied, or ``None``."""
    if _masked(layer, change.path):
        return "hidden from the sandbox (masked, or not readable by its user)"
    new = change.new
    why = protected_reason(change.path, new.kind if new is not None else None)
    if why:
        return why
    if new is not None and new.kind == "link":
        return link_refusal((layer.root, layer.project), change.path, new.target or "")
    return None


def link_refusal(trees: Iterable[Path], link: str, target: str) -> str | None:
    """Why a link at ``link`` (relative to the project) with ``target`` is never applied.

    Judged by the text of the target, so that no later change (another apply, a run
    that turns a directory into a link) can make an applied link lead outside: the
    target must be relative, climb (``..``) only at its start and no higher than the
    project, and then name only plain components (a ``..`` after a name would be taken
    from wherever that name leads, not lexically). And none of the components it names
    may be a link in any of ``trees`` (the layer and the project): a link's own target
    is not known to stay put. Every link applied obeys this, so resolving any path of
    the project only ever descends from a place inside it.
    """
    if target.startswith("/"):
        return f"the link points outside the project ({target})"
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    names = parts[ups:]
    depth = link.count("/")
    if ups > depth:
        return f"the link points outside the project ({target})"
    if ".." in names:
        return (
            "the link may point outside the project: its target has '..' after a name, "
            f"which is taken from wherever that name leads ({target})"
        )
    base = link.split("/")[: depth - ups]
    for i in range(len(names)):
        component = [*base, *names[: i + 1]]
        for tree in trees:
            try:
                st = os.lstat(tree.joinpath(*component))
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                return (
                    "the link may point outside the project: its target passes through "
                    f"the link {'/'.join(component)} ({target})"
                )
    return None


def _mode(new: Entry, old: Entry | None) -> int:
    """``new``'s permissions without setuid/setgid/sticky, and without group or world
    write unless the project's file already had it (a sandbox must not open the
    project's code to other local users)."""
    allowed_write = (old.mode & 0o022) if old is not None else 0
    return (new.mode & 0o755) | (new.mode & allowed_write)


def _unchanged_on_host(old: Entry | None, current: Entry | None) -> bool:
    if old is None or current is None:
        return old is None and current is None
    if old.kind == "dir":  # a directory's times change as its entries do
        return current.kind == "dir" and (current.ino, current.mode) == (old.ino, old.mode)
    return old.same(current)


def _write_file(layer_root: int, project_parent: int, rel: str, name: str, mode: int) -> None:
    with _parent(layer_root, rel) as (lfd, lname):
        src = os.open(lname, _FILE_FLAGS, dir_fd=lfd)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise FileNotFoundError(errno.ENOENT, "changed in the layer while applying", rel)
        temp = f"{_TEMP_PREFIX}{os.urandom(6).hex()}"
        dst = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=project_parent,
        )
        try:
            try:
                _copy_data(src, dst)
                os.fchmod(dst, mode)
                mtime = os.fstat(src).st_mtime_ns
                os.utime(dst, ns=(mtime, mtime))
            finally:
                os.close(dst)
            os.rename(temp, name, src_dir_fd=project_parent, dst_dir_fd=project_parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=project_parent)
            raise
    finally:
        os.close(src)


def _chmod(parent: int, name: str, kind: Kind, mode: int) -> None:
    fd = os.open(name, _DIR_FLAGS if kind == "dir" else _FILE_FLAGS, dir_fd=parent)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _apply_one(
    layer: Layer, layer_fd: int, project_fd: int, change: Change, when: str = "during the run"
) -> Outcome:
    rel, old, new = change.path, change.old, change.new

    def done(result: Result, reason: str = "") -> Outcome:
        return Outcome(rel, change.action, result, reason)

    try:
        with _parent(project_fd, rel) as (parent, name):
            current = _lentry(name, parent)
            if change.action == "added":
                if current is not None and new is not None:
                    if current.kind == "dir" == new.kind:
                        return done("applied")  # made on the host too: nothing to do
                    return done("conflict", f"made in the project {when}")
            elif not _unchanged_on_host(old, current):
                return done("conflict", f"changed in the project {when}")
            if change.action == "deleted" or new is None:
                if current is not None and current.kind == "dir":
                    os.rmdir(name, dir_fd=parent)
                else:
                    os.unlink(name, dir_fd=parent)
                return done("applied")
            mode = _mode(new, old)
            if change.action == "mode":
                _chmod(parent, name, new.kind, mode)
                return done("applied")
            if current is not None and current.kind == "dir" and new.kind != "dir":
                os.rmdir(name, dir_fd=parent)  # its entries were deleted first
            elif current is not None and new.kind == "dir":
                os.unlink(name, dir_fd=parent)  # a file or link replaced by a directory
            if new.kind == "dir":
                os.mkdir(name, 0o700, dir_fd=parent)
                _chmod(parent, name, "dir", mode)
            elif new.kind == "link":
                temp = f"{_TEMP_PREFIX}{os.urandom(6).hex()}"
                os.symlink(new.target or "", temp, dir_fd=parent)
                try:
                    os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temp, dir_fd=parent)
                    raise
            else:
                _write_file(layer_fd, parent, rel, name, mode)
            return done("applied")
    except ValueError as exc:
        return done("refused", str(exc))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return done(
                "refused",
                "a directory on its path is a symlink (or not a directory) in the project; "
                "not followed",
            )
        if exc.errno in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
            return done(
                "conflict",
                f"the project changed under it {when} ({os.strerror(exc.errno)})",
            )
        raise ApplyError(exc.errno, f"{rel}: {exc.strerror or exc}") from exc


#: At most this many bytes of file content are written into the project by one apply:
#: a sandbox's sparse terabyte must not become real blocks on the host's disk (nor hours
#: of copying after the run). What is over it stays in the kept layer.
APPLY_BUDGET = 1 << 30


def apply_changes(
    layer: Layer,
    changes: Iterable[Change],
    *,
    budget: int = APPLY_BUDGET,
    when: str = "during the run",
) -> ApplyReport:
    """Apply ``changes`` (from :func:`plan_changes`, in its order) to the project.

    Each change is applied, refused (:func:`refusal`, or a symlink on its path in
    the project) or a conflict (the project's entry is not what was copied, or a
    file past what is left of ``budget`` bytes: the layer is kept). An error that is
    not about one change (disk full, read-only filesystem) stops it:
    :attr:`ApplyReport.error` says why, and the changes after it are not applied.
    ``when`` ends a conflict's reason: since when the project was to stay unchanged.
    """
    outcomes: list[Outcome] = []
    layer_fd = _open_dir(layer.root)
    project_fd = _open_dir(layer.project)
    error = ""
    left = budget
    try:
        for change in changes:
            why = refusal(layer, change)
            if why:
                outcomes.append(Outcome(change.path, change.action, "refused", why))
                continue
            new = change.new
            if new is not None and new.kind == "file" and change.action != "mode":
                if new.size > left:
                    outcomes.append(
                        Outcome(
                            change.path,
                            change.action,
                            "conflict",
                            f"{new.size} bytes, more than --rw writes into the project in one "
                            f"run ({budget >> 20} MiB, {max(left, 0) >> 20} MiB left)",
                        )
                    )
                    continue
                left -= new.size
            try:
                outcomes.append(_apply_one(layer, layer_fd, project_fd, change, when))
            except ApplyError as exc:
                error = str(exc.strerror)
                break
        outcomes = _recheck_links(layer, project_fd, outcomes)
    finally:
        os.close(layer_fd)
        os.close(project_fd)
    return ApplyReport(outcomes=tuple(outcomes), error=error)


def _recheck_links(layer: Layer, project_fd: int, outcomes: list[Outcome]) -> list[Outcome]:
    """Each link applied, checked again (:func:`link_refusal`) in the project as it now
    is, and removed (its outcome refused) if it fails.

    Before the apply a link was checked in the layer and in the project apart; the
    project after it is a mix of both (a refused or conflicting change keeps the
    project's entry), which only now exists to be checked.
    """
    checked: list[Outcome] = []
    for outcome in outcomes:
        if outcome.result != "applied" or outcome.action == "deleted":
            checked.append(outcome)
            continue
        try:
            with _parent(project_fd, outcome.path) as (parent, name):
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    checked.append(outcome)
                    continue
                target = os.readlink(name, dir_fd=parent)
                why = link_refusal((layer.project,), outcome.path, target)
                if why is None:
                    checked.append(outcome)
                    continue
                os.unlink(name, dir_fd=parent)
        except OSError:
            why = "the link is gone or unreachable"  # nothing of it is left to lead anywhere
        why = f"once the rest is applied: {why}"
        checked.append(Outcome(outcome.path, outcome.action, "refused", why))
    return checked
