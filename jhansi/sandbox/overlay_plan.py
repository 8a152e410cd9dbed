"""What a sandbox's layer changed against its project, and bringing it out.

:func:`plan` lists the changes of the upper layer (:mod:`jhansi.sandbox.overlay`)
against the project as it is now, each with a conflict when the project changed
since the sandbox changed the path; :func:`apply` copies chosen ones into the
project with the protections of ``--rw`` and takes them out of the layer. The layer
is read by descriptor, never through a link (:mod:`jhansi.sandbox.overlay_read`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from jhansi.sandbox.interface import XattrNamespace
from jhansi.sandbox.layer import (
    _DIR_FLAGS,
    _FILE_FLAGS,
    Action,
    ApplyError,
    ApplyReport,
    Change,
    Entry,
    Layer,
    Outcome,
    _entry,
    _parent,
    _same_content,
    _unchanged_on_host,
    _walk,
    apply_changes,
)
from jhansi.sandbox.overlay import (
    MAX_ENTRIES,
    LayerDirs,
    entry_from,
    load_state,
    save_state,
)
from jhansi.sandbox.overlay_read import (
    is_opaque,
    is_whiteout,
    listing,
    namespace_of,
    project_entry,
    project_subtree,
)


@dataclass(frozen=True, slots=True)
class Planned:
    """One change of the layer against the project, and whether it conflicts."""

    change: Change
    """``old`` is what the project held when the sandbox first changed the path (when
    known), else what it holds now; ``new`` is the layer's entry."""
    current: Entry | None
    """What the project holds now."""
    conflict: str = ""
    """Why applying it would not be safe (the project changed since), if so."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the layer changed against the project, in the order to apply it."""

    items: list[Planned] = field(default_factory=list)
    incomplete: str = ""
    """Why the list may be missing changes (too many entries, nested too deep)."""
    skipped: int = 0
    """FIFOs, sockets and device nodes in the layer: never applied, not listed."""

    @property
    def changes(self) -> list[Change]:
        """The changes alone (what :func:`jhansi.sandbox.layer.apply_changes` takes)."""
        return [item.change for item in self.items]


def _names(fd: int) -> list[str]:
    """The names in the directory ``fd``, sorted, reversed (popped in order)."""
    return sorted(listing(fd), reverse=True)


def _differs(upper_parent: int, project_fd: int, rel: str, name: str) -> bool:
    """Whether the upper file ``name`` holds other bytes than the project's ``rel``."""
    try:
        a = os.open(name, _FILE_FLAGS, dir_fd=upper_parent)
    except OSError:
        return True
    try:
        if not stat.S_ISREG(os.fstat(a).st_mode):
            return True
        try:
            with _parent(project_fd, rel) as (parent, pname):
                b = os.open(pname, _FILE_FLAGS, dir_fd=parent)
        except (OSError, ValueError):
            return True
        try:
            return not stat.S_ISREG(os.fstat(b).st_mode) or not _same_content(a, b)
        finally:
            os.close(b)
    finally:
        os.close(a)


