"""Bringing a sandbox's results out: the library behind ``jhansi sandbox diff``, ``apply``
and ``cp``.

A run writes /work into its sandbox's copy-on-write layer
(:mod:`jhansi.sandbox.overlay`) and its home; nothing reaches the project by itself.
:func:`diff` says what the layer changed against the project as it is now;
:func:`apply` copies chosen changes into the project (as ``--rw`` does: protected
names never, links only inside, conflicts kept) and records each application in the
ledger (``sandbox.apply``: the paths, what was done to each, the BLAKE3 of what was
written); :func:`copy_out` copies one file or directory of a home or a layer to a
host path, following no link.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jhansi.errors import JhansiError, LedgerError, UsageError
from jhansi.sandbox.changes import shown_name
from jhansi.sandbox.interface import HOME, WORKDIR
from jhansi.sandbox.overlay import LayerDirs, layer_dirs, layers_in
from jhansi.sandbox.overlay_plan import Plan, Planned, plan
from jhansi.sandbox.workspace import Workspace, default_name, validate_name

if TYPE_CHECKING:
    from jhansi.config import Settings
    from jhansi.ledger.store import Ledger
    from jhansi.paths import Paths
    from jhansi.sandbox.layer import ApplyReport

#: The ledger record kind of one ``jhansi sandbox apply``.
APPLY_KIND = "sandbox.apply"


@dataclass(frozen=True, slots=True)
class LayerDiff:
    """What one sandbox's layer changed against its project."""

    sandbox: str
    dirs: LayerDirs
    plan: Plan
    refused: dict[str, str]
    """Paths ``apply`` would refuse, and why (masked, configuration, outward link)."""
    masked: frozenset[str] = frozenset()
    """The project's masked paths (relative): their content is never shown."""

    @property
    def items(self) -> list[Planned]:
        """The changes, in the order they would be applied."""
        return self.plan.items

    def hides(self, rel: str) -> bool:
        """Whether ``rel`` is masked or below a masked directory (the project's file
        there is a secret the sandbox never saw: no line diff shows it)."""
        return any(rel == m or rel.startswith(m + "/") for m in self.masked)


@dataclass(frozen=True, slots=True)
class Applied:
    """What one ``jhansi sandbox apply`` did."""

    sandbox: str
    dirs: LayerDirs
    report: ApplyReport
    hashes: dict[str, str]
    """BLAKE3 of each file written into the project."""
    record: str | None = None
    """The hash of its ``sandbox.apply`` ledger record."""


def sandbox_name(name: str | None, project: Path | None) -> str:
    """``name``, or the sandbox ``jhansi run`` uses for the project (``--project``, else
    the one found from the working directory)."""
    if name:
        return validate_name(name)
    from jhansi.runner.script import find_project

    return default_name((project or find_project(Path.cwd())).absolute())


def find_layer(workspace: Workspace, name: str, project: Path | None) -> LayerDirs:
    """The layer of sandbox ``name`` over ``project`` (default: its only one, else the
    one over the project of the working directory)."""
    if not workspace.exists(name):
        raise UsageError(f"no sandbox named {name!r}", hint="List them with `jhansi sandbox ls`.")
    directory = workspace.home(name).parent
    layers = layers_in(directory)
    if project is not None:
        wanted = layer_dirs(directory, project)
        found = [d for d in layers if d.root == wanted.root]
        if found:
            return found[0]
        raise UsageError(
            f"sandbox {name!r} has no layer over {project}: no run there wrote to /work",
            hint="Run a script in that project first, or name another with --project DIR.",
        )
    if len(layers) == 1:
        return layers[0]
    if not layers:
        raise UsageError(
            f"sandbox {name!r} has no layer: no run in it wrote to /work",
            hint="Files a script wrote under $HOME are in its home: `jhansi sandbox cp "
            f"{name}:~/FILE DEST` copies one out.",
        )
    from jhansi.runner.script import find_project

    here = layer_dirs(directory, find_project(Path.cwd()))
    found = [d for d in layers if d.root == here.root]
    if found:
        return found[0]
    listed = ", ".join(str(d.project) for d in layers[:5])
    raise UsageError(
        f"sandbox {name!r} has layers over {len(layers)} projects ({listed})",
        hint="Say which with --project DIR.",
    )


