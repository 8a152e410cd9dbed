"""A PEP 751 lock as data: the packages and wheels a ``pylock.toml`` pins.

The types here are what locking produces (:func:`jhansi.deps.lock.lock`) and what
installing, the supply-chain checks and the SBOM read; reading a lock file's TOML
into them is here too, so that a reader of locks need not import the locking.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from jhansi.errors import DependencyError

_SEPARATORS = re.compile(r"[-_.]+")


@dataclass(frozen=True, slots=True)
class LockedWheel:
    """One wheel file the lock allows for a package."""

    filename: str
    url: str
    """Where uv fetches it from (a local path for a wheel found in a directory)."""
    hashes: tuple[str, ...]
    """``algorithm:hex`` digests, sorted (PEP 751 requires at least one)."""
    size: int | None = None


@dataclass(frozen=True, slots=True)
class LockedPackage:
    """One pinned distribution of a lock."""

    name: str
    version: str
    wheels: tuple[LockedWheel, ...]
    """The wheels that fit the lock's target (possibly several: abi3, py3-none-any …)."""
    marker: str | None = None

    @property
    def hashes(self) -> tuple[str, ...]:
        """Every allowed file digest of this package, ``algorithm:hex``."""
        return tuple(sorted({h for wheel in self.wheels for h in wheel.hashes}))


@dataclass(frozen=True, slots=True)
class LockResult:
    """A lock file on disk, what it pins, and whether it was reused as it was."""

    path: Path
    digest: str
    """BLAKE3 (hex) of the lock file's bytes, exactly as written."""
    packages: tuple[LockedPackage, ...]
    reused: bool
    """True when uv was not called: the existing file's inputs matched, or the same
    inputs were resolved before (the user's cache) and that lock was written here."""
    inputs_digest: str
    """BLAKE3 (hex, domain-separated) of the inputs the lock was resolved from."""
    requirements: tuple[str, ...] = ()
    """The normalized requirements it was resolved from, sorted."""
    content: bytes = field(default=b"", repr=False)
    """The lock's bytes (what ``digest`` hashes): installs use these, not a re-read."""


def canonical_name(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return _SEPARATORS.sub("-", name).lower()


def _wheel(entry: dict[str, Any]) -> LockedWheel | None:
    location = str(entry.get("url") or entry.get("path") or "")
    filename = str(entry.get("name") or unquote(urlsplit(location).path.rsplit("/", 1)[-1]))
    if not filename.endswith(".whl"):
        return None
    raw_hashes = entry.get("hashes") or {}
    hashes = tuple(sorted(f"{alg}:{value}" for alg, value in raw_hashes.items()))
    size = entry.get("size")
    return LockedWheel(
        filename=filename,
        url=location,
        hashes=hashes,
        size=size if isinstance(size, int) else None,
    )


def packages_of(document: dict[str, Any]) -> tuple[LockedPackage, ...]:
    """The packages of a parsed ``pylock.toml``, sorted by name."""
    packages: list[LockedPackage] = []
    for entry in document.get("packages") or []:
        wheels = [_wheel(w) for w in entry.get("wheels") or []]
        if isinstance(entry.get("archive"), dict):
            wheels.append(_wheel(entry["archive"]))
        marker = entry.get("marker")
        packages.append(
            LockedPackage(
                name=str(entry["name"]),
                version=str(entry.get("version", "")),
                wheels=tuple(w for w in wheels if w is not None),
                marker=str(marker) if marker else None,
            )
        )
    return tuple(sorted(packages, key=lambda p: canonical_name(p.name)))


def jsonable(value: Any) -> Any:
    """A parsed TOML value with dates and times as ISO strings (for canonical JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def parse_lock(content: bytes, path: Path) -> dict[str, Any]:
    """A lock file's TOML document; a malformed one is a :class:`DependencyError`."""
    try:
        document = tomllib.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DependencyError(
            f"{path} is not a valid pylock.toml: {exc}",
            hint="Delete it and run jhansi again to lock anew.",
        ) from None
    if not str(document.get("lock-version", "")).startswith("1."):
        raise DependencyError(
            f"{path} is not a PEP 751 lock (lock-version {document.get('lock-version')!r})",
            hint="Delete it and run jhansi again to lock anew.",
        )
    return document
