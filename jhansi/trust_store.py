"""The trust store: which project configuration files the user trusted, by content.

It maps each file's real absolute path to the BLAKE3 of the bytes that were
trusted (:mod:`jhansi.trust` checks a file and records it here; :mod:`jhansi.config`
looks a file up before applying its values that need trust). Any change to the
file (one byte) makes it untrusted again.

The store is ``trusted-configs.json`` in the user's data directory, mode 0600,
replaced atomically (written beside it, then renamed) under a lock, so that a
crash or two concurrent ``jhansi trust`` never leave it half-written. It is read
only when a project file sets something that needs trust.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from jhansi.errors import ConfigError
from jhansi.paths import Paths, ensure_private_dir

STORE_NAME: Final = "trusted-configs.json"
_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """One trusted file: its real path, the BLAKE3 of the trusted bytes, and when."""

    path: Path
    blake3: str
    trusted_at: str
    """UTC time of ``jhansi trust``, ISO 8601."""

    def as_dict(self) -> dict[str, str]:
        """JSON form (``jhansi trust --list --json``)."""
        return {"path": str(self.path), "blake3": self.blake3, "trusted_at": self.trusted_at}


def store_path(paths: Paths | None = None) -> Path:
    """Where the trust store lives."""
    return (paths or Paths.from_environment()).data / STORE_NAME


def _read(path: Path) -> dict[str, TrustEntry]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the trust store {path}: {exc}",
            hint=f"Remove {path} and trust your project files again (jhansi trust FILE).",
        ) from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ConfigError(
            f"the trust store {path} is not one jhansi wrote",
            hint=f"Remove {path} and trust your project files again (jhansi trust FILE).",
        )
    entries: dict[str, TrustEntry] = {}
    for key, value in files.items():
        if isinstance(value, dict) and isinstance(value.get("blake3"), str):
            entries[key] = TrustEntry(Path(key), value["blake3"], str(value.get("trusted_at", "")))
    return entries


def _write(path: Path, entries: dict[str, TrustEntry]) -> None:
    body: dict[str, Any] = {
        "version": _VERSION,
        "files": {
            key: {"blake3": e.blake3, "trusted_at": e.trusted_at}
            for key, e in sorted(entries.items())
        },
    }
    data = (json.dumps(body, indent=2) + "\n").encode()
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def _locked(paths: Paths | None) -> Iterator[Path]:
    import fcntl

    path = store_path(paths)
    ensure_private_dir(path.parent)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)


def real_path(file: Path) -> Path:
    """The key a file is trusted under: its absolute path where it is found, links not
    resolved. A checkout whose ``jhansi.toml`` is a link to a file trusted elsewhere does
    not borrow that trust: trusting applies to one place, as ``direnv allow`` does."""
    return Path(os.path.abspath(file))  # noqa: PTH100 - not resolve(): links are kept


def lookup(file: Path, *, paths: Paths | None = None) -> TrustEntry | None:
    """The trust entry for the file at real path ``file``, whatever content it was for."""
    return _read(store_path(paths)).get(str(file))


def entries(paths: Paths | None = None) -> list[TrustEntry]:
    """Every trusted file, by path."""
    return sorted(_read(store_path(paths)).values(), key=lambda e: str(e.path))


def add(entry: TrustEntry, *, paths: Paths | None = None) -> None:
    """Record ``entry`` (replacing an older one for the same file)."""
    with _locked(paths) as store:
        current = _read(store)
        current[str(entry.path)] = entry
        _write(store, current)


def revoke(file: Path, *, paths: Paths | None = None) -> TrustEntry | None:
    """Forget ``file`` (by its real path, or the path it was trusted under if it is
    gone); the entry removed, or ``None`` if it was not trusted."""
    keys = {str(real_path(file)), str(file.absolute())}
    with _locked(paths) as store:
        current = _read(store)
        removed = next((current.pop(k) for k in list(keys) if k in current), None)
        if removed is not None:
            _write(store, current)
    return removed
