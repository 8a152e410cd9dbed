"""The sandbox's copy-on-write layer over the project: where a run's writes to /work land.

By default a run sees the project at /work through overlayfs. The project is the
bottom, read-only lower layer; a *mask layer* jhansi builds for the run sits above
it (an empty read-only stand-in for each masked file, an empty opaque directory for
each masked directory, so the host's ``.env`` cannot be read through the overlay);
every write goes to the sandbox's *upper* directory. Reads see the project as it is
now, with the layer's own changes on top. The layer belongs to the named sandbox,
beside its home, one per project, and persists across runs like the home::

    <data>/sandboxes/NAME/layers/<key>/   jhansi's own (0711)
        upper/    the sandbox's writes (handed to its host uid, like the home)
        work/     overlayfs's scratch directory
        masks/    the run's mask layer (rebuilt for every run)
        state.json  the project it covers, and what the project held when the
                  sandbox first changed each path (to tell a later host change)

Nothing is written to the project until ``jhansi sandbox apply`` copies chosen
changes into it with :func:`jhansi.sandbox.layer.apply_changes` (configuration,
locks, ``.git`` and masked paths never; links only inside; conflicts kept).

What the layer changed is listed and brought out by :mod:`jhansi.sandbox.overlay_plan`;
the layer is read by descriptor, never through a link, with overlay's markers read
as the kernel reads them (:mod:`jhansi.sandbox.overlay_read`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import blake3

from jhansi.errors import SandboxError
from jhansi.sandbox.changes import FileChange, Snapshot
from jhansi.sandbox.interface import Overlay, XattrNamespace
from jhansi.sandbox.layer import _DIR_FLAGS, Entry, _parent, _walk
from jhansi.sandbox.overlay_read import (
    OPAQUE,
    is_opaque,
    listing,
    namespace_of,
    project_entry,
    project_subtree,
)
from jhansi.sandbox.stamps import Stamp, stamp_of

#: The directory of a sandbox that holds its layers, one per project.
LAYERS = "layers"
_STATE = "state.json"
_STATE_VERSION = 1
#: Entries a plan lists at most (a sandbox may leave millions); past it, it says so.
MAX_ENTRIES = 500_000


@dataclass(frozen=True, slots=True)
class LayerDirs:
    """Where one sandbox's layer over one project lives on the host."""

    root: Path
    project: Path
    """The project's real path (no link in it): the overlay's bottom layer."""

    @property
    def upper(self) -> Path:
        """The sandbox's writes (the overlay's upper directory)."""
        return self.root / "upper"

    @property
    def work(self) -> Path:
        """overlayfs's scratch directory (same file system as :attr:`upper`)."""
        return self.root / "work"

    @property
    def masks(self) -> Path:
        """The run's mask layer (above the project, below :attr:`upper`)."""
        return self.root / "masks"

    @property
    def state(self) -> Path:
        """jhansi's notes about the layer (:func:`load_state`)."""
        return self.root / _STATE

    @property
    def walks(self) -> Path:
        """jhansi's kept walks of the project (:mod:`jhansi.sandbox.stamps`), 0700."""
        return self.root / "walks"


def layer_key(project: Path) -> str:
    """The name of the layer over the project at the real path ``project``."""
    return blake3.blake3(os.fsencode(str(project))).hexdigest()[:16]


def layer_dirs(sandbox_dir: Path, project: Path) -> LayerDirs:
    """The layer of the sandbox in ``sandbox_dir`` over ``project`` (resolved once: a
    project that is a link is the directory it leads to now)."""
    real = Path(os.path.realpath(project))
    return LayerDirs(sandbox_dir / LAYERS / layer_key(real), real)


def layers_in(sandbox_dir: Path) -> list[LayerDirs]:
    """Every layer the sandbox has, with the project each covers (from its state)."""
    found: list[LayerDirs] = []
    try:
        names = sorted(listing(sandbox_dir / LAYERS))
    except OSError:
        return found
    for name in names:
        root = sandbox_dir / LAYERS / name
        project = load_state(root / _STATE).get("project")
        if isinstance(project, str) and layer_key(Path(project)) == name:
            found.append(LayerDirs(root, Path(project)))
    return found


