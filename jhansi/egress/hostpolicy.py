"""Which hosts a run may reach, which secrets are bound to which hosts, and the checks.

Everything here is pure and fast (standard library only): the egress proxy calls
:func:`parse_target` on every ``CONNECT``, looks the result up in an
:class:`EgressPolicy` **before** any DNS lookup, resolves once, and runs
:func:`check_address` on every answer before it connects to a checked address.

Host names are compared exactly after one normalisation (lower case, IDNA A-labels,
one trailing dot removed): there are no wildcards, so ``api.example.com`` allows
neither ``x.api.example.com`` nor ``api.example.com.evil``.

IP-address literals. A ``CONNECT`` to an IP literal is refused unless that exact
literal, in its canonical spelling (dotted quad, or bracketed IPv6), was allowed as a
rule (``--allow-host 10.1.2.3:8443``). Every other spelling that a resolver or a URL
parser could read as an address (``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
``127.1``, ``[::ffff:127.0.0.1]`` when not listed) is refused always. The reason: a
name allowlist is only meaningful if a target cannot be re-spelt into something the
allowlist did not mean; a user who lists a literal on purpose means exactly that
address, and the address checks still apply to it. Secrets can only be bound to DNS
names (the run CA's name constraints hold DNS names only).
"""

from __future__ import annotations

import ipaddress
import re
import secrets as _secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jhansi.errors import PolicyError, UsageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_SECRET_LENGTH = 8
"""Shorter values cannot be scrubbed from output without garbling unrelated text."""

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, Hetzner, OpenStack
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS pod identity agent
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer (a public-looking address)
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
    )
)
"""Cloud metadata services: refused even under ``allow_private`` unless listed exactly."""

_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX_NUMBER = re.compile(r"0x[0-9a-f]*")


class EgressRefusal(PolicyError):
    """The proxy refuses a connection or a request; ``reason`` is one actionable line."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)

    @property
    def reason(self) -> str:
        """What went wrong and what to do, on one line (the 403 body and the event)."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


@dataclass(frozen=True, slots=True, order=True)
class HostPort:
    """A normalised host (DNS name or canonical IP literal) and a port."""

    host: str
    port: int = 443

    @property
    def is_ip(self) -> bool:
        """Whether ``host`` is an IP-address literal rather than a DNS name."""
        return _as_ip(self.host) is not None

    def authority(self, default_port: int = 443) -> str:
        """``host`` or ``host:port`` as in a Host header (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default_port else f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.authority(default_port=-1)


def _as_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _ends_in_number(host: str) -> bool:
    """WHATWG's "ends in a number": URL parsers and resolvers read such hosts as IPv4."""
    last = host.rsplit(".", 1)[-1]
    return last.isdigit() or bool(_HEX_NUMBER.fullmatch(last))


def _normalise_name(text: str, *, unicode_ok: bool) -> str:
    """Lower-case, IDNA-checked DNS name with one trailing dot removed, or ValueError."""
    if "@" in text:
        raise ValueError("user information (`user@host`) is not allowed in a host")
    if not text:
        raise ValueError("the host is empty")
    if not text.isascii():
        if not unicode_ok:
            raise ValueError(f"{text!r} is not an ASCII host name (send IDNA A-labels)")
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"{text!r} is not a valid internationalised host name") from exc
    host = text.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        raise ValueError(f"{text!r} is not a valid host name")
    for label in host.split("."):
        if not label:
            raise ValueError(f"{text!r} has an empty label")
        if not _LABEL.fullmatch(label):
            raise ValueError(f"{text!r} is not a valid host name (letters, digits, hyphens)")
        if label.startswith("xn--") or label[2:4] == "--":
            try:
                decoded = label.encode("ascii").decode("idna")
                if decoded.encode("idna").decode("ascii") != label:
                    raise UnicodeError("does not round-trip")
            except UnicodeError as exc:
                raise ValueError(f"{text!r} has an invalid IDNA label {label!r}") from exc
    return host


