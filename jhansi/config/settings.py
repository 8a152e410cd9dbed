"""The result of loading: the frozen settings, section by section, and their provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jhansi.config.schema import SCHEMA
from jhansi.config.values import IgnoreRule, LicensePolicy, SecretSettings, plain


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
    max_script_size: int
    mask: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The ``[policy]`` section."""

    advisory_db: str | None
    vulnerability_service: str
    osv_url: str | None
    require_audit: bool
    vulnerabilities: str
    min_package_age_days: int
    young_packages: str
    unpopular_packages: str
    allow: tuple[str, ...]
    ignore: tuple[IgnoreRule, ...]
    licenses: LicensePolicy


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """The ``[network]`` section."""

    allow: tuple[str, ...]
    allow_private: tuple[str, ...]
    upstream_ca: str | None


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """The ``[ledger]`` section."""

    path: str | None


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective settings, and for each ``section.key`` where its value came from."""

    sandbox: SandboxSettings
    ledger: LedgerSettings
    policy: PolicySettings = field(default_factory=lambda: _default_section(PolicySettings))
    network: NetworkSettings = field(default_factory=lambda: _default_section(NetworkSettings))
    secrets: Mapping[str, SecretSettings] = field(default_factory=dict)
    """``[secrets.NAME]`` tables by name."""
    sources: Mapping[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    """The configuration files that were read, lowest precedence first."""
    provenance: tuple[ConfigFile, ...] = ()
    """Each configuration file that applied, with its hash and trust (for the ledger)."""
    refused: tuple[Refusal, ...] = ()
    """Values of an untrusted project file that were left out (only when loaded with
    ``strict=False``, as ``jhansi config show`` does; otherwise they are an error)."""

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every value by section and key, in the schema's order."""
        out: dict[str, dict[str, Any]] = {}
        for section, options in SCHEMA.items():
            values = getattr(self, section)
            out[section] = {key: getattr(values, key) for key in options}
        out["secrets"] = dict(self.secrets)
        return out

    def as_json(self) -> dict[str, dict[str, Any]]:
        """:meth:`as_dict` with every value made of JSON types only."""
        return {
            section: {key: plain(value) for key, value in keys.items()}
            for section, keys in self.as_dict().items()
        }


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """One configuration file that applied to a run: where, which bytes, and its trust."""

    path: Path
    blake3: str
    """The BLAKE3 of the exact bytes that were parsed."""
    layer: str
    """``user`` or ``project``."""
    trusted: bool | None = None
    """For a project file that sets keys needing trust: whether its content is trusted.
    ``None`` when nothing in it needed trust (the trust store was not consulted)."""
    needed_trust: tuple[str, ...] = ()
    """The ``section.key`` names it set that needed trust."""

    def as_record(self) -> dict[str, Any]:
        """The ledger's form (``exec.start`` / ``exec.denied`` ``config`` list)."""
        return {
            "path": str(self.path),
            "blake3": self.blake3,
            "layer": self.layer,
            "trusted": self.trusted,
            "needed_trust": list(self.needed_trust),
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """A value an untrusted project file set and jhansi did not apply."""

    file: Path
    key: str
    """``section.key`` (``secrets.NAME`` for a secret)."""
    reason: str


def _default_section(cls: Any) -> Any:
    name = {PolicySettings: "policy", NetworkSettings: "network"}[cls]
    return cls(**{key: option.default for key, option in SCHEMA[name].items()})