def misplaced(dirs: LayerDirs) -> str | None:
    """Why the layer cannot be mounted over its project, or ``None``.

    The upper directory must never be inside the project (the sandbox's writes would
    land in it), nor the project inside the layer.
    """
    root = Path(os.path.realpath(dirs.root))
    if root.is_relative_to(dirs.project):
        return f"jhansi's data directory ({root}) is inside the project"
    if dirs.project.is_relative_to(root):
        return f"the project is inside the sandbox's layer ({root})"
    return None


# -- state -----------------------------------------------------------------------------------


def load_state(path: Path) -> dict[str, Any]:
    """The layer's notes (``{}`` when missing or unreadable: a layer without notes
    still works; conflicts are then judged against the project as it is)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(dirs: LayerDirs, state: dict[str, Any]) -> None:
    """Replace the layer's notes atomically (mode 0600)."""
    partial = dirs.root / f".{_STATE}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(state, handle, sort_keys=True)
    partial.replace(dirs.state)


def entry_fields(entry: Entry | None) -> dict[str, Any] | None:
    """An entry as JSON (``None`` stays ``None``: the path was absent)."""
    if entry is None:
        return None
    return {
        "kind": entry.kind,
        "mode": entry.mode,
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "ino": entry.ino,
        "target": entry.target,
    }


def entry_from(fields: Any) -> Entry | None:
    """The inverse of :func:`entry_fields` (``None`` for anything malformed)."""
    if not isinstance(fields, dict):
        return None
    try:
        kind = fields["kind"]
        if kind not in ("file", "dir", "link"):
            return None
        target = fields.get("target")
        return Entry(
            kind,
            int(fields["mode"]),
            int(fields["size"]),
            int(fields["mtime_ns"]),
            int(fields["ino"]),
            target if isinstance(target, str) else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


# -- before a run ----------------------------------------------------------------------------


def _own_dir(path: Path, mode: int) -> None:
    """Make ``path`` a directory if missing; refuse anything else there (a link)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory (a link?)")


def prepare(dirs: LayerDirs, masked: Iterable[Path], xattr: XattrNamespace) -> dict[str, Any]:
    """Make the layer's directories (if new) and the run's mask layer; return its state.

    ``masked``: the project's paths to hide (:func:`jhansi.sandbox.masks.find_masked`:
    never a link, never below one). The layer's root and the mask layer are jhansi's
    and stay readable (a rootless engine's user, or the unprivileged uid bwrap runs
    as, must reach them); ``upper`` and ``work`` are the backend's to hand over.
    """
    _own_dir(dirs.root.parent, 0o711)
    dirs.root.parent.chmod(0o711)
    _own_dir(dirs.root, 0o711)
    dirs.root.chmod(0o711)
    _own_dir(dirs.upper, 0o700)
    _own_dir(dirs.work, 0o700)
    state = load_state(dirs.state)
    if state.get("project") != str(dirs.project):
        state = {"version": _STATE_VERSION, "project": str(dirs.project), "baselines": {}}
    state.setdefault("xattr", xattr)
    if state.get("xattr") != xattr:
        convert_opaque(dirs.upper, str(state.get("xattr")), xattr)
        state["xattr"] = xattr
    hidden = sorted(path.relative_to(dirs.project).as_posix() for path in masked)
    build_masks(dirs, hidden, xattr)
    state["masked"] = hidden  # open_directories never makes twins there
    save_state(dirs, state)
    return state


def build_masks(dirs: LayerDirs, masked: Iterable[str], xattr: XattrNamespace) -> None:
    """The mask layer for a run: for each masked path, an empty read-only stand-in
    (a directory is opaque, or where the attribute cannot be set, whited out entry by
    entry), below directories that look like the project's own."""
    from jhansi.sandbox.tree import remove_tree

    remove_tree(dirs.masks)
    dirs.masks.mkdir(mode=0o755)
    dirs.masks.chmod(0o755)
    root = os.open(dirs.masks, _DIR_FLAGS)
    try:
        for rel in sorted(masked):
            _stand_in(root, dirs.project, rel, xattr)
    finally:
        os.close(root)


