"""Named sandboxes: a persistent home directory per name, its metadata, and its lock.

A sandbox named ``NAME`` lives in ``<data>/sandboxes/NAME/``: ``home/`` is
mounted at ``/home/sandbox`` in every run, ``meta.json`` says when it was made
and used, and ``lock`` serializes runs (two scripts writing one home at once
would see each other's half-written files). ``--ephemeral`` runs get a
throwaway home in the runtime directory instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jhansi.errors import SandboxError, UsageError
from jhansi.paths import Paths, ensure_private_dir

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def now_rfc3339() -> str:
    """The current time as an RFC 3339 UTC string with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def validate_name(name: str) -> str:
    """``name`` if it is a valid sandbox name (it becomes a directory name)."""
    if not NAME_PATTERN.match(name):
        raise UsageError(
            f"invalid sandbox name {name!r}",
            hint="Use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter "
            "or digit.",
        )
    return name


def default_name(project: Path) -> str:
    """A name for the project's own sandbox: its directory name and a hash of its path."""
    import blake3

    slug = re.sub(r"[^a-z0-9._-]+", "-", project.name.lower()).strip("-._") or "project"
    digest = blake3.blake3(str(project.absolute()).encode()).hexdigest()[:8]
    return f"{slug[:50]}-{digest}"


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """What ``jhansi sandbox ls`` shows about one sandbox."""

    name: str
    home: Path
    created: str
    last_used: str
    runs: int
    size: int
    project: str | None


@dataclass(frozen=True, slots=True)
class OpenSandbox:
    """A sandbox held (locked) for one run."""

    name: str
    home: Path
    ephemeral: bool
    directory: Path | None = None
    """The sandbox's own private directory (holds ``home``, its copy-on-write layers, and
    a ``--rw`` copy while a run uses one); not mounted in the sandbox."""


def _dir_size(path: Path) -> int:
    """What the tree under ``path`` holds, in bytes (as far as it can be walked)."""
    from jhansi.sandbox.tree import walk

    total = 0
    with contextlib.suppress(OSError):  # gone, unreadable, or nested past the walk's depth
        for _rel, st in walk(path):
            total += st.st_size
    return total


def remove_tree(path: Path) -> None:
    """Delete ``path`` even where the sandbox made directories read-only or nested them
    deeper than a recursive walk survives (:func:`jhansi.sandbox.tree.remove_tree`)."""
    from jhansi.sandbox import tree

    tree.remove_tree(path)


