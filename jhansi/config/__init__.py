"""Settings: built-in defaults < user config < project config < environment < flags.

Each layer is validated against one schema (:data:`SCHEMA`). An unknown key, a
wrong type or an impossible value is a :class:`~jhansi.errors.ConfigError` that
names the key, where it came from and the form expected. The result is a frozen
:class:`Settings` that also remembers where every value came from, which is what
``jhansi config show`` prints and what the ledger records.

Project configuration is ``jhansi.toml`` or the ``[tool.jhansi]`` table of
``pyproject.toml``, in the nearest directory (from the script's directory
upwards) that has either; ``jhansi.toml`` wins in a directory that has both.

The modules, lowest first: :mod:`~jhansi.config.mask` (the paths never shown),
:mod:`~jhansi.config.values` (each form of value: parsed and shown),
:mod:`~jhansi.config.schema` (every key, its default and trust class),
:mod:`~jhansi.config.settings` (the result), :mod:`~jhansi.config.files` (reading
files, finding the project's), :mod:`~jhansi.config.sources` (layers from files,
the environment and flags) and :mod:`~jhansi.config.load` (resolving the layers,
with trust). This package exports their public names.
"""

from __future__ import annotations

from jhansi.config.files import digest, find_project_config
from jhansi.config.load import UntrustedConfigError, load_settings, resolve
from jhansi.config.mask import DEFAULT_MASK
from jhansi.config.schema import (
    ADDS_ONLY,
    BACKENDS,
    DEFAULT_IMAGE,
    ENV_ALIASES,
    ENV_NOT_SETTINGS,
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
from jhansi.config.values import (
    IgnoreRule,
    LicensePolicy,
    SecretSettings,
    display,
    format_size,
    parse_duration,
    parse_size,
    plain,
)

__all__ = [
    "ADDS_ONLY",
    "BACKENDS",
    "DEFAULT_IMAGE",
    "DEFAULT_MASK",
    "ENV_ALIASES",
    "ENV_NOT_SETTINGS",
    "EXECUTABLE_KEYS",
    "NAMED_SECTIONS",
    "NEEDS_TRUST",
    "NEUTRAL",
    "PATH_KEYS",
    "SCHEMA",
    "TIGHTEN_ONLY",
    "ConfigFile",
    "IgnoreRule",
    "Layer",
    "LedgerSettings",
    "LicensePolicy",
    "NetworkSettings",
    "Option",
    "PolicySettings",
    "Refusal",
    "SandboxSettings",
    "SecretSettings",
    "Settings",
    "UntrustedConfigError",
    "digest",
    "display",
    "env_layer",
    "file_layer",
    "find_project_config",
    "flag_layer",
    "format_size",
    "load_settings",
    "parse_duration",
    "parse_size",
    "plain",
    "resolve",
]
