"""Resolving the layers into :class:`~jhansi.config.settings.Settings`, with trust.

Defaults < user config < project config < environment < flags. A project file's
values are checked against each key's trust class (:mod:`jhansi.config.schema`) and
the trust store before they apply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jhansi.config.files import find_project_config
from jhansi.config.schema import (
    ADDS_ONLY,
    ENV_ALIASES,
    EXECUTABLE_KEYS,
    NAMED_SECTIONS,
    NEEDS_TRUST,
    NEUTRAL,
    PATH_KEYS,
    SCHEMA,
    TIGHTEN_ONLY,
    Option,
)
from jhansi.config.settings import (
    ConfigFile,
    LedgerSettings,
    NetworkSettings,
    PolicySettings,
    Refusal,
    SandboxSettings,
    Settings,
)
from jhansi.config.sources import Layer, env_layer, file_layer, flag_layer
from jhansi.config.values import SecretSettings, display
from jhansi.errors import ConfigError
from jhansi.paths import Paths


def _env_source(layer: Layer, key: tuple[str, str]) -> str:
    for alias, target in ENV_ALIASES.items():
        if target == key and alias in layer.source:
            return f"environment ({alias})"
    return f"environment (JHANSI_{key[0].upper()}_{key[1].upper()})"


def _executable(value: str, layer: Layer, source: str, key: str) -> str:
    """``[sandbox] python``/``bwrap`` as a path to run: see :data:`EXECUTABLE_KEYS`."""
    if key == "bwrap" and value in ("auto", "system", "bundled"):
        return value
    if "/" not in value:
        return value  # a command name, looked up on PATH when it is used
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if layer.file is not None:
        raise ConfigError(
            f"{source}: [sandbox] {key} = {value!r} is a relative path",
            hint=f"Write an absolute path or a command name on PATH: executables are never "
            f"resolved relative to {layer.file.name}.",
        )
    return str((Path.cwd() / path).absolute())


def _loosens(option: Option | None, value: object, lower: object) -> str | None:
    """Why an untrusted project file may not set ``value`` over ``lower`` (or ``None``)."""
    if value == lower:
        return None
    trust = NEEDS_TRUST if option is None else option.trust
    if trust in (NEUTRAL, ADDS_ONLY):
        return None
    if trust == TIGHTEN_ONLY and option is not None and option.tighter is not None:
        if option.tighter(value, lower):
            return None
        return f"{display(value)} is looser than {display(lower)}"
    if option is None:
        return "binds a host secret to hosts"
    return "chooses what runs on the host or widens access"


def _trust_status(file: Path, content: str | None, paths: Paths | None) -> tuple[bool, str | None]:
    """Whether the trust store holds ``file`` with exactly the content hashed as
    ``content``; else when (if ever) another content of it was trusted."""
    from jhansi.trust_store import lookup

    entry = lookup(Path(os.path.abspath(file)), paths=paths)  # noqa: PTH100 - links kept
    if entry is None:
        return False, None
    if content is not None and entry.blake3 == content:
        return True, None
    return False, entry.trusted_at


class UntrustedConfigError(ConfigError):
    """A project configuration file sets values that need trust it does not have.

    Distinct from a malformed file: the rest of the settings are sound, so the
    refusal can be recorded in the ledger the user's own settings name
    (``load_settings(strict=False)`` gives them).
    """


def _refusal_error(file: Path, keys: list[str], changed: str | None) -> ConfigError:
    real = os.path.abspath(file)  # noqa: PTH100 - the path as found, links kept
    why = (
        f"it changed since it was trusted ({changed})" if changed else "its content is not trusted"
    )
    return UntrustedConfigError(
        f"{file} sets {', '.join(keys)}, which need trust, and {why}",
        hint=f"Review {real}, then trust it with: jhansi trust {real}",
    )


def resolve(layers: list[Layer], *, paths: Paths | None = None, strict: bool = True) -> Settings:
    """Apply ``layers`` (lowest precedence first) over the defaults and validate.

    A ``project`` layer may set a key whose trust class is not :data:`NEEDS_TRUST`
    freely (within its tighten-only rule); a value that needs trust is applied only
    when the trust store (under ``paths``) holds that file's exact bytes. Otherwise
    the whole load is a :class:`ConfigError` naming the file, the keys and the
    ``jhansi trust`` command; with ``strict=False`` the refused values are left out
    and listed in :attr:`Settings.refused` instead (``jhansi config show``).
    ``sandbox.mask`` from every layer adds to the masks below it.
    """
    merged: dict[tuple[str, str], Any] = {}
    sources: dict[str, str] = {}
    for section, options in SCHEMA.items():
        for key, option in options.items():
            merged[(section, key)] = option.default
            sources[f"{section}.{key}"] = "default"
    files: list[Path] = []
    provenance: list[ConfigFile] = []
    refused: list[Refusal] = []
    secrets: dict[str, SecretSettings] = {}
    for layer in layers:
        parsed: list[tuple[str, str, bool, Any, str]] = []
        for (section, key), raw in layer.values.items():
            named = section in NAMED_SECTIONS
            option = NAMED_SECTIONS[section] if named else SCHEMA[section][key]
            source = layer.source
            if source.startswith("environment"):
                source = _env_source(layer, (section, key))
            try:
                value = option.parse(raw)
            except ValueError as exc:
                detail = f" ({exc})" if str(exc) and str(exc) not in option.expected else ""
                where = f"[{section}.{key}]" if named else f"[{section}] {key} = {raw!r}"
                raise ConfigError(
                    f"{source}: {where} is invalid{detail}: expected {option.expected}",
                    hint=f"Set {where.split(' =')[0]} to {option.expected}.",
                ) from None
            if (section, key) in EXECUTABLE_KEYS and value is not None:
                value = _executable(value, layer, source, key)
            elif (section, key) in PATH_KEYS and value is not None and layer.base_dir:
                value = str((layer.base_dir / Path(value).expanduser()).absolute())
            parsed.append((section, key, named, value, source))

        skip: set[tuple[str, str]] = set()
        trusted: bool | None = None
        needed: list[str] = []
        if layer.kind == "project" and layer.file is not None:
            reasons: dict[tuple[str, str], str] = {}
            for section, key, named, value, _ in parsed:
                lower = secrets.get(key) if named else merged[(section, key)]
                why = _loosens(None if named else SCHEMA[section][key], value, lower)
                if why is not None:
                    reasons[(section, key)] = why
            needed = [f"{section}.{key}" for section, key in reasons]
            if reasons:
                trusted, changed = _trust_status(layer.file, layer.digest, paths)
                if not trusted:
                    if strict:
                        raise _refusal_error(layer.file, needed, changed)
                    skip = set(reasons)
                    suffix = f" (changed since it was trusted {changed})" if changed else ""
                    refused += [
                        Refusal(layer.file, f"{s}.{k}", why + suffix)
                        for (s, k), why in reasons.items()
                    ]

        for section, key, named, value, source in parsed:
            if (section, key) in skip:
                continue
            if named:
                secrets[key] = value
                sources[f"{section}.{key}"] = source
                continue
            if (section, key) == ("sandbox", "mask"):
                value = tuple(dict.fromkeys((*merged[(section, key)], *value)))
            merged[(section, key)] = value
            sources[f"{section}.{key}"] = source
        if layer.file is not None:
            files.append(layer.file)
            if layer.digest is not None:
                provenance.append(
                    ConfigFile(
                        layer.file,
                        layer.digest,
                        "project" if layer.kind == "project" else "user",
                        trusted,
                        tuple(needed),
                    )
                )

    def section_values(name: str) -> dict[str, Any]:
        return {key: merged[(name, key)] for key in SCHEMA[name]}

    return Settings(
        sandbox=SandboxSettings(**section_values("sandbox")),
        ledger=LedgerSettings(**section_values("ledger")),
        policy=PolicySettings(**section_values("policy")),
        network=NetworkSettings(**section_values("network")),
        secrets=secrets,
        sources=sources,
        files=tuple(files),
        provenance=tuple(provenance),
        refused=tuple(refused),
    )


def load_settings(
    *,
    start: Path | None = None,
    flags: Mapping[tuple[str, str], object] | None = None,
    environ: Mapping[str, str] | None = None,
    paths: Paths | None = None,
    strict: bool = True,
) -> Settings:
    """Load every layer for a command run from ``start`` (default: the current directory).

    The user layer is ``JHANSI_CONFIG`` when set (a file the caller controls, such as
    a CI workflow's), else the user configuration file. A project file that needs
    trust it lacks is a :class:`ConfigError` (see :func:`resolve`; ``strict=False``
    reports it in :attr:`Settings.refused` instead).
    """
    env = dict(os.environ if environ is None else environ)
    paths = paths or Paths.from_environment(env)
    layers: list[Layer] = []
    named = env.get("JHANSI_CONFIG")
    if named:
        user_file = Path(named).expanduser().absolute()
        if not user_file.is_file():
            raise ConfigError(
                f"JHANSI_CONFIG names {user_file}, which is not a file",
                hint="Point JHANSI_CONFIG at a jhansi configuration file (TOML), or unset it.",
            )
        layers.append(file_layer(user_file, source="user config from JHANSI_CONFIG"))
    else:
        user_file = paths.user_config_file
        if user_file.is_file():
            layers.append(file_layer(user_file, source="user config"))
    project = find_project_config(start or Path.cwd())
    if project is not None:
        path, table, raw = project
        layers.append(
            file_layer(path, source="project config", table=table, raw=raw, kind="project")
        )
    layers.append(env_layer(env))
    if flags:
        layers.append(flag_layer(flags))
    return resolve(layers, paths=paths, strict=strict)