def plan(dirs: LayerDirs, *, max_entries: int = MAX_ENTRIES) -> Plan:
    """What the layer changed against the project as it is now: deletions deepest
    first, then additions and changes parents first (the order to apply them in).

    A whiteout deletes the project's entry (a directory with everything in it); an
    opaque directory deletes what the project has below it and the layer does not;
    a file or link in the layer adds or modifies (a file with the same bytes as the
    project's is no change); directories jhansi opened for the sandbox
    (:func:`~jhansi.sandbox.overlay.open_directories`) are no change unless something
    below them is.

    Below a directory the sandbox deleted, only what it saw is deleted: a project entry
    there without a baseline (:func:`~jhansi.sandbox.overlay.note_baselines` notes the
    whole tree) is a conflict, never deleted (the user may have made it since).
    """
    state = load_state(dirs.state)
    found = state.get("baselines")
    baselines: dict[str, Any] = found if isinstance(found, dict) else {}
    opened = set(state.get("opened") or ())
    namespace = namespace_of(state.get("xattr"))
    deleted: list[tuple[str, Entry]] = []
    below: set[str] = set()  # deleted with a directory above them, not by name

    def subtree(project_fd: int, rel: str) -> list[tuple[str, Entry]]:
        entries = project_subtree(project_fd, rel)
        below.update(sub for sub, _ in entries)
        return entries

    others: list[tuple[str, str, Entry | None, Entry]] = []  # (rel, action, current, new)
    skipped = 0
    incomplete = ""
    seen = 0
    upper_fd = os.open(dirs.upper, _DIR_FLAGS)
    project_fd = os.open(dirs.project, _DIR_FLAGS)
    try:
        # Each frame: (upper dir fd, prefix, names left); the project is looked up by path.
        stack: list[tuple[int, str, list[str]]] = [(upper_fd, "", _names(upper_fd))]
        try:
            while stack:
                fd, prefix, names = stack[-1]
                if not names:
                    stack.pop()
                    if fd != upper_fd:
                        os.close(fd)
                    continue
                name = names.pop()
                seen += 1
                if seen > max_entries:
                    incomplete = f"the layer has more than {max_entries} entries"
                    break
                rel = prefix + name
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                current = project_entry(project_fd, rel)
                if is_whiteout(st):
                    if current is not None:
                        if current.kind == "dir":
                            deleted += subtree(project_fd, rel)
                        deleted.append((rel, current))
                    continue
                target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                new = _entry(st, target)
                if new is None:
                    skipped += 1
                    continue
                if current is not None and current.kind == "dir" and new.kind != "dir":
                    deleted += subtree(project_fd, rel)
                if new.kind == "dir":
                    if len(stack) >= MAX_DEPTH_PLAN:
                        incomplete = f"{rel}: nested deeper than {MAX_DEPTH_PLAN} levels"
                        continue
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    if current is None or current.kind != "dir":
                        action = "added" if current is None else "modified"
                        others.append((rel, action, current, new))
                    elif is_opaque(child, namespace):
                        # Nothing of the project shows below an opaque directory: what
                        # the layer does not have there (at any depth) was deleted.
                        kept = {f"{rel}/{sub}" for sub, _, _ in _walk(child)}
                        deleted += [e for e in subtree(project_fd, rel) if e[0] not in kept]
                    stack.append((child, rel + "/", _names(child)))
                    continue
                if current is None:
                    others.append((rel, "added", None, new))
                elif (
                    current.kind != new.kind
                    or current.target != new.target
                    or (
                        new.kind == "file"
                        and (new.size != current.size or _differs(fd, project_fd, rel, name))
                    )
                ):
                    others.append((rel, "modified", current, new))
                elif new.kind == "file" and new.mode != current.mode:
                    others.append((rel, "mode", current, new))
        except ApplyError as exc:
            incomplete = str(exc.strerror)
        finally:
            for frame_fd, _, _ in stack:
                if frame_fd != upper_fd:
                    os.close(frame_fd)
    finally:
        os.close(upper_fd)
        os.close(project_fd)

    # Directories opened for the sandbox are no change of their own, unless the project
    # lost them since and something below them changed.
    def idle(item: tuple[str, str, Entry | None, Entry]) -> bool:
        return item[0] in opened and item[1] == "added" and item[3].kind == "dir"

    ancestors: set[str] = set()
    for rel in [item[0] for item in others if not idle(item)] + [rel for rel, _ in deleted]:
        parts = rel.split("/")
        ancestors.update("/".join(parts[:i]) for i in range(1, len(parts)))
    others = [item for item in others if not idle(item) or item[0] in ancestors]
    items: list[Planned] = []
    unique: dict[str, Entry] = dict(deleted)
    for rel in sorted(unique, key=lambda r: (r.count("/"), r), reverse=True):
        item = _planned(rel, "deleted", unique[rel], None, baselines)
        if rel in below and rel not in baselines:
            item = replace(
                item,
                conflict="below a directory the sandbox deleted, but not "
                "known to be what it saw there (made or changed in the project since?)",
            )
        items.append(item)
    for rel, action, current, new in sorted(others, key=lambda o: o[0].split("/")):
        items.append(_planned(rel, action, current, new, baselines))
    return Plan(items, incomplete, skipped)