class Workspace:
    """All named sandboxes of this user."""

    def __init__(self, *, root: Path, runtime: Path) -> None:
        self.root = root
        self.runtime = runtime

    @classmethod
    def from_paths(cls, paths: Paths) -> Workspace:
        """The workspace under jhansi's data directory."""
        return cls(root=paths.data / "sandboxes", runtime=paths.runtime)

    def _dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def home(self, name: str) -> Path:
        """The host directory mounted as the sandbox's home."""
        return self._dir(name) / "home"

    def _read_meta(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self._dir(name) / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_meta(self, name: str, meta: dict[str, Any]) -> None:
        """Replace ``meta.json`` atomically; a failure (disk full) is a
        :class:`SandboxError` and leaves no temporary file behind."""
        target = self._dir(name) / "meta.json"
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".meta-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=2, sort_keys=True)
            Path(tmp).replace(target)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # noqa: PTH108
            raise SandboxError(
                f"cannot update {target}: {exc.strerror or exc}",
                hint="Free space in jhansi's data directory.",
            ) from None

    @contextlib.contextmanager
    def open(
        self,
        name: str,
        *,
        project: Path | None,
        on_wait: Callable[[str], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> Iterator[OpenSandbox]:
        """Create ``name`` if needed and hold its lock for the duration of a run
        (``on_warning`` hears of bookkeeping that failed, such as ``meta.json``)."""
        directory = self._dir(name)
        ensure_private_dir(self.root)
        # Traversable, not listable: an engine running as another user (rootless
        # Podman driven by root) must reach the home to mount it. What is inside
        # stays private: the home is the sandbox user's, mode 0700; files are 0600.
        directory.mkdir(mode=0o711, exist_ok=True)
        directory.chmod(0o711)
        home = directory / "home"
        home.mkdir(mode=0o700, exist_ok=True)
        with self._locked(name, on_wait=on_wait):
            meta = self._read_meta(name)
            stamp = now_rfc3339()
            meta.setdefault("name", name)
            meta.setdefault("created", stamp)
            if project is not None:
                meta.setdefault("project", str(project))
            try:
                yield OpenSandbox(name=name, home=home, ephemeral=False, directory=directory)
            finally:
                meta["last_used"] = now_rfc3339()
                meta["runs"] = int(meta.get("runs", 0)) + 1
                # Bookkeeping only (``sandbox ls``, ``prune``): failing to write it (disk
                # full) must never replace the run's outcome, recorded or raised.
                try:
                    self._write_meta(name, meta)
                except SandboxError as exc:
                    if on_warning is not None:
                        on_warning(exc.message)

    @contextlib.contextmanager
    def ephemeral(self) -> Iterator[OpenSandbox]:
        """A throwaway sandbox directory and home, deleted after the run."""
        ensure_private_dir(self.runtime)
        directory = Path(tempfile.mkdtemp(prefix="ephemeral-", dir=self.runtime))
        try:
            # Traversable like a named sandbox's directory (a rootless engine's user
            # reaches the home and layer inside); the home itself stays private.
            directory.chmod(0o711)
            home = directory / "home"
            home.mkdir(mode=0o700)
            yield OpenSandbox(name=directory.name, home=home, ephemeral=True, directory=directory)
        finally:
            remove_tree(directory)

    @contextlib.contextmanager
    def _locked(
        self, name: str, *, on_wait: Callable[[str], None] | None = None, wait: bool = True
    ) -> Iterator[None]:
        lock_path = self._dir(name) / "lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                if not wait:
                    raise SandboxError(
                        f"sandbox {name!r} is in use by a running jhansi (pid {holder})",
                        hint="Wait for that run to finish, or stop it first.",
                    ) from None
                if on_wait:
                    on_wait(f"sandbox {name!r} is in use by pid {holder}; waiting for it to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Hold the sandbox ``name`` (no run uses it meanwhile); refuses while one does."""
        with self._locked(name, wait=False):
            yield

    def entries(self) -> list[SandboxInfo]:
        """Every named sandbox, most recently used first."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in self.root.iterdir():
            if not (directory / "home").is_dir() or not NAME_PATTERN.match(directory.name):
                continue
            meta = self._read_meta(directory.name)
            found.append(
                SandboxInfo(
                    name=directory.name,
                    home=directory / "home",
                    created=str(meta.get("created", "")),
                    last_used=str(meta.get("last_used", meta.get("created", ""))),
                    runs=int(meta.get("runs", 0)),
                    size=_dir_size(directory / "home"),
                    project=meta.get("project"),
                )
            )
        return sorted(found, key=lambda s: s.last_used, reverse=True)

    def exists(self, name: str) -> bool:
        """Whether a sandbox of that name exists."""
        return (self._dir(name) / "home").is_dir()

    def remove(self, name: str) -> None:
        """Delete a sandbox and its home; refuses while a run holds it."""
        if not self.exists(name):
            raise UsageError(
                f"no sandbox named {name!r}", hint="List them with `jhansi sandbox ls`."
            )
        with self._locked(name, wait=False):
            remove_tree(self._dir(name) / "home")
            (self._dir(name) / "meta.json").unlink(missing_ok=True)
        remove_tree(self._dir(name))

    def prune(self, *, older_than: float) -> list[str]:
        """Delete sandboxes not used for ``older_than`` seconds; return their names."""
        cutoff = time.time() - older_than
        removed = []
        for sandbox in self.entries():
            last = sandbox.last_used or sandbox.created
            if last and _parse_time(last) < cutoff:
                try:
                    self.remove(sandbox.name)
                except SandboxError:
                    continue  # in use right now: certainly not stale
                removed.append(sandbox.name)
        return removed