def _stand_in(root: int, project: Path, rel: str, xattr: XattrNamespace) -> None:
    parts = rel.split("/")
    fds: list[int] = []
    try:
        current = root
        for i, part in enumerate(parts[:-1]):
            try:
                os.mkdir(part, 0o700, dir_fd=current)
                made = True
            except FileExistsError:
                made = False
            child = os.open(part, _DIR_FLAGS, dir_fd=current)
            fds.append(child)
            if made:
                # The merged directory takes the topmost lower layer's attributes:
                # the project's own, so that the sandbox sees what it would see there.
                with contextlib.suppress(OSError):
                    st = os.lstat(project.joinpath(*parts[: i + 1]))
                    os.fchmod(child, stat.S_IMODE(st.st_mode) & 0o7777)
                    if os.geteuid() == 0:
                        os.fchown(child, st.st_uid, st.st_gid)
            current = child
        name = parts[-1]
        source = project / rel
        if stat.S_ISDIR(os.lstat(source).st_mode):
            os.mkdir(name, 0o755, dir_fd=current)
            fd = os.open(name, _DIR_FLAGS, dir_fd=current)
            try:
                try:
                    os.setxattr(fd, f"{xattr}.{OPAQUE}", b"y")
                except OSError:
                    # trusted.* needs root: hide each entry by name instead (new names
                    # made in the project during the run would show; said in the docs).
                    with contextlib.suppress(OSError):
                        for entry in listing(source):
                            os.mknod(entry, stat.S_IFCHR, 0, dir_fd=fd)
                os.fchmod(fd, 0o555)
            finally:
                os.close(fd)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(name, flags, 0o444, dir_fd=current)
            os.fchmod(fd, 0o444)
            os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)


def convert_opaque(upper: Path, old: str, new: XattrNamespace) -> None:
    """Mark the opaque directories of ``upper`` in the ``new`` namespace (a layer written
    by one backend, mounted by another): raises :class:`OSError` if that cannot be set.

    Opaque is what the ``old`` namespace says (the one the kernel honoured), and only
    that: a marker already in ``new`` on a directory ``old`` does not mark opaque was
    set by a script (under Docker's ``trusted.*`` overlay, ``user.overlay.opaque`` is a
    plain attribute) and is removed, never made real."""
    if old == new:
        return
    honoured = namespace_of(old)
    for _rel, fd in _upper_dirs(upper):
        if is_opaque(fd, honoured):
            os.setxattr(fd, f"{new}.{OPAQUE}", b"y")
        elif _has_xattr(fd, f"{new}.{OPAQUE}"):
            os.removexattr(fd, f"{new}.{OPAQUE}")


def _has_xattr(fd: int, name: str) -> bool:
    try:
        os.getxattr(fd, name)
    except OSError:
        return False
    return True


def _upper_dirs(upper: Path) -> Iterator[tuple[str, int]]:
    """Every directory of ``upper`` with a descriptor (valid until the next item)."""
    top = os.open(upper, _DIR_FLAGS)
    try:
        yield "", top
        for rel, entry, parent in _walk(top):
            if entry.kind != "dir":
                continue
            name = rel.rpartition("/")[2]
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError:
                continue
            try:
                yield rel, fd
            finally:
                os.close(fd)
    finally:
        os.close(top)


def finish_run(dirs: LayerDirs) -> None:
    """Remove the run's mask layer (the next run builds its own)."""
    from jhansi.sandbox.tree import remove_tree

    with contextlib.suppress(OSError):
        remove_tree(dirs.masks)


@dataclass
class Walked:
    """What :func:`open_directories` saw: the stamps of the project's directories it
    listed (each taken before), of the upper layer's it went through (each taken after
    its twins were made), and whether it went through everything."""

    project: list[Stamp] = field(default_factory=list)
    upper: list[Stamp] = field(default_factory=list)
    complete: bool = False