def _split_authority(text: str) -> tuple[str, str | None, bool]:
    """``host``, ``port`` text (or None) and whether the host was bracketed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} has an unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if not rest:
            return host, None, True
        if not rest.startswith(":"):
            raise ValueError(f"{text!r} is not host:port")
        return host, rest[1:], True
    if text.count(":") > 1:
        raise ValueError(f"{text!r}: IPv6 addresses must be in brackets")
    host, sep, port = text.partition(":")
    return host, (port if sep else None), False


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a valid port")
    return int(text)


def _host_of(raw: str, bracketed: bool, *, unicode_ok: bool) -> tuple[str, bool]:
    """The normalised host and whether it is an IP literal; ValueError if refused."""
    if "@" in raw:
        raise ValueError("user information (`user@host`) is not allowed in a host")
    if bracketed:
        if "%" in raw:
            raise ValueError(f"[{raw}]: scoped IPv6 addresses are refused")
        try:
            return str(ipaddress.IPv6Address(raw)), True
        except ValueError as exc:
            raise ValueError(f"[{raw}] is not an IPv6 address") from exc
    lowered = raw.lower()
    stripped = lowered[:-1] if lowered.endswith(".") else lowered
    if stripped and _ends_in_number(stripped):
        try:
            address = ipaddress.IPv4Address(stripped)
        except ValueError:
            address = None
        if address is None or str(address) != stripped:
            raise ValueError(
                f"{raw!r} is a non-canonical spelling of an IP address (refused always)"
            )
        return stripped, True
    return _normalise_name(raw, unicode_ok=unicode_ok), False


def parse_target(text: str, *, literals: Collection[HostPort] = ()) -> HostPort:
    """Parse a ``CONNECT`` target (``host:port``) strictly, or raise :class:`EgressRefusal`.

    The host is normalised as described in the module docstring; an IP literal is
    accepted only when the resulting ``HostPort`` is in ``literals`` (the rules that
    name IP literals), in its canonical spelling.
    """
    shown = text if len(text) <= 80 else text[:77] + "..."
    hint = "the proxy accepts CONNECT host:port with a DNS host name"
    if not text.isascii() or not text.isprintable() or " " in text:
        raise EgressRefusal(f"{shown!r} is not a valid CONNECT target", hint=hint)
    try:
        raw_host, port_text, bracketed = _split_authority(text)
        if port_text is None:
            raise ValueError(f"{text!r} has no port")
        port = _parse_port(port_text)
        host, is_ip = _host_of(raw_host, bracketed, unicode_ok=False)
    except ValueError as exc:
        raise EgressRefusal(f"{shown}: {exc}", hint=hint) from None
    target = HostPort(host, port)
    if is_ip and target not in literals:
        problem = check_address(host, ())
        if problem is not None and "metadata" in problem:
            raise EgressRefusal(
                f"{target} is an IP-address literal of a cloud metadata service",
                hint="metadata services are never reached through the egress proxy",
            )
        raise EgressRefusal(
            f"{target} is an IP-address literal",
            hint=f"connect by host name, or run with --allow-host {target} if that is intended",
        )
    return target


def parse_host_rule(text: str) -> HostPort:
    """Parse ``HOST[:PORT]`` from ``--allow-host`` or ``--secret NAME@HOST`` (port 443).

    Accepts Unicode names (converted to A-labels) and canonical IP literals; raises
    :class:`jhansi.errors.UsageError` with a hint for anything else.
    """
    if "://" in text:
        raise UsageError(
            f"{text!r} is a URL, not a host",
            hint="give HOST or HOST:PORT (for plain http: --allow-host http://HOST[:PORT])",
        )
    return _rule(text, default_port=443)


def parse_http_rule(text: str) -> HostPort:
    """Parse ``http://HOST[:PORT]`` (port 80) from ``--allow-host``; plain HTTP only."""
    if not text.lower().startswith("http://"):
        raise UsageError(
            f"{text!r} is not an http:// URL", hint="give http://HOST[:PORT] for plain HTTP"
        )
    rest = text[len("http://") :]
    if rest.endswith("/"):
        rest = rest[:-1]
    if "/" in rest or "?" in rest or "#" in rest:
        raise UsageError(f"{text!r} has a path", hint="give http://HOST[:PORT] without a path")
    return _rule(rest, default_port=80)


