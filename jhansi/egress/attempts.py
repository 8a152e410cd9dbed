"""What a script with no network tried to reach, and how to tell the user to allow it.

A run with no host allowed still routes the sandbox's proxy-aware clients (the
usual ``HTTPS_PROXY`` variables) to jhansi's egress proxy on the host, which
refuses every request before any DNS lookup or connection, and records it
(:mod:`jhansi.egress.session`). Each such refusal's reason starts with
:data:`NO_NETWORK`; :func:`attempts` reads them back from a run's egress events
and :func:`hint_lines` says, once per destination, what would allow it, in the
words of the caller (``--allow-host`` for the CLI, ``allowed_hosts`` for the MCP
tool).

Standard library only, and cheap: the CLI imports it after every run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

NO_NETWORK = "no network"
"""How the reason of every refusal in a run with no host allowed starts."""
SHOWN_ATTEMPTS = 5
"""Destinations named one by one; the rest are counted."""
_MAX_SHOWN = 120


@dataclass(frozen=True, slots=True)
class Attempt:
    """One destination the script tried (however many times)."""

    host: str
    """The host as the proxy parsed it (lower case, IDNA), or the raw target it could not
    parse (then ``port`` is 0)."""
    port: int
    plain_http: bool
    """An absolute-form ``http://`` request rather than ``CONNECT`` (https)."""
    count: int
    reason: str
    """The proxy's reason for the first of them (without the ``no network:`` part)."""

    @property
    def parsed(self) -> bool:
        """Whether the proxy understood the destination (else it is shown, escaped, only)."""
        return self.port > 0

    def authority(self) -> str:
        """``host`` or ``host:port`` (the default port left out, IPv6 in brackets)."""
        default = 80 if self.plain_http else 443
        return self.address() if self.port != default else self._host()

    def address(self) -> str:
        """``host:port`` (IPv6 in brackets)."""
        return f"{self._host()}:{self.port}"

    def _host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def rule(self) -> str:
        """What ``--allow-host`` / ``allowed_hosts`` takes to allow exactly this."""
        return f"http://{self.authority()}" if self.plain_http else self.authority()


def attempts(events: Iterable[Mapping[str, object]]) -> list[Attempt]:
    """The destinations refused for having no network, in the order first tried."""
    found: dict[tuple[str, int, bool], Attempt] = {}
    for event in events:
        reason = str(event.get("reason", ""))
        if event.get("decision") != "refused" or not reason.startswith(NO_NETWORK + ":"):
            continue
        host = str(event.get("host", ""))
        port = event.get("port")
        port = port if isinstance(port, int) and 0 < port < 65536 else 0
        plain = port > 0 and event.get("method") not in (None, "CONNECT")
        key = (host, port, plain)
        seen = found.get(key)
        if seen is None:
            detail = reason[len(NO_NETWORK) + 1 :].strip()
            found[key] = Attempt(host, port, plain, 1, detail)
        else:
            found[key] = Attempt(host, port, plain, seen.count + 1, seen.reason)
    return list(found.values())


def shown(text: str, limit: int = _MAX_SHOWN) -> str:
    """``text`` safe for a terminal: printable ASCII only (anything else as a Python
    escape), at most ``limit`` characters."""
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in out)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def cli_allow(rules: list[str]) -> str:
    """How the CLI allows ``rules``: ``--allow-host A --allow-host B``."""
    return " ".join(f"--allow-host {r}" for r in rules)


def hint_lines(
    found: list[Attempt],
    allow: Callable[[list[str]], str] = cli_allow,
    *,
    who: str = "the script",
    more: str = "",
    dropped: int = 0,
) -> list[str]:
    """One line per destination (at most :data:`SHOWN_ATTEMPTS`), then one for the rest.

    ``allow`` words the fix for a list of rules; ``more`` says where the whole list is;
    ``dropped`` counts connections past the proxy's event cap (not in ``found``).
    Every name is escaped (:func:`shown`): a destination is whatever the script sent.
    """
    lines: list[str] = []
    for attempt in found[:SHOWN_ATTEMPTS]:
        times = f", {attempt.count} times" if attempt.count > 1 else ""
        where = shown(attempt.address()) + (" over plain http" if attempt.plain_http else "")
        if attempt.parsed and len(attempt.rule()) <= _MAX_SHOWN:
            lines.append(
                f"{who} tried to reach {where} (refused: no network{times}); allow it with "
                f"{allow([attempt.rule()])}"
            )
        elif attempt.parsed:
            lines.append(f"{who} tried to reach {where} (refused: no network{times})")
        elif attempt.host:
            lines.append(
                f"{who} tried to reach {shown(attempt.host)} (refused: no network{times}; "
                f"{shown(attempt.reason, 200)})"
            )
        else:
            lines.append(
                f"{who} sent the egress proxy a request it could not read (refused: no "
                f"network{times}; {shown(attempt.reason, 200)})"
            )
    rest = len(found) - SHOWN_ATTEMPTS
    parts = []
    if rest > 0:
        parts.append(f"{rest} more destination{'s' if rest != 1 else ''}")
    if dropped > 0:
        parts.append(f"{dropped} more connection{'s' if dropped != 1 else ''} not listed")
    if parts:
        lines.append(
            f"{who} tried {' and '.join(parts)} (refused: no network)"
            + (f"; {more}" if more else "")
        )
    return lines


def run_hints(
    events: Iterable[Mapping[str, object]],
    allow: Callable[[list[str]], str] = cli_allow,
    *,
    who: str = "the script",
    more: str = "",
    dropped: int = 0,
) -> list[str]:
    """:func:`hint_lines` for a run's egress ``events``: none unless it tried the network
    with no host allowed."""
    found = attempts(events)
    return hint_lines(found, allow, who=who, more=more, dropped=dropped) if found else []