def open_directories(
    dirs: LayerDirs,
    uid: int,
    gid: int,
    *,
    deadline: float | None = None,
    masked: Iterable[str] = (),
    walked: Walked | None = None,
) -> list[str]:
    """Give the sandbox writable copies of the project's directories it may read but
    does not own; return their paths.

    When the sandbox's host uid is not the project's owner (root runs jhansi, and
    the sandbox is an id of its own), overlayfs refuses to copy a directory up for it
    (it could not give the copy the owner's uid), so nothing could be written below
    /work. Each directory the sandbox can list and enter (every parent searchable,
    by mode bits) gets an empty, non-opaque twin in the upper layer, owned by the
    sandbox: the merged directory is the same, and the sandbox may add files to it.
    Directories it could not read stay as they are (their twin would show their
    names), and so do ``masked`` ones and everything below them (a twin would show the
    names the mask hides). Nothing is made where the upper layer already has an entry,
    nor below a whiteout or an opaque directory (that would bring back what the sandbox
    deleted).
    ``deadline`` bounds the walk (a :func:`time.monotonic` instant).
    """
    made: list[str] = []
    hidden = set(masked)
    namespace = namespace_of(load_state(dirs.state).get("xattr"))
    project_fd = os.open(dirs.project, _DIR_FLAGS)
    upper_fd = os.open(dirs.upper, _DIR_FLAGS)
    # Each frame: (project dir fd, upper dir fd, prefix, names left).
    stack: list[tuple[int, int, str, list[str]]] = []
    try:
        if walked is not None:
            walked.project.append(stamp_of("", os.fstat(project_fd)))
        stack.append((project_fd, upper_fd, "", sorted(_dir_names(project_fd), reverse=True)))
        while stack:
            pfd, ufd, prefix, names = stack[-1]
            if not names:
                stack.pop()
                if walked is not None:  # its twins made: as the next run will find it
                    walked.upper.append(stamp_of(prefix.rstrip("/"), os.fstat(ufd)))
                if pfd != project_fd:
                    os.close(pfd)
                    os.close(ufd)
                continue
            if deadline is not None and time.monotonic() > deadline:
                break
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except OSError:
                continue
            if walked is not None and stat.S_ISDIR(st.st_mode):
                # Every directory looked at, entered or not (a chmod may open it later).
                walked.project.append(stamp_of(prefix + name, st))
            if prefix + name in hidden or not stat.S_ISDIR(st.st_mode):
                continue
            if not _may_list(st, uid, gid):
                _close_twin(ufd, name, st, namespace)  # one made while it was open
                continue
            if len(stack) >= MAX_DEPTH_OPEN:
                continue
            try:
                ust = os.stat(name, dir_fd=ufd, follow_symlinks=False)
            except FileNotFoundError:
                ust = None
            if ust is None:
                os.mkdir(name, 0o700, dir_fd=ufd)
                made.append(prefix + name)
            elif not stat.S_ISDIR(ust.st_mode):
                continue  # a whiteout, or the sandbox's own file or link: left alone
            try:
                child_u = os.open(name, _DIR_FLAGS, dir_fd=ufd)
            except OSError:
                continue
            try:
                if ust is None:
                    os.fchmod(child_u, stat.S_IMODE(st.st_mode) & 0o777)
                    if os.geteuid() == 0:
                        os.fchown(child_u, uid, gid)
                elif is_opaque(child_u, namespace):
                    if walked is not None:
                        walked.upper.append(stamp_of(prefix + name, os.fstat(child_u)))
                    os.close(child_u)
                    continue
                elif ust.st_uid != uid and os.geteuid() == 0:
                    # a twin closed while its directory was (_close_twin): open again
                    os.fchown(child_u, uid, gid)
                    os.fchmod(child_u, stat.S_IMODE(st.st_mode) & 0o777)
                child_p = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            except OSError:
                os.close(child_u)
                continue
            try:
                below = sorted(_dir_names(child_p), reverse=True)
            except OSError:
                os.close(child_p)
                os.close(child_u)
                continue
            stack.append((child_p, child_u, prefix + name + "/", below))
        else:
            if walked is not None:
                walked.complete = True
    finally:
        for pfd, ufd, _, _ in stack:
            if pfd != project_fd:
                os.close(pfd)
                os.close(ufd)
        os.close(project_fd)
        os.close(upper_fd)
    return made