def _masked(settings: Settings, dirs: LayerDirs, found: Plan) -> set[str]:
    """What diff never shows and apply never writes, relative to the project: what the
    masks hide now, what they hid when the sandbox ran, and what the sandbox could not
    read (:func:`_unreadable`).

    The masks are the union of ``settings`` (the caller's: user configuration,
    environment, the working directory's project), the layer's own project's
    configuration (read as any checkout's is, without trust: masks only tighten, so
    they count whether trusted or not; wherever ``diff``/``apply`` is started from) and
    the masked paths the layer's state recorded at run time.
    """
    from jhansi.config import DEFAULT_MASK, load_settings
    from jhansi.sandbox.masks import find_masked
    from jhansi.sandbox.overlay import load_state

    own = load_settings(start=dirs.project, strict=False)
    patterns = tuple(dict.fromkeys(DEFAULT_MASK + settings.sandbox.mask + own.sandbox.mask))
    masked = {p.relative_to(dirs.project).as_posix() for p in find_masked(dirs.project, patterns)}
    recorded = load_state(dirs.state).get("masked")
    if isinstance(recorded, list):
        masked.update(r for r in recorded if isinstance(r, str) and r)
    return masked | _unreadable(dirs, found)


def _unreadable(dirs: LayerDirs, found: Plan) -> set[str]:
    """The paths of ``found`` whose project entry the sandbox could not read: a file
    without a read bit for the sandbox's host user (the owner of the layer's upper
    directory), a directory it could not list, or below one it could not enter.

    The sandbox may still have deleted or replaced such a file through the overlay (a
    directory it may write); ``--rw`` hides such paths from the sandbox and never
    writes them, and ``apply`` refuses them the same way (nor does ``diff`` show
    their content)."""
    try:
        owner = dirs.upper.lstat()
    except OSError:
        return set()
    uid, gid = owner.st_uid, owner.st_gid
    if uid == 0:
        return set()
    out: set[str] = set()
    try:
        project_fd = os.open(dirs.project, _NOFOLLOW_DIR)
    except OSError:
        return set()
    try:
        for item in found.items:
            if item.current is None and item.change.old is None:
                continue  # nothing of the project's there
            if not _sandbox_reads(project_fd, item.change.path, uid, gid):
                out.add(item.change.path)
    finally:
        os.close(project_fd)
    return out


