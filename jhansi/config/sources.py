"""Layers of settings: raw values by ``(section, key)`` from a file, the environment or flags.

A layer's names are checked against the schema when it is made (an unknown section
or key is an error, with the nearest known name); its values are parsed when the
layers are resolved (:func:`jhansi.config.load.resolve`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jhansi.config.files import digest, parse_toml, read_bytes, tool_table
from jhansi.config.schema import ENV_ALIASES, ENV_NOT_SETTINGS, NAMED_SECTIONS, SCHEMA
from jhansi.errors import ConfigError

_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"  # compiled on first use


@dataclass(frozen=True, slots=True)
class Layer:
    """One source of settings: raw values by ``(section, key)`` and a description."""

    values: Mapping[tuple[str, str], object]
    source: str
    base_dir: Path | None = None
    """Directory that relative paths in this layer are resolved against."""
    file: Path | None = None
    """The configuration file this layer was read from, if any."""
    kind: str = "other"
    """``user`` or ``project`` for a file; a project file's values are checked for trust."""
    digest: str | None = None
    """The BLAKE3 of the file's bytes, as parsed."""


def _suggest(word: str, choices: list[str]) -> str:
    import difflib  # only for a name that is wrong: not on every load

    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def flatten(table: Mapping[str, Any], where: str) -> dict[tuple[str, str], object]:
    """``{section: {key: value}}`` → ``{(section, key): value}``, rejecting unknown names."""
    flat: dict[tuple[str, str], object] = {}
    known_sections = [*SCHEMA, *NAMED_SECTIONS]
    for section, body in table.items():
        if section not in known_sections:
            raise ConfigError(
                f"{where}: unknown section [{section}]{_suggest(section, known_sections)}",
                hint="Known sections: " + ", ".join(f"[{s}]" for s in known_sections) + ".",
            )
        if not isinstance(body, dict):
            raise ConfigError(
                f"{where}: {section} must be a table ([{section}]), not a {type(body).__name__}",
                hint=f"Write it as a [{section}] table with keys under it.",
            )
        if section in NAMED_SECTIONS:
            for key, value in body.items():
                if not re.match(_NAME_RE, key):
                    raise ConfigError(
                        f"{where}: [{section}.{key}]: {key!r} is not a valid name",
                        hint="Use letters, digits and '_', not starting with a digit "
                        "(it becomes an environment variable in the sandbox).",
                    )
                flat[(section, key)] = value
            continue
        for key, value in body.items():
            if key not in SCHEMA[section]:
                known = list(SCHEMA[section])
                raise ConfigError(
                    f"{where}: unknown key [{section}] {key}{_suggest(key, known)}",
                    hint=f"Keys of [{section}]: " + ", ".join(known) + ".",
                )
            flat[(section, key)] = value
    return flat


def file_layer(
    path: Path,
    *,
    source: str,
    table: Mapping[str, Any] | None = None,
    raw: bytes | None = None,
    kind: str = "user",
) -> Layer:
    """A layer from a TOML file (or from ``table``, already parsed from its bytes ``raw``).

    ``kind="project"`` marks a file from the checkout: :func:`~jhansi.config.load.resolve`
    accepts its values only as far as its trust allows. Its relative paths resolve
    against the directory of the file's real path, the location that trust is keyed by.
    """
    if table is None or raw is None:
        raw = read_bytes(path)
        table = parse_toml(path, raw)
        if kind == "project" and path.name == "pyproject.toml":
            table = tool_table(path, table) or {}
    base = Path(os.path.realpath(path)).parent if kind == "project" else path.parent
    return Layer(
        flatten(table, str(path)),
        f"{source} ({path})",
        base_dir=base,
        file=path,
        kind=kind,
        digest=digest(raw),
    )


def env_layer(environ: Mapping[str, str]) -> Layer:
    """Settings from ``JHANSI_<SECTION>_<KEY>`` variables (and the aliases)."""
    values: dict[tuple[str, str], object] = {}
    names: list[str] = []
    for name, text in sorted(environ.items()):
        if not name.startswith("JHANSI_") or name in ENV_NOT_SETTINGS:
            continue
        target = ENV_ALIASES.get(name)
        if target is None:
            rest = name.removeprefix("JHANSI_").lower()
            section, _, key = rest.partition("_")
            if section not in SCHEMA or key not in SCHEMA[section]:
                continue  # JHANSI_REQUIRE_ENGINES and friends belong to others
            target = (section, key)
        option = SCHEMA[target[0]][target[1]]
        values[target] = option.from_string(text) if option.from_string else text
        names.append(name)
    return Layer(values, "environment (" + ", ".join(names) + ")", base_dir=Path.cwd())


def flag_layer(values: Mapping[tuple[str, str], object]) -> Layer:
    """Settings given on the command line (``None`` means the flag was not given)."""
    given = {k: v for k, v in values.items() if v is not None}
    return Layer(given, "command line", base_dir=Path.cwd())