def _close_twin(
    upper_fd: int, name: str, st: os.stat_result, namespace: XattrNamespace | None
) -> None:
    """Give the upper layer's directory ``name`` (a twin, if any) the owner and mode of
    the project's directory ``st``, which the sandbox may not list.

    The twin is its merged directory's owner and mode. Made while the directory was
    open to the sandbox, it would keep it open once the project closes it (``chmod
    700``): the sandbox would go on listing it, and reading what is in it where the
    overlay looks up the lower layer as root (rootful docker). Its own files there stay,
    out of its reach; listable again, the twin is the sandbox's again
    (:func:`open_directories`). An opaque directory shows none of the project's entries
    and is left alone.
    """
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=upper_fd)
    except OSError:
        return  # no twin (or a whiteout, a file, a link: none of the project's shows)
    try:
        if is_opaque(fd, namespace):
            return
        ust = os.fstat(fd)
        if os.geteuid() == 0 and (ust.st_uid, ust.st_gid) != (st.st_uid, st.st_gid):
            os.fchown(fd, st.st_uid, st.st_gid)  # only root gave a twin to another uid
        mode = stat.S_IMODE(st.st_mode) & 0o777
        if stat.S_IMODE(ust.st_mode) != mode:
            os.fchmod(fd, mode)
    except OSError as exc:
        raise SandboxError(
            f"cannot close the sandbox's copy of {name} (the project closed that "
            f"directory to it): {exc.strerror or exc}",
            hint="Remove the sandbox's layer over this project (`jhansi sandbox rm NAME`), "
            "or open the directory to the sandbox again.",
        ) from None
    finally:
        os.close(fd)


def _dir_names(fd: int) -> list[str]:
    """The names of the directories in the directory ``fd`` (no link followed).

    The file type comes from the directory entry where the file system gives it, so a
    project's files cost no ``stat`` each: only directories get twins, and each is
    still checked with ``stat`` before one is made.
    """
    with os.scandir(fd) as entries:
        return [e.name for e in entries if e.is_dir(follow_symlinks=False)]


#: Directory levels :func:`open_directories` descends (deeper ones stay as they are).
MAX_DEPTH_OPEN = 64
#: Seconds :func:`ready_upper` spends opening directories before a run, at most.
OPEN_SECONDS = 5.0


def ready_upper(overlay: Overlay, project: Path, uid: int, gid: int) -> None:
    """Before a run, once the upper layer is the sandbox's (``uid``): when the sandbox is
    not the project's owner, give it twins of the directories it may read
    (:func:`open_directories`) so that it can write below /work, and note them."""
    try:
        owner = project.stat().st_uid
    except OSError:
        return
    if owner == uid:
        return
    dirs = LayerDirs(overlay.upper.parent, project)
    masked = load_state(dirs.state).get("masked")
    if not isinstance(masked, list):
        return  # without the masks, a twin could show names they hide
    hidden = sorted(m for m in masked if isinstance(m, str))
    # Kept with the layer: nothing to make while neither the project's directories nor
    # the upper layer's changed since a walk made every twin (jhansi.sandbox.stamps).
    from jhansi.sandbox import stamps as kept

    cache = dirs.walks / "twins.json"
    key = {
        "walk": "twins",
        "project": str(project),
        "upper": str(dirs.upper),
        "uid": uid,
        "gid": gid,
        "masked": hidden,
        "xattr": str(load_state(dirs.state).get("xattr")),
        "code": kept.code_identity(__file__),
    }
    found = kept.load(cache, key)
    if found is not None:
        trees, _ = found
        if (
            len(trees) == 2
            and kept.unchanged(str(project), trees[0])
            and kept.unchanged(str(dirs.upper), trees[1])
        ):
            return
    walked = Walked()
    made = open_directories(
        dirs,
        uid,
        gid,
        deadline=time.monotonic() + OPEN_SECONDS,
        masked=hidden,
        walked=walked,
    )
    note_opened(dirs, made)
    if walked.complete:
        kept.keep(cache, key, [walked.project, walked.upper], None)
    else:
        kept.forget(cache)