def _rule(text: str, *, default_port: int) -> HostPort:
    try:
        raw_host, port_text, bracketed = _split_authority(text.strip())
        port = default_port if port_text is None else _parse_port(port_text)
        host, _ = _host_of(raw_host, bracketed, unicode_ok=True)
    except ValueError as exc:
        raise UsageError(
            f"invalid host rule: {exc}", hint="give HOST or HOST:PORT, e.g. api.example.com:8443"
        ) from None
    return HostPort(host, port)


def _is_wrapper(address: IPAddress) -> bool:
    """IPv6 forms that only carry an IPv4 address: judged by that address alone."""
    return isinstance(address, ipaddress.IPv6Address) and (
        address.ipv4_mapped is not None
        or (address in _V4_COMPATIBLE and int(address) > 1)  # not :: or ::1
        or address in _NAT64_WELL_KNOWN
    )


def _embedded(address: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address it carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    views: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            views.append(address.ipv4_mapped)
        elif _is_wrapper(address):
            views.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None:
            views.append(address.sixtofour)
        if address.teredo is not None:
            views.extend(address.teredo)
    return views


def _is_public(address: IPAddress) -> bool:
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


def check_address(ip: str | IPAddress, allow_private: Sequence[IPNetwork]) -> str | None:
    """Why connecting to ``ip`` is refused, or None if it is allowed.

    Refused: any address (or IPv4 address embedded in it: mapped, compatible, NAT64,
    6to4, Teredo) that is not globally routable, unless it is inside a network in
    ``allow_private``; cloud metadata addresses unless listed exactly (a /32 or /128).
    """
    try:
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        return f"{ip!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return f"{address} is a scoped (link-local) address"
    for view in _embedded(address):
        if view.is_unspecified:
            return f"{address} is the unspecified address (it reaches this machine); refused"
        shown = str(view) if view == address else f"{view} (inside {address})"
        if view in METADATA_ADDRESSES:
            exact = any(net.num_addresses == 1 and view in net for net in allow_private)
            if not exact:
                return (
                    f"{shown} is a cloud metadata address; refused "
                    f'(only [network] allow_private = ["{view}/{view.max_prefixlen}"] allows it)'
                )
            continue
        if _is_wrapper(view) or _is_public(view):
            continue
        if any(view.version == net.version and view in net for net in allow_private):
            continue
        prefix = 32 if view.version == 4 else 128
        return (
            f"{shown} is not a public address; set [network] allow_private = "
            f'["{view}/{prefix}"] (or its network) if that is intended'
        )
    return None


def _placeholder(name: str) -> str:
    return f"jhansi-placeholder-{name}-{_secrets.token_hex(16)}"


@dataclass(frozen=True, slots=True)
class SecretBinding:
    """A secret the script may use only towards ``hosts``, through its placeholder.

    ``hosts`` are ``HOST`` or ``HOST:PORT`` rules (port 443 by default), normalised
    on construction. ``header``: substitute only in this header (any header if None).
    ``scheme="basic"``: the placeholder sits inside ``Authorization: Basic`` credentials
    (base64 ``user:pass``) and is substituted after decoding. ``placeholder`` is
    generated per binding (per run): unguessable and distinctive. ``value`` is never
    part of ``repr``.
    """

    name: str
    value: str = field(repr=False)
    hosts: tuple[str, ...]
    header: str | None = None
    scheme: str | None = None
    placeholder: str = ""

    def __post_init__(self) -> None:
        hint = "see `jhansi run --help` for --secret NAME@HOST"
        if not _ENV_NAME.fullmatch(self.name):
            raise UsageError(f"secret name {self.name!r} is not a valid variable name", hint=hint)
        if len(self.value) < MIN_SECRET_LENGTH:
            raise UsageError(
                f"secret {self.name} is shorter than {MIN_SECRET_LENGTH} characters",
                hint="such a short value cannot be scrubbed from output reliably",
            )
        if not all(" " <= c <= "~" for c in self.value):
            raise UsageError(
                f"secret {self.name} holds characters that cannot go into an HTTP header",
                hint="secret values must be printable ASCII",
            )
        if not self.hosts:
            raise UsageError(f"secret {self.name} is bound to no host", hint=hint)
        hosts = []
        for rule in self.hosts:
            target = parse_host_rule(rule)
            if target.is_ip:
                raise UsageError(
                    f"secret {self.name} is bound to an IP address ({rule})",
                    hint="bind secrets to DNS host names only",
                )
            hosts.append(str(target) if target.port != 443 else target.host)
        object.__setattr__(self, "hosts", tuple(dict.fromkeys(hosts)))
        if self.header is not None:
            if not _TOKEN.fullmatch(self.header):
                raise UsageError(f"{self.header!r} is not a header name", hint=hint)
            object.__setattr__(self, "header", self.header.lower())
        if self.scheme is not None:
            if self.scheme.lower() != "basic":
                raise UsageError(f"unknown secret scheme {self.scheme!r}", hint="use basic")
            object.__setattr__(self, "scheme", "basic")
        if not self.placeholder:
            object.__setattr__(self, "placeholder", _placeholder(self.name))

    @property
    def targets(self) -> tuple[HostPort, ...]:
        """The hosts as :class:`HostPort` values."""
        return tuple(parse_host_rule(h) for h in self.hosts)


Route = Literal["intercept", "tunnel"]


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """What one run may reach.

    ``allow``: hosts tunnelled untouched (TLS end to end). ``secrets``: their hosts are
    allowed too and intercepted (TLS terminated with the run CA) to substitute
    placeholders. ``allow_private``: networks exempt from the public-address check
    (loopback only if listed). ``allow_http``: plain-HTTP absolute-form requests.
    ``upstream_ca``: an extra CA bundle for verifying intercepted hosts.
    """

    allow: tuple[HostPort, ...] = ()
    secrets: tuple[SecretBinding, ...] = ()
    allow_private: tuple[IPNetwork, ...] = ()
    allow_http: tuple[HostPort, ...] = ()
    upstream_ca: Path | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.secrets]
        if len(names) != len(set(names)):
            raise UsageError("a secret is bound twice", hint="give each --secret NAME once")

    def placeholders(self) -> dict[str, str]:
        """Secret name → the placeholder the sandbox sees in its environment."""
        return {s.name: s.placeholder for s in self.secrets}

    @property
    def enabled(self) -> bool:
        """Whether any host is reachable at all (else no proxy is needed)."""
        return bool(self.allow or self.secrets or self.allow_http)

    def literals(self) -> frozenset[HostPort]:
        """The rules that are IP-address literals (the only literals CONNECT accepts)."""
        return frozenset(t for t in (*self.allow, *self.allow_http) if t.is_ip)

    def bindings_for(self, target: HostPort) -> tuple[SecretBinding, ...]:
        """The secrets bound to ``target``."""
        return tuple(s for s in self.secrets if target in s.targets)

    def route(self, target: HostPort) -> Route | None:
        """``intercept`` (a secret is bound), ``tunnel`` (allowed), or None (refused)."""
        if self.bindings_for(target):
            return "intercept"
        if target in self.allow:
            return "tunnel"
        return None

    def allows_http(self, target: HostPort) -> bool:
        """Whether plain HTTP to ``target`` is allowed."""
        return target in self.allow_http

    def intercepted_hosts(self) -> tuple[str, ...]:
        """The DNS names the run CA must be able to sign for."""
        return tuple(sorted({t.host for s in self.secrets for t in s.targets}))
