"""What the egress proxy records, and how it says no.

Every tunnelled connection, every intercepted or forwarded request and every refusal
is an :class:`EgressEvent` (the run's ledger record keeps them). :class:`EventLog`
bounds how many are kept, so that a flood of refused connections cannot flood the
record. A refusal is raised inside the proxy as :class:`Refused` and answered with
:func:`refusal_bytes`: a ``403`` (or ``400``, ``502``, ``503``) with a one-line
``text/plain`` reason and an ``X-Jhansi-Refusal`` header.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Literal

from jhansi.egress.hostpolicy import HostPort

Decision = Literal["tunnelled", "intercepted", "forwarded", "refused", "failed"]


@dataclass(frozen=True, slots=True)
class EgressEvent:
    """One tunnelled connection, one intercepted or forwarded request, or one refusal.

    ``path_hash`` is the BLAKE3 (hex) of the request target as sent (path and query),
    for requests the proxy parsed; the path itself is not recorded. ``bytes_up`` and
    ``bytes_down`` count TLS bytes for tunnels and body bytes for parsed requests.
    ``secrets`` names (never values) the secrets substituted into the request.
    """

    host: str
    port: int
    address: str | None
    method: str | None
    path_hash: str | None
    status: int | None
    bytes_up: int
    bytes_down: int
    decision: Decision
    reason: str
    secrets: tuple[str, ...]
    started: float

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (for the ledger)."""
        data = asdict(self)
        data["secrets"] = list(self.secrets)
        return data


class Refused(Exception):
    """Refuse the current connection or request with ``status`` and ``reason``."""

    def __init__(
        self,
        reason: str,
        status: int = 403,
        decision: Decision = "refused",
        target: HostPort | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.decision = decision
        self.target = target


_PHRASES = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}


def refusal_bytes(reason: str, status: int, note: str = "") -> bytes:
    """A refusal; ``note`` (ASCII) is added to the reason phrase, which client libraries
    show in their exception (``Tunnel connection failed: 403 Forbidden (...)``)."""
    header = "".join(c if " " <= c <= "~" else "?" for c in reason)[:400]
    body = f"jhansi egress: {reason}\n".encode()
    phrase = _PHRASES.get(status, "Error") + (f" ({note})" if note else "")
    return (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Jhansi-Refusal: {header}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def path_hash(target: bytes) -> str:
    """The BLAKE3 (hex) of a request target: what an event records instead of the path."""
    import blake3

    return str(blake3.blake3(target).hexdigest())


@dataclass(slots=True)
class Exchange:
    """Mutable bookkeeping for one parsed request (turned into an EgressEvent)."""

    method: str | None = None
    path_hash: str | None = None
    status: int | None = None
    up: int = 0
    down: int = 0
    used: set[str] = field(default_factory=set)
    cut: str = ""
    """Why a response was cut after its head was sent (it is then recorded as failed)."""


class EventLog:
    """The events of one proxy, in order, bounded (thread-safe).

    At most ``max_events`` events are kept, and as many again of connections that were
    not refused; past that they are only counted (:attr:`dropped`). Connections refused
    because ``max_connections`` were already open are only counted
    (:meth:`count_capped`), and shown as one event at the end.
    """

    def __init__(self, *, max_events: int, max_connections: int) -> None:
        self._max_events = max_events
        self._max_connections = max_connections
        self._events: list[EgressEvent] = []
        self._dropped = 0
        self._capped = 0
        self._capped_since: float | None = None
        self._lock = threading.Lock()

    def add(self, event: EgressEvent) -> None:
        """Keep ``event``, or count it as dropped past the cap."""
        with self._lock:
            # Refusals are what a flood is made of; a connection that reached a host is
            # what an auditor needs. Past the cap, refusals are only counted, and other
            # events have a second allowance of the same size before they are too.
            kept = len(self._events)
            if kept < self._max_events or (
                event.decision != "refused" and kept - self._max_events < self._past_cap_allowance()
            ):
                self._events.append(event)
            else:
                self._dropped += 1

    def count_capped(self, now: float) -> None:
        """One more connection refused because ``max_connections`` were open."""
        with self._lock:
            self._capped += 1
            if self._capped_since is None:
                self._capped_since = now

    def events(self) -> tuple[EgressEvent, ...]:
        """What happened so far, in order, with the connections refused for the cap as one
        event at the end, whose reason counts them (``N connections refused: ...``)."""
        with self._lock:
            events = tuple(self._events)
            capped, since = self._capped, self._capped_since
        if not capped or since is None:
            return events
        summary = EgressEvent(
            host="", port=0, address=None, method=None, path_hash=None, status=503,
            bytes_up=0, bytes_down=0, decision="refused",
            reason=f"{capped} connection{'s' if capped != 1 else ''} refused: more than "
            f"{self._max_connections} open at once",
            secrets=(), started=since,
        )  # fmt: skip
        return (*events, summary)

    @property
    def capped(self) -> int:
        """Connections refused because ``max_connections`` were already open."""
        return self._capped

    @property
    def dropped(self) -> int:
        """Events not kept because ``max_events`` was reached."""
        return self._dropped

    def _past_cap_allowance(self) -> int:
        """Events kept past ``max_events`` (connections that were not refused)."""
        return self._max_events


__all__ = [
    "Decision",
    "EgressEvent",
    "EventLog",
    "Exchange",
    "Refused",
    "path_hash",
    "refusal_bytes",
]