def _may_list(st: os.stat_result, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may read and enter the directory ``st`` by mode bits."""
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & 5 == 5


# -- after a run -----------------------------------------------------------------------------


def note_baselines(dirs: LayerDirs, paths: Iterable[str]) -> None:
    """Note, for each path the run changed that has no note yet, what the project holds
    there now (``None``: nothing), so that a later host change is told apart; and where
    the layer deleted a directory of the project (a whiteout, a file or link in its
    place, an opaque directory) at such a path or above it, every entry of the
    project's tree there: what the sandbox deleted, and all that applying it may delete.
    """
    state = load_state(dirs.state)
    if state.get("project") != str(dirs.project):
        return
    baselines = state.setdefault("baselines", {})
    if not isinstance(baselines, dict):
        baselines = state["baselines"] = {}
    wanted = list(paths)
    fresh = [p for p in wanted if p not in baselines]
    namespace = namespace_of(state.get("xattr"))
    before = len(baselines)
    project_fd = os.open(dirs.project, _DIR_FLAGS)
    upper_fd = os.open(dirs.upper, _DIR_FLAGS)
    try:
        for rel in fresh[:MAX_ENTRIES]:
            baselines[rel] = entry_fields(project_entry(project_fd, rel))
        tops: set[str] = set()
        for rel in wanted:
            parts = rel.split("/")
            tops.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        for top in sorted(tops):
            if len(baselines) >= MAX_ENTRIES:
                break  # the rest stays unnoted: a conflict, never deleted
            if _deletes_tree(upper_fd, top, namespace):
                for sub, entry in project_subtree(project_fd, top)[:MAX_ENTRIES]:
                    baselines.setdefault(sub, entry_fields(entry))
    finally:
        os.close(upper_fd)
        os.close(project_fd)
    if len(baselines) != before:
        save_state(dirs, state)


def _deletes_tree(upper_fd: int, rel: str, namespace: XattrNamespace | None) -> bool:
    """Whether the upper entry at ``rel`` hides the project's tree there: a whiteout, a
    file or link, or an opaque directory (``False`` when the layer has nothing there)."""
    try:
        with _parent(upper_fd, rel) as (parent, name):
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                return True
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except (OSError, ValueError):
        return False
    try:
        return is_opaque(fd, namespace)
    finally:
        os.close(fd)


def note_opened(dirs: LayerDirs, opened: list[str]) -> None:
    """Remember the directories :func:`open_directories` made (no change of their own)."""
    if not opened:
        return
    state = load_state(dirs.state)
    known = set(state.get("opened") or ())
    known.update(opened)
    state["opened"] = sorted(known)[:MAX_ENTRIES]
    save_state(dirs, state)


def merged_changes(
    dirs: LayerDirs, changes: list[FileChange], before: Snapshot, after: Snapshot
) -> list[FileChange]:
    """A run's changes to the upper directory (``before``/``after`` are its snapshots),
    said as the sandbox saw /work: a new whiteout is a deletion, a file copied up is a
    modification, a file made where the sandbox had deleted one is an addition, and a
    whiteout over nothing is no change. (A directory deleted and made again hides the
    project's files below it; ``jhansi sandbox diff`` lists those.)"""

    def white(mode: int | None) -> bool:
        return mode is not None and stat.S_ISCHR(mode)

    out: list[FileChange] = []
    project_fd = os.open(dirs.project, _DIR_FLAGS)
    try:
        for change in changes:
            old = before.files.get(change.path)
            new = after.files.get(change.path)
            was, now = (old[3] if old else None), (new[3] if new else None)
            if now is None:
                out.append(change)
                continue
            in_project = project_entry(project_fd, change.path) is not None
            if white(now):
                if white(was) or (was is None and not in_project):
                    continue
                out.append(replace(change, change="deleted", size=None, blake3=None))
            elif white(was):
                out.append(replace(change, change="added"))
            elif was is None and in_project:
                out.append(replace(change, change="modified"))
            else:
                out.append(change)
    finally:
        os.close(project_fd)
    return out


def shadows(dirs: LayerDirs, rel: str) -> bool:
    """Whether the layer puts something else than the project's own entry at ``rel``: an
    entry of its own there, or a parent that is not a plain (non-opaque) directory."""
    parts = rel.split("/")
    fds: list[int] = []
    namespace = namespace_of(load_state(dirs.state).get("xattr"))
    try:
        current = os.open(dirs.upper, _DIR_FLAGS)
        fds.append(current)
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=current, follow_symlinks=False)
            except FileNotFoundError:
                return False  # nothing of the layer's here: the project's shows
            if i == len(parts) - 1 or not stat.S_ISDIR(st.st_mode):
                return True
            current = os.open(part, _DIR_FLAGS, dir_fd=current)
            fds.append(current)
            if is_opaque(current, namespace):
                return True
        return False  # pragma: no cover - the loop returns
    finally:
        for fd in fds:
            os.close(fd)
