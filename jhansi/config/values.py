"""The forms a setting's value takes: parsing each form, and showing it.

Every parser takes the raw value (from TOML, an environment variable's text or a
flag) and returns the typed value, or raises :class:`ValueError` with the form it
expected; the schema (:mod:`jhansi.config.schema`) names one parser per key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

# This module's patterns are text: re compiles (and caches) one when it is first used,
# so loading settings that set no size, duration, licence or host compiles none.
_SIZE_RE = r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$"
_DURATION_RE = r"(?i)^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$"
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
        match = re.match(_SIZE_RE, value)
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
        match = re.match(_DURATION_RE, value)
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


def parse_choice(*choices: str) -> Callable[[object], str]:
    """A parser that accepts exactly one of ``choices``."""

    def parse(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError("one of " + ", ".join(choices))

    return parse


def parse_string(value: object) -> str:
    """A string with something other than blanks in it."""
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError("a non-empty string")


def parse_optional_string(value: object) -> str | None:
    """A non-empty string, or ``None`` for ``None`` or ``""`` (unset)."""
    if value is None or value == "":
        return None
    return parse_string(value)


def parse_positive_int(value: object) -> int:
    """A whole number above 0, from an integer or its digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    raise ValueError("a positive whole number")


def parse_cpus(value: object) -> float:
    """A number of CPUs above 0 and at most 1024, from a number or its text."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("a positive number of CPUs such as 1 or 0.5") from None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1024:
        return float(value)
    raise ValueError("a positive number of CPUs such as 1 or 0.5")


def parse_string_list(value: object) -> tuple[str, ...]:
    """A list of non-empty strings, as a tuple."""
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError('a list of strings such as ["a", "b"]')


def split_commas(text: str) -> list[str]:
    """An environment variable's ``a, b`` as ``["a", "b"]`` (empty parts dropped)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_bwrap(value: object) -> str:
    """``[sandbox] bwrap``: ``auto``, ``system``, ``bundled`` or a path (it has a ``/``)."""
    if isinstance(value, str) and (value in ("auto", "system", "bundled") or "/" in value):
        return value
    raise ValueError("auto, system, bundled, or the path of a bwrap binary")


def parse_optional_path(value: object) -> str | None:
    """A path as given, or ``None`` (resolving it is the loader's: ``PATH_KEYS``)."""
    return parse_optional_string(value)


def parse_bool(value: object) -> bool:
    """A boolean, or its text (``1``/``true``/``yes``/``on`` and their opposites)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def parse_non_negative_int(value: object) -> int:
    """A whole number, 0 or more, from an integer or its digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError("a whole number, 0 or more")


_LICENSE_ID = r"^[A-Za-z0-9.+-]+$"


def _license_ids(value: object, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple) and all(
        isinstance(v, str) and re.match(_LICENSE_ID, v) for v in value
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


def parse_licenses(value: object) -> LicensePolicy:
    """``[policy] licenses``: a table of ``allow``, ``deny`` and ``unknown``."""
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


def parse_ignore_rules(value: object) -> tuple[IgnoreRule, ...]:
    """``[policy] ignore``: a list of ``{id, reason, until}`` tables."""
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


def parse_severity(*choices: str) -> Callable[[object], str]:
    """A parser of what a finding is: one of ``choices`` (``deny``, ``warn``, ``ignore``)."""
    return parse_choice(*choices)


_HOST_RULE = r"^(https?://)?[A-Za-z0-9.-]+(:\d{1,5})?/?$"


def parse_host_rules(value: object) -> tuple[str, ...]:
    """A list of hosts, each with an optional ``http(s)://`` and ``:port``."""
    hosts = parse_string_list(value)
    for host in hosts:
        if not re.match(_HOST_RULE, host):
            raise ValueError('a list of host names such as ["api.example.com", "example.org:8443"]')
    return hosts


def parse_networks(value: object) -> tuple[str, ...]:
    """A list of IP networks (``10.0.0.0/8``, ``fd00::/8``; host bits allowed)."""
    import ipaddress

    nets = parse_string_list(value)
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


def parse_secret(value: object) -> SecretSettings:
    """A ``[secrets.NAME]`` table: ``hosts`` (at least one), ``header``, ``scheme``."""
    form = '{hosts = ["api.example.com"], header = "Authorization"}'
    if isinstance(value, SecretSettings):
        return value
    if not isinstance(value, Mapping) or set(value) - {"hosts", "header", "scheme"}:
        raise ValueError(f"a table with hosts, header and scheme, such as {form}")
    hosts = parse_host_rules(value.get("hosts"))
    if not hosts:
        raise ValueError(f"at least one host, such as {form}")
    header = value.get("header")
    if header is not None and (not isinstance(header, str) or not header.strip()):
        raise ValueError(f"header must be a header name, such as {form}")
    scheme = value.get("scheme")
    if scheme is not None and scheme not in ("basic", "bearer"):
        raise ValueError('scheme = "basic" (or "bearer")')
    return SecretSettings(hosts, header, scheme)


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
