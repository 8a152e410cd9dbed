"""Which project configuration files the user trusts: ``jhansi trust``.

A project file (``jhansi.toml``, ``[tool.jhansi]`` in ``pyproject.toml``) comes
with the checkout, from whoever wrote it. Its values that choose host
executables or widen access apply only when the user has trusted that exact
content, as direnv, mise and VS Code do. :func:`trust` checks that a file is
valid configuration and records its exact bytes in the trust store
(:mod:`jhansi.trust_store`, which also lists and revokes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jhansi.errors import ConfigError
from jhansi.paths import Paths
from jhansi.trust_store import TrustEntry, add, real_path


@dataclass(frozen=True, slots=True)
class Trusted:
    """What :func:`trust` recorded, and what the file sets that needs trust."""

    entry: TrustEntry
    needs_trust: tuple[str, ...]
    """The ``section.key`` names it sets whose class is *needs trust* (``secrets.NAME``
    for a secret)."""
    tighten_only: tuple[str, ...]
    """The tighten-only keys it sets (which trust lets it loosen too)."""


def _config_table(file: Path, raw: bytes) -> dict[str, Any]:
    from jhansi.config.files import parse_toml, tool_table

    data = parse_toml(file, raw)
    if file.name == "pyproject.toml":
        table = tool_table(file, data)
        if table is None:
            raise ConfigError(
                f"{file} has no [tool.jhansi] table",
                hint="Trust the file that configures jhansi: a jhansi.toml, or a "
                "pyproject.toml with [tool.jhansi].",
            )
        return dict(table)
    return data


def classify(file: Path, raw: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys ``raw`` (the bytes of ``file``) sets that need trust, and its
    tighten-only keys; a file that is not valid configuration is a ConfigError."""
    from jhansi.config import NAMED_SECTIONS, NEEDS_TRUST, SCHEMA, TIGHTEN_ONLY
    from jhansi.config.sources import flatten

    flat = flatten(_config_table(file, raw), str(file))
    needs: list[str] = []
    tighten: list[str] = []
    for section, key in flat:
        if section in NAMED_SECTIONS or SCHEMA[section][key].trust == NEEDS_TRUST:
            needs.append(f"{section}.{key}")
        elif SCHEMA[section][key].trust == TIGHTEN_ONLY:
            tighten.append(f"{section}.{key}")
    return tuple(needs), tuple(tighten)


def trust(file: Path, *, paths: Paths | None = None) -> Trusted:
    """Record the exact content of ``file`` as trusted (replacing an older entry).

    The file is read once: the bytes that are hashed are the bytes that were
    checked to be valid jhansi configuration.
    """
    from jhansi.config import digest, file_layer, resolve
    from jhansi.config.files import read_bytes

    real = real_path(file)
    if not real.is_file():
        raise ConfigError(
            f"{file} is not a file",
            hint="Give the path of a jhansi.toml or of a pyproject.toml with [tool.jhansi].",
        )
    raw = read_bytes(real)
    needs, tighten = classify(real, raw)
    table = _config_table(real, raw)
    # Values must be valid (a typo is an error now, not at the next run).
    resolve([file_layer(real, source="trusted file", table=table, raw=raw)])
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    entry = TrustEntry(real, digest(raw), now)
    add(entry, paths=paths)
    return Trusted(entry, needs, tighten)


def project_file(start: Path) -> Path:
    """The project configuration file jhansi reads for ``start`` (what ``jhansi trust``
    trusts when no file is named)."""
    from jhansi.config import find_project_config

    found = find_project_config(start)
    if found is None:
        raise ConfigError(
            f"no jhansi.toml or pyproject.toml with [tool.jhansi] at or above {start}",
            hint="Name the file to trust: jhansi trust path/to/jhansi.toml",
        )
    return found[0]
