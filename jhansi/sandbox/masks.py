"""Which paths of a project the sandbox must not see, and how to hide them safely.

A project is untrusted input (a cloned repository, a pull request), and a mount
over a path follows a symbolic link at that path: bwrap mounts after
``pivot_root``, with the host's root at ``/oldroot``, so its ``creat()`` of a
missing mount point makes a file wherever the link points, **on the host**; runc
resolves the link inside the container and creates the target there (in the
project itself when it is writable). So nothing is ever mounted over a link or
below one, on any backend:

- a masked name that is a symbolic link is left as the link itself. Inside the
  sandbox it resolves in the sandbox's own filesystem (the project at /work, the
  read-only system), never to a host path outside the mounts; when it points (on
  the host, through any chain of links) to a file or directory strictly inside the
  project, that target is masked in its place, so ``.env -> config/prod.env``
  still hides ``prod.env``;
- the walk never enters a linked directory (what is below it is not the project's);
- :func:`check_mounts` is the backends' own last check: an ``empty`` mount whose
  source is a link, or any mount below /work whose existing path in the project
  goes through a link, is refused.

Matching is case-insensitive: ``.ENV``, ``server.PEM`` and ``ID_RSA`` are masked.
FIFOs, sockets and device nodes with a masked name are masked too (a FIFO named
``.env`` may be fed secrets by a host tool): bwrap and runc mount an empty file over
them without opening them; gVisor's gofer opens a mount point first (a FIFO would
block it forever), so there such a mask refuses the run.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jhansi.errors import SandboxError
from jhansi.sandbox.interface import WORKDIR, Mount
from jhansi.sandbox.stamps import Stamp, stamp_of

__all__ = [
    "Matcher",
    "check_mounts",
    "compile_patterns",
    "find_masked",
    "masked_kept",
    "masks_directory",
    "mounts_below",
]


_WILDCARDS = frozenset("*?[")
_MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Matcher:
    """Mask patterns compiled for a walk over every name in a project.

    Case-insensitive: a mask widens what is hidden, and ``.ENV`` is as secret as
    ``.env``. Plain names are a set lookup and ``*.ext`` patterns a suffix test
    (most of the built-in list); the rest are one regex for names and one for
    relative paths. Matching every name against every glob with ``fnmatch`` costs
    more than the walk itself on a large project.
    """

    names: frozenset[str]
    suffixes: tuple[str, ...]
    by_name: re.Pattern[str]
    by_path: re.Pattern[str]

    def matches(self, name: str, rel: str) -> bool:
        """Whether the entry ``name`` (at ``rel`` in the project) is masked."""
        lower = name.lower()
        return (
            lower in self.names
            or lower.endswith(self.suffixes)
            or self.by_name.match(name) is not None
            or self.by_path.match(rel) is not None
        )


@functools.lru_cache(maxsize=32)
def compile_patterns(patterns: tuple[str, ...]) -> Matcher:
    """The :class:`Matcher` for ``patterns`` (globs; with a ``/``, matched against the
    path relative to the project, else against every name).

    Kept per process (a pure value of the patterns): the helper compiles the built-in
    masks once, and each run it forks finds them here."""
    never = "(?!)"
    names: set[str] = set()
    suffixes: list[str] = []
    globs: list[str] = []
    paths: list[str] = []
    for pattern in patterns:
        if "/" in pattern:
            paths.append(fnmatch.translate(pattern))
        elif not _WILDCARDS & set(pattern):
            names.add(pattern.lower())
        elif pattern.startswith("*") and not _WILDCARDS & set(pattern[1:]):
            suffixes.append(pattern[1:].lower())
        else:
            globs.append(fnmatch.translate(pattern))
    return Matcher(
        frozenset(names),
        tuple(suffixes),
        re.compile("|".join(globs) or never, re.IGNORECASE),
        re.compile("|".join(paths) or never, re.IGNORECASE),
    )


def find_masked(
    project: Path,
    patterns: tuple[str, ...],
    *,
    stamps: list[Stamp] | None = None,
    through_links: list[str] | None = None,
    missed: list[str] | None = None,
) -> Iterator[Path]:
    """Paths under ``project`` whose name (or relative path) matches a mask pattern.

    A masked directory is not descended into: it is hidden whole, and so is one that
    cannot be listed (its names are unknown); no path yielded is below another. Never
    yields a symbolic link, nor a path below one: a masked link yields its target
    instead when that target is strictly inside the project (see the module's
    docstring), else nothing.

    ``stamps``: where to note the stamp of each directory looked at, taken before it is
    (:mod:`jhansi.sandbox.stamps`); ``through_links``: where to note each masked link
    (what it hides depends on more than the directories listed); ``missed``: where to
    note each path the walk could not look at and did not hide (its status not read,
    or gone while the walk went). A project that cannot be listed is refused
    (:class:`SandboxError`): nothing in it could be hidden.
    """
    matcher = compile_patterns(patterns)
    root = os.fspath(project)
    real_root = os.path.realpath(root)
    hidden: list[str] = []
    pending: list[tuple[str, os.stat_result | None]] = [("", None)]
    while pending:
        prefix, st = pending.pop()
        directory = f"{root}/{prefix}" if prefix else root
        if stamps is not None:
            try:
                st = st or os.stat(directory)  # noqa: PTH116 (str paths in this walk)
            except OSError:
                if missed is not None:
                    missed.append(prefix)
                continue
            stamps.append(stamp_of(prefix.rstrip("/"), st))
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            if missed is not None:  # gone, or replaced, since its parent was listed
                missed.append(prefix)
            continue
        except OSError as exc:
            # Not listed, its names are unknown; the sandbox (same user or less) cannot
            # list it either, but may open a name it guesses (a directory ``chmod 311``).
            if not prefix:
                # The project itself: what it holds cannot be hidden, so it is not shown.
                raise SandboxError(
                    f"cannot list the project directory {root} to hide its secrets "
                    f"({exc.strerror or exc}): nothing in it would be masked",
                    hint="Make it listable by you (chmod u+r), or run the script from "
                    "another directory.",
                ) from None
            hidden.append(prefix.rstrip("/"))
            continue
        for entry in entries:
            rel = prefix + entry.name
            if matcher.matches(entry.name, rel):
                if entry.is_symlink():
                    if through_links is not None:
                        through_links.append(rel)
                    target = _target_inside(entry.path, real_root)
                    if target is not None:
                        hidden.append(target)
                else:
                    hidden.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                child = None
                if stamps is not None:
                    try:
                        child = entry.stat(follow_symlinks=False)
                    except OSError:
                        if missed is not None:
                            missed.append(rel)
                        continue
                pending.append((rel + "/", child))
    for rel in _outermost(hidden):
        yield project / rel


def masked_kept(project: Path, patterns: tuple[str, ...], cache: Path) -> list[Path]:
    """What to hide in a copy-on-write /work: :func:`find_masked` and the project's mount
    points (:func:`mounts_below`), kept in ``cache`` with the stamps of every directory
    the walk listed and reused while none has changed (:mod:`jhansi.sandbox.stamps`).

    A walk that met a masked symbolic link is not kept (where a link leads may change
    with no directory of the project changing), nor one that could not look at a
    directory (it has no stamp), nor one that stamped a directory changed just before
    it began (:data:`jhansi.sandbox.stamps.SETTLED_NS`) or on a file system whose
    ctimes prove nothing (:func:`jhansi.sandbox.stamps.trusted`). The key names the
    matching code too: another jhansi walks again.
    """
    from jhansi.sandbox import stamps as kept

    root = os.fspath(project)
    key = {
        "walk": "masks",
        "root": os.path.realpath(root),
        "patterns": list(patterns),
        "code": kept.code_identity(__file__),
    }
    found = kept.load(cache, key)
    if found is not None:
        trees, answer = found
        if len(trees) == 1 and isinstance(answer, list) and kept.unchanged(root, trees[0]):
            return [project / str(rel) for rel in answer]
    stamps: list[Stamp] = []
    links: list[str] = []
    missed: list[str] = []
    began = time.time_ns()
    walked = find_masked(project, patterns, stamps=stamps, through_links=links, missed=missed)
    rels = [path.relative_to(project).as_posix() for path in walked]
    # An overlay's lower layer shows no mount below it: /work shows what is under a mount
    # point, which the walk (through the mount) never listed, so it is hidden whole. Read
    # after the walk: a mount over a directory stamped before it changes that stamp; one
    # over a file hides nothing a name could tell.
    rels = _outermost([*rels, *mounts_below(root)])
    if links or missed:
        kept.forget(cache)
    else:
        kept.keep(cache, key, [stamps], rels, began_ns=began)
    return [project / rel for rel in rels]


def mounts_below(project: str) -> list[str]:
    """The mount points strictly inside ``project`` (by its real path), relative to it,
    as this process's ``/proc/self/mountinfo`` lists them."""
    real = os.path.realpath(project).rstrip("/") + "/"
    found: list[str] = []
    try:
        with open(_MOUNTINFO, "rb") as handle:  # noqa: PTH123
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split(b" ", 5)
        if len(fields) < 5:
            continue
        # "\040" and the like stand for a space, tab, newline or backslash in a path
        point = os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m[1], 8)]), fields[4]))
        if point.startswith(real):
            found.append(point[len(real) :])
    return found