_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _sandbox_reads(project_fd: int, rel: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may reach and read the project's ``rel`` by mode bits
    (each parent searchable; a file readable; a directory readable and searchable)."""
    parts = rel.split("/")
    fds: list[int] = []
    try:
        current = project_fd
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=current, follow_symlinks=False)
            except OSError:
                return True  # absent: nothing of the project's to read
            last = i == len(parts) - 1
            need = 0o5 if stat.S_ISDIR(st.st_mode) else 0o4
            if stat.S_ISLNK(st.st_mode):
                return True  # a link has no permissions of its own; nothing below it
            if not last:
                need = 0o1
            if not _allowed(st, uid, gid, need):
                return False
            if last or not stat.S_ISDIR(st.st_mode):
                return True
            try:
                current = os.open(part, _NOFOLLOW_DIR, dir_fd=current)
            except OSError:
                return True
            fds.append(current)
        return True
    finally:
        for fd in fds:
            os.close(fd)


def _allowed(st: os.stat_result, uid: int, gid: int, need: int) -> bool:
    """Whether the permission bits ``need`` (``rwx`` as 0o7) are granted to ``uid``/``gid``."""
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & need == need


def _refusals(dirs: LayerDirs, found: Plan, masked: set[str]) -> dict[str, str]:
    from jhansi.sandbox.layer import Layer, refusal

    layer = Layer(dirs.project, dirs.upper, {}, {}, frozenset(masked))
    out: dict[str, str] = {}
    for item in found.items:
        why = refusal(layer, item.change)
        if why:
            out[item.change.path] = why
    return out


def diff(
    settings: Settings, paths: Paths, name: str | None, project: Path | None = None
) -> LayerDiff:
    """What the layer of sandbox ``name`` (see :func:`find_layer`) changed."""
    sandbox = sandbox_name(name, project)
    dirs = find_layer(Workspace.from_paths(paths), sandbox, project)
    found = _plan(dirs)
    masked = _masked(settings, dirs, found)
    return LayerDiff(sandbox, dirs, found, _refusals(dirs, found, masked), frozenset(masked))


def _plan(dirs: LayerDirs) -> Plan:
    try:
        return plan(dirs)
    except OSError as exc:
        raise UsageError(
            f"cannot read the layer {dirs.root}: {exc.strerror or exc}",
            hint="Check that the project and jhansi's data directory are readable to you.",
        ) from None


def select(found: Plan, wanted: tuple[str, ...]) -> list[Planned]:
    """The planned changes at the paths ``wanted`` (``/work/...`` or relative to the
    project; a directory takes everything below it); all of them when none is named."""
    if not wanted:
        return list(found.items)
    chosen: list[Planned] = []
    for text in wanted:
        rel = _relative(text)
        matched = [
            item
            for item in found.items
            if not rel or item.change.path == rel or item.change.path.startswith(rel + "/")
        ]
        if not matched:
            raise UsageError(
                f"{text}: not changed in the sandbox's layer",
                hint="`jhansi sandbox diff` lists what it changed.",
            )
        chosen += [item for item in matched if item not in chosen]
    return [item for item in found.items if item in chosen]


def _relative(text: str) -> str:
    """A PATH of ``apply`` as a path relative to the project (``""``: all of it).

    ``/work/...`` or relative; any other absolute path, and ``..``, are refused (a
    path outside /work is nothing the layer holds)."""
    if text == WORKDIR or text.startswith(f"{WORKDIR}/"):
        text = text[len(WORKDIR) :]
    elif text.startswith("/"):
        raise UsageError(
            f"{text}: not below /work", hint="Name a path relative to the project, or /work/..."
        )
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"{text}: '..' is not allowed", hint="Name the path without '..'.")
    return "/".join(parts)


def apply(
    settings: Settings,
    paths: Paths,
    name: str | None,
    wanted: tuple[str, ...] = (),
    *,
    project: Path | None = None,
    ledger: Ledger | None = None,
) -> Applied:
    """Copy the chosen changes of the layer into the project, recorded in the ledger.

    Holds the sandbox (no run changes the layer meanwhile). The ledger is checked
    writable first (no record, no apply); what was applied is recorded even when
    some of it was refused or conflicted.
    """
    from jhansi.sandbox import overlay_plan
    from jhansi.sandbox.overlay_read import hash_file

    sandbox = sandbox_name(name, project)
    workspace = Workspace.from_paths(paths)
    dirs = find_layer(workspace, sandbox, project)
    if ledger is None:
        from jhansi.ledger.store import Ledger

        ledger = Ledger.from_settings(settings, paths=paths)
    ledger.preflight()
    with workspace.hold(sandbox):
        found = _plan(dirs)
        chosen = select(found, wanted)
        try:
            report = overlay_plan.apply(
                dirs, found, [item.change for item in chosen], _masked(settings, dirs, found)
            )
        except OSError as exc:
            raise UsageError(
                f"cannot apply the layer to {dirs.project}: {exc.strerror or exc}",
                hint="Check that the project is writable to you; nothing after the error "
                "was applied.",
            ) from None
    hashes: dict[str, str] = {}
    for outcome in report.by("applied"):
        if outcome.action != "deleted":
            digest = hash_file(dirs.project, outcome.path)
            if digest is not None:
                hashes[outcome.path] = digest
    record = _record(ledger, sandbox, dirs, report, hashes)
    return Applied(sandbox, dirs, report, hashes, record)


def _record(
    ledger: Ledger, sandbox: str, dirs: LayerDirs, report: ApplyReport, hashes: dict[str, str]
) -> str:
    from jhansi._version import __version__
    from jhansi.records import bounded_list, recordable, who

    applied: list[dict[str, Any]] = []
    for outcome in report.by("applied"):
        item: dict[str, Any] = {**outcome.as_dict()}
        if outcome.path in hashes:
            item["blake3"] = hashes[outcome.path]
        applied.append(item)
    body = {
        **who(),
        "jhansi": __version__,
        "sandbox": sandbox,
        "project": str(dirs.project),
        "layer": str(dirs.upper),
        **bounded_list("applied", applied, ledger.put_blob),
        **bounded_list("refused", [o.as_dict() for o in report.by("refused")], ledger.put_blob),
        **bounded_list("conflicts", [o.as_dict() for o in report.by("conflict")], ledger.put_blob),
        "error": report.error,
    }
    try:
        written = ledger.append(APPLY_KIND, dict(recordable(body)))
        ledger.checkpoint()
    except (JhansiError, OSError) as exc:
        why = exc.message if isinstance(exc, JhansiError) else (exc.strerror or str(exc))
        raise LedgerError(
            f"the changes were applied to {dirs.project} but could not be recorded: {why}",
            hint="Fix the ledger's disk, then run `jhansi ledger verify`.",
        ) from None
    return written.hash


# -- cp --------------------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Copied:
    """What ``jhansi sandbox cp`` copied."""

    source: str
    """Where, as the sandbox saw it (``/work/...`` or ``/home/sandbox/...``)."""
    dest: Path
    files: int
    bytes: int
    skipped: tuple[str, ...] = ()
    """Links, FIFOs, sockets and devices below a copied directory: not copied."""


def parse_source(text: str) -> tuple[str | None, Literal["work", "home"], str]:
    """``NAME:PATH`` as (sandbox name or ``None``, area, path relative to it).

    PATH is ``/work/...`` (the layer), ``/home/sandbox/...`` or ``~/...`` (the home);
    a relative PATH is below /work.
    """
    name, sep, path = text.partition(":")
    if not sep or not path:
        raise UsageError(
            f"{text!r} is not NAME:PATH",
            hint="Write the sandbox and the path in it, e.g. `jhansi sandbox cp "
            "mysandbox:/work/out.csv .` (or `:~/model.bin` for the project's own sandbox).",
        )
    area: Literal["work", "home"]
    if path == "~" or path.startswith("~/"):
        area, rel = "home", path[1:]
    elif path == HOME or path.startswith(f"{HOME}/"):
        area, rel = "home", path[len(HOME) :]
    elif path == WORKDIR or path.startswith(f"{WORKDIR}/"):
        area, rel = "work", path[len(WORKDIR) :]
    elif path.startswith("/"):
        raise UsageError(
            f"{path}: only /work and {HOME} can be copied out of a sandbox",
            hint="Name a path below /work (the layer) or ~ (the home).",
        )
    else:
        area, rel = "work", path
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"{path}: '..' is not allowed", hint="Name the path without '..'.")
    return (name or None), area, "/".join(parts)


def copy_out(
    paths: Paths,
    source: str,
    dest: Path,
    *,
    force: bool = False,
    project: Path | None = None,
) -> Copied:
    """Copy ``source`` (``NAME:PATH``, :func:`parse_source`) out of a sandbox to ``dest``.

    Every component is opened without following a link: a link at PATH (or on the
    way) is refused, not followed; below a copied directory, links and special files
    are skipped. An existing ``dest`` is refused unless ``force`` (a directory ``dest``
    receives the file under its own name). Nothing is copied from the project: a
    /work path the layer does not hold is the project's own file.
    """
    name, area, rel = parse_source(source)
    sandbox = sandbox_name(name, project)
    workspace = Workspace.from_paths(paths)
    if area == "home":
        if not workspace.exists(sandbox):
            raise UsageError(
                f"no sandbox named {sandbox!r}", hint="List them with `jhansi sandbox ls`."
            )
        root = workspace.home(sandbox)
        shown = f"{HOME}/{rel}".rstrip("/")
    else:
        dirs = find_layer(workspace, sandbox, project)
        root = dirs.upper
        shown = f"{WORKDIR}/{rel}".rstrip("/")
    if not rel:
        raise UsageError(
            f"{shown}: name a file or directory in it", hint="For example `NAME:/work/out.csv`."
        )
    fd = _open_below(root, rel, shown, area)
    try:
        st = os.fstat(fd)
        target = dest / rel.rsplit("/", 1)[-1] if dest.is_dir() else dest
        if os.path.lexists(target) and not force:
            raise UsageError(
                f"{target} exists", hint="Pass --force to replace it, or choose another DEST."
            )
        if stat.S_ISDIR(st.st_mode):
            return _copy_tree(fd, shown, target, force)
        size = _copy_file(fd, target)
        return Copied(shown, target, 1, size)
    finally:
        os.close(fd)


def _open_below(root: Path, rel: str, shown: str, area: str) -> int:
    """A descriptor of ``rel`` below ``root`` (a regular file or a directory)."""
    from jhansi.sandbox.overlay_read import is_whiteout

    try:
        current = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise UsageError(
            f"cannot open {root}: {exc.strerror or exc}", hint="Check jhansi's data directory."
        ) from None
    parts = rel.split("/")
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=current, follow_symlinks=False)
            except FileNotFoundError:
                where = "the sandbox's layer" if area == "work" else "the sandbox's home"
                hint = (
                    "A /work path the layer does not hold is the project's own file: copy it "
                    "from the project."
                    if area == "work"
                    else "`jhansi sandbox shell NAME` shows what the home holds."
                )
                raise UsageError(f"{shown}: not in {where}", hint=hint) from None
            except OSError as exc:
                raise UsageError(
                    f"{shown}: cannot read it: {exc.strerror or exc}",
                    hint="Check that jhansi's data directory is readable to you.",
                ) from None
            prefix = "/".join(parts[: i + 1])
            if stat.S_ISLNK(st.st_mode):
                raise UsageError(
                    f"{shown}: {prefix} is a symbolic link in the sandbox; jhansi does not "
                    "follow it",
                    hint="Copy the file it points to by its own path.",
                )
            if is_whiteout(st) and area == "work":
                raise UsageError(
                    f"{shown}: the sandbox deleted {prefix}", hint="Nothing to copy out."
                )
            last = i == len(parts) - 1
            if not last and not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"{shown}: {prefix} is not a directory", hint="Check the path.")
            if last and not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise UsageError(
                    f"{shown} is not a regular file or directory (a FIFO, socket or device)",
                    hint="Only files and directories are copied out.",
                )
            flags = _DIR_FLAGS if stat.S_ISDIR(st.st_mode) else _FILE_FLAGS
            try:
                child = os.open(part, flags, dir_fd=current)
            except OSError as exc:  # swapped since the lstat (a link now): not followed
                raise UsageError(
                    f"{shown}: cannot open {prefix}: {exc.strerror or exc}",
                    hint="Nothing was copied; try again once no run uses the sandbox.",
                ) from None
            os.close(current)
            current = child
        return current
    except BaseException:
        os.close(current)
        raise


def _copy_file(src: int, target: Path) -> int:
    """Copy the open regular file ``src`` to ``target`` (atomically, never setuid)."""
    st = os.fstat(src)
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{target}: the source changed while copying", hint="Try again.")
    parent = target.parent
    partial = parent / f".{target.name}.{os.getpid()}.partial"
    try:
        out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            total = 0
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
                total += len(chunk)
            os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o755)
        finally:
            os.close(out)
        partial.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise UsageError(
            f"cannot write {target}: {exc.strerror or exc}", hint="Choose a writable DEST."
        ) from None
    return total


def _copy_tree(top: int, shown: str, target: Path, force: bool) -> Copied:
    """Copy the directory ``top`` to ``target``: directories and regular files only."""
    from jhansi.sandbox.layer import _walk

    files = size = 0
    skipped: list[str] = []  # the walk adds FIFOs, sockets and devices; links below
    try:
        target.mkdir(mode=0o755, exist_ok=force)
    except OSError as exc:
        raise UsageError(
            f"cannot make {target}: {exc.strerror or exc}", hint="Choose a writable DEST."
        ) from None
    try:
        for rel, entry, parent in _walk(top, special=skipped):
            name = rel.rsplit("/", 1)[-1]
            out = target / rel
            if entry.kind == "dir":
                try:
                    out.mkdir(mode=0o755, exist_ok=True)
                except OSError as exc:
                    raise UsageError(
                        f"cannot make {out}: {exc.strerror or exc}", hint="Choose another DEST."
                    ) from None
                continue
            if entry.kind != "file":
                skipped.append(rel)
                continue
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
            except OSError:
                skipped.append(rel)
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    skipped.append(rel)
                    continue
                if os.path.lexists(out) and not force:
                    raise UsageError(f"{out} exists", hint="Pass --force to replace it.")
                size += _copy_file(fd, out)
                files += 1
            finally:
                os.close(fd)
    except OSError as exc:  # unreadable, or nested deeper than the walk goes
        raise UsageError(
            f"{shown}: copying stopped after {files} files: {exc.strerror or exc}",
            hint=f"What was copied before it is in {target}.",
        ) from None
    return Copied(shown, target, files, size, tuple(shown_name(s) for s in skipped))