#: Directory levels :func:`plan` descends.
MAX_DEPTH_PLAN = 256


def _planned(
    rel: str, action: str, current: Entry | None, new: Entry | None, baselines: dict[str, Any]
) -> Planned:
    """The change at ``rel``; against its baseline (when one was noted) for conflicts."""
    old = current
    conflict = ""
    if rel in baselines:
        old = entry_from(baselines[rel])
        if not _unchanged_on_host(old, current):
            conflict = (
                "made in the project since the sandbox wrote it"
                if old is None
                else "changed in the project since the sandbox changed it"
            )
    if action != "deleted":
        action = "added" if old is None else ("mode" if action == "mode" else "modified")
    return Planned(Change(rel, cast(Action, action), old, new), current, conflict)


def apply(
    dirs: LayerDirs, plan_: Plan, paths: Iterable[Change], masked: Iterable[str]
) -> ApplyReport:
    """Apply ``paths`` (changes of ``plan_``) to the project, then take what was applied
    out of the layer (the project now holds it, so /work shows the same).

    The same protections as ``--rw`` (:func:`jhansi.sandbox.layer.apply_changes`):
    masked paths, configuration, locks, ``.git`` never; links only inside the project;
    a path the project changed since the sandbox changed it is a conflict.
    """
    chosen = list(paths)
    conflicts = {item.change.path: item.conflict for item in plan_.items if item.conflict}
    layer = Layer(
        project=dirs.project,
        root=dirs.upper,
        base={},
        copied={},
        masked=frozenset(masked),
    )
    report = apply_changes(
        layer,
        [c for c in chosen if c.path not in conflicts],
        when="since the sandbox changed it",
    )
    outcomes = list(report.outcomes)
    outcomes += [
        Outcome(c.path, c.action, "conflict", conflicts[c.path])
        for c in chosen
        if c.path in conflicts
    ]
    report = ApplyReport(outcomes=tuple(outcomes), error=report.error)
    _take_out(dirs, [o.path for o in report.by("applied")])
    return report


def _take_out(dirs: LayerDirs, applied: list[str]) -> None:
    """Remove applied files, links and whiteouts from the upper layer (not below an opaque
    directory, whose entries hide the project's), then directories left empty that the
    project has too; forget their baselines."""
    if not applied:
        return
    namespace = namespace_of(load_state(dirs.state).get("xattr"))
    upper_fd = os.open(dirs.upper, _DIR_FLAGS)
    try:
        for rel in sorted(applied, key=lambda r: r.count("/"), reverse=True):
            try:
                _take_one(upper_fd, rel, namespace)
            except (OSError, ValueError):
                continue
    finally:
        os.close(upper_fd)
    state = load_state(dirs.state)
    baselines = state.get("baselines")
    if isinstance(baselines, dict):
        for rel in applied:
            baselines.pop(rel, None)
        with contextlib.suppress(OSError):
            save_state(dirs, state)


def _take_one(upper_fd: int, rel: str, namespace: XattrNamespace | None) -> None:
    parts = rel.split("/")
    fds: list[int] = []
    try:
        current = upper_fd
        for part in parts[:-1]:
            current = os.open(part, _DIR_FLAGS, dir_fd=current)
            fds.append(current)
            if is_opaque(current, namespace):
                return
        name = parts[-1]
        st = os.stat(name, dir_fd=current, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(name, _DIR_FLAGS, dir_fd=current)
            try:
                if is_opaque(child, namespace) or listing(child):
                    return
            finally:
                os.close(child)
            os.rmdir(name, dir_fd=current)
        else:
            os.unlink(name, dir_fd=current)
    finally:
        for fd in fds:
            os.close(fd)