def _target_inside(link: str, real_root: str) -> str | None:
    """The project-relative real path ``link`` leads to, if it exists strictly inside."""
    try:
        real = os.path.realpath(link, strict=True)
    except (OSError, RuntimeError):
        return None  # dangling, a loop, or unreachable: nothing of the project's to hide
    if not real.startswith(real_root.rstrip("/") + "/"):
        return None  # outside the project (or the project itself): not mounted in /work
    return os.path.relpath(real, real_root).replace(os.sep, "/")


def _outermost(paths: list[str]) -> list[str]:
    """``paths`` without duplicates and without any path below another (sorted)."""
    kept: set[str] = set()
    for path in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        parts = path.split("/")
        if not any("/".join(parts[:i]) in kept for i in range(1, len(parts))):
            kept.add(path)
    return sorted(kept)


def masks_directory(source: Path) -> bool:
    """Whether an ``empty`` mount of ``source`` is an empty directory (else an empty file).

    Decided by ``lstat``: a link is never followed (:func:`check_mounts` refuses one).
    """
    return stat.S_ISDIR(os.lstat(source).st_mode)


def check_mounts(mounts: Sequence[Mount], *, opens_targets: bool = False) -> None:
    """Refuse mounts that would go through a symbolic link in the project.

    The backends' own check, at build time, whatever the caller decided: an
    ``empty`` mount whose source is a link (or is gone), and a mount below /work
    whose existing path in the project (the mount at /work) has a link in it, or
    ``..``. ``opens_targets``: the runtime opens a mount point before mounting over
    it (gVisor's gofer does, and blocks forever on a FIFO; opening a device node can
    act on the device), so an ``empty`` mount over anything but a regular file or a
    directory is refused too. Raises :class:`SandboxError` naming the path.
    """
    project = next((m.source for m in mounts if m.target == WORKDIR), None)
    for mount in mounts:
        if mount.kind == "empty":
            _refuse_link(mount.source, mount.source)
            mode = os.lstat(mount.source).st_mode
            if opens_targets and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise SandboxError(
                    f"cannot mask {mount.source} on this runtime: it is a FIFO, socket or "
                    "device node, and the runtime (gVisor) would open it to mount over it",
                    hint="Remove it from the project (or rename it), or run it with "
                    "--backend bwrap or on an engine's default runtime.",
                )
        if project is None or not mount.target.startswith(f"{WORKDIR}/"):
            continue
        path = project
        for part in mount.target[len(WORKDIR) + 1 :].split("/"):
            if part in ("", ".", ".."):
                raise SandboxError(
                    f"refusing to mount at {mount.target}: not a plain path below {WORKDIR}",
                    hint="This is a bug in jhansi or in the caller of its API; please report it.",
                )
            path = path / part
            if not _refuse_link(path, mount.source, missing_ok=True):
                break


def _refuse_link(path: Path, source: Path, *, missing_ok: bool = False) -> bool:
    """Raise if ``path`` is a link; whether it exists."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        if missing_ok:
            return False
        raise SandboxError(
            f"cannot mask {path}: it disappeared while the sandbox was being built",
            hint="Run again; if this keeps happening, something is changing the project.",
        ) from None
    except OSError as exc:
        raise SandboxError(
            f"cannot check {path} before mounting {source}: {exc.strerror}",
            hint="Make the project readable to you, or mask that path with [sandbox] mask.",
        ) from None
    if stat.S_ISLNK(mode):
        raise SandboxError(
            f"refusing to mount over {path}: it is a symbolic link, and a mount would "
            "follow it (possibly onto the host)",
            hint="jhansi leaves masked links as they are; this one changed while the "
            "sandbox was being built. Run again, or remove the link.",
        )
    return True
