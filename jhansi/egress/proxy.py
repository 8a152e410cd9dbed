"""The host-side egress proxy: the only way out of a sandbox, and where secrets are swapped in.

The sandbox reaches this proxy through a unix socket (bind-mounted, relayed by the
in-sandbox forwarder) and speaks ordinary HTTP proxy protocol to it:

``CONNECT host:port``
    The target is parsed strictly and checked against the :class:`EgressPolicy`
    **before** any DNS lookup; the name is resolved once, every answer is checked
    (:func:`check_address`) and the proxy connects to a checked address, never to
    the name again (no DNS rebinding between check and use). Then:

    * a host with no bound secret is **tunnelled**: ``200``, and bytes are relayed
      untouched, provided the client's first bytes are a TLS ClientHello (plain
      text and HTTP/2 prior-knowledge prefaces are refused);
    * a host with a bound secret is **intercepted**: the upstream TLS session is
      opened and verified first (system roots plus ``upstream_ca``), then the client's
      TLS is terminated with a leaf from the run CA (SNI must equal the CONNECT host,
      ALPN ``http/1.1`` only), and each request is parsed with h11. The ``Host``
      header must equal the CONNECT host; a secret's placeholder is replaced by the
      real value only in headers (only the configured header, if any) of requests to
      the secret's hosts; a placeholder anywhere else (URL, body, another host) is
      refused with 403. Responses are scrubbed of the real value in every encoding
      (:class:`Scrubber`) before they reach the sandbox.

absolute-form ``GET http://host/...``
    Plain HTTP, only for hosts in ``allow_http``; secrets are never substituted into
    plain HTTP (a placeholder there is refused). One request per client connection.

With a policy that allows nothing (a run with no network), every request is refused
as above, before any lookup or connection, and each reason starts with
:data:`~jhansi.egress.attempts.NO_NETWORK` (how the run's hint finds them); no run
CA is made.

Every refusal is a ``403`` with a one-line ``text/plain`` reason and an
``X-Jhansi-Refusal`` header, and every connection or request is an
:class:`EgressEvent`. If the proxy stops, every connection through it fails: there is
no other route out of the sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_to_bytes, urlsplit

import h11

from jhansi.egress.attempts import NO_NETWORK
from jhansi.egress.ca import RunCA
from jhansi.egress.codec import SNIFF, Decoder, Unreadable, choose
from jhansi.egress.hostpolicy import (
    EgressPolicy,
    EgressRefusal,
    HostPort,
    SecretBinding,
    check_address,
    parse_target,
)
from jhansi.egress.scrub import Scrubber
from jhansi.errors import SandboxError

Decision = Literal["tunnelled", "intercepted", "forwarded", "refused", "failed"]
Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``; called once per connection, in a worker thread."""

MAX_HEAD = 64 * 1024
"""Largest request or response head (request line and headers) accepted."""
HOLD_BODY = 1024 * 1024
"""Request bodies up to this size are checked completely before anything is sent."""
BUFFER_RESPONSE = 1024 * 1024
"""Responses with a Content-Length up to this size keep one (recomputed after scrubbing)."""
BUFFER_BUDGET = 32 * 1024 * 1024
"""Bytes all connections together may hold for HOLD_BODY and BUFFER_RESPONSE; past it a
request body is checked as it streams and a response streams without a Content-Length."""
READ_SIZE = 64 * 1024
MAX_CONNECTIONS = 256
"""Connections open at once through one run's proxy; more are refused with 503."""

_SPACE = re.compile(rb"[ \t\r\n]+")

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"accept-encoding",
    }
)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (TCP), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class ProxyTimeouts:
    """Seconds allowed for each wait.

    ``head`` is the whole of a request head (``CONNECT`` line and headers, or a request
    inside an intercepted connection once its first byte arrived): a deadline, not a
    per-read wait, so a head trickled a byte at a time (slowloris) ends there too.
    ``handshake`` bounds each TLS handshake and the wait for a tunnel's first bytes;
    ``idle`` is silence in both directions of an open connection.
    """

    head: float = 10.0
    handshake: float = 10.0
    resolve: float = 10.0
    connect: float = 15.0
    idle: float = 300.0


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


class _Refused(Exception):
    """Internal: refuse the current connection or request with ``status`` and ``reason``."""

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


def _refusal_bytes(reason: str, status: int, note: str = "") -> bytes:
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


def _path_hash(target: bytes) -> str:
    import blake3

    return str(blake3.blake3(target).hexdigest())


class _Activity:
    """Last time any byte moved on a connection (for the idle timeout of a relay)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


@dataclass(slots=True)
class _Exchange:
    """Mutable bookkeeping for one parsed request (turned into an EgressEvent)."""

    method: str | None = None
    path_hash: str | None = None
    status: int | None = None
    up: int = 0
    down: int = 0
    used: set[str] = field(default_factory=set)
    cut: str = ""
    """Why a response was cut after its head was sent (it is then recorded as failed)."""


class EgressProxy:
    """The egress proxy for one run; serve it on a unix socket (or TCP for tests).

    ``ca_pem`` is the run CA certificate the sandbox must trust; ``placeholders``
    maps secret names to what the sandbox's environment holds instead of values.
    ``resolver`` replaces the system resolver (tests); it is called once per
    connection. Nothing here prints; what happened is in :meth:`events`.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        lifetime: timedelta = timedelta(hours=1),
        resolver: Resolver | None = None,
        timeouts: ProxyTimeouts | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_events: int = 10_000,
    ) -> None:
        self.policy = policy
        # Nothing is ever intercepted (or even connected to) when nothing is allowed.
        self._ca = RunCA.create(policy.intercepted_hosts(), lifetime) if policy.enabled else None
        self.ca_pem: bytes = self._ca.ca_pem if self._ca is not None else b""
        self.placeholders: dict[str, str] = policy.placeholders()
        self._resolver: Resolver = resolver or system_resolver
        self._timeouts = timeouts or ProxyTimeouts()
        self._max_connections = max_connections
        self._max_events = max_events
        self._scrubber = Scrubber(
            (s.value for s in policy.secrets), {s.value: s.placeholder for s in policy.secrets}
        )
        self._literals = policy.literals()
        self._upstream_context: ssl.SSLContext | None = None
        self._events: list[EgressEvent] = []
        self._dropped = 0
        self._capped = 0
        self._capped_since: float | None = None
        self._peak = 0
        self._budget = BUFFER_BUDGET
        self._events_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unix_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start_unix(self, path: Path) -> None:
        """Listen on a unix socket at ``path`` (in a private directory) in a background thread."""
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise SandboxError(
                    f"cannot start the egress proxy: {path} exists and is not a socket",
                    hint="remove it or use a fresh private directory",
                )
            path.unlink()
        self._unix_path = path
        self._start(lambda: asyncio.start_unix_server(self._accept, path=str(path)), str(path))

    def serve_listener(self, listener: socket.socket, path: Path | None = None) -> None:
        """Serve on ``listener``, a unix socket already bound and listening (connections
        made before this call wait in its backlog); ``path`` is removed on :meth:`stop`."""
        self._unix_path = path
        self._start(
            lambda: asyncio.start_unix_server(self._accept, sock=listener),
            str(path) if path is not None else "a listening socket",
        )

    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on TCP (tests and benchmarks); returns the port."""
        self._start(lambda: asyncio.start_server(self._accept, host, port), f"{host}:{port}")
        if self._server is None:  # pragma: no cover - _start raises instead
            raise SandboxError("the egress proxy did not start")
        return int(self._server.sockets[0].getsockname()[1])

    def _start(self, listen: Callable[[], Coroutine[Any, Any, asyncio.Server]], where: str) -> None:
        if self._thread is not None:
            raise SandboxError("the egress proxy is already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(self._loop_exception)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(listen())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=serve, name="jhansi-egress", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise SandboxError(
                f"the egress proxy cannot listen on {where}: {failure[0]}",
                hint="check that the directory exists and is writable",
            ) from failure[0]

    def _loop_exception(self, _loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        """asyncio's unhandled errors become events: the library never prints."""
        exc = context.get("exception")
        what = type(exc).__name__ if exc is not None else str(context.get("message", ""))
        self._record(None, "failed", started=time.time(), reason=f"proxy error: {what[:200]}")

    def stop(self) -> None:
        """Stop listening and cut every open connection (they fail, they are never rerouted)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive() and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout=10)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._unix_path.unlink()
            self._unix_path = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def alive(self) -> bool:
        """Whether the proxy is serving (a dead proxy means no egress at all)."""
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self._server is not None
            and self._server.is_serving()
        )

    def events(self) -> tuple[EgressEvent, ...]:
        """What happened so far, in order (at most ``max_events``, and as many again of
        connections that were not refused; see :attr:`dropped_events`).

        Connections refused because ``max_connections`` were open are one event at the
        end, whose reason counts them (``N connections refused: ...``).
        """
        with self._events_lock:
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
    def refused_for_cap(self) -> int:
        """Connections refused because ``max_connections`` were already open."""
        return self._capped

    @property
    def peak_connections(self) -> int:
        """The most connections open at once (refused ones not counted)."""
        return self._peak

    def scrubber(self) -> Scrubber:
        """A fresh scrubber for this run's secrets (for the script's stdout and stderr)."""
        return self._scrubber.fresh()

    def _past_cap_allowance(self) -> int:
        """Events kept past ``max_events`` (connections that were not refused)."""
        return self._max_events

    @property
    def dropped_events(self) -> int:
        """Events not kept because ``max_events`` was reached."""
        return self._dropped

    def _clean(self, text: str) -> str:
        """``text`` with any real secret value scrubbed (reasons can quote upstream bytes)."""
        return self._scrubber.scrub(text.encode("utf-8", "replace")).decode("utf-8", "replace")

    def _refusal(self, reason: str, status: int) -> bytes:
        note = "jhansi: no network" if reason.startswith(NO_NETWORK + ":") else ""
        return _refusal_bytes(self._clean(reason), status, note)

    def _no_network(self, reason: str) -> str:
        """``reason``, marked as a refusal of a run with no network when that is one."""
        if self.policy.enabled or reason.startswith(NO_NETWORK + ":"):
            return reason
        return f"{NO_NETWORK}: {reason}"

    def _record(
        self,
        target: HostPort | None,
        decision: Decision,
        *,
        started: float,
        address: str | None = None,
        reason: str = "",
        exchange: _Exchange | None = None,
        up: int = 0,
        down: int = 0,
        raw_target: str = "",
    ) -> None:
        ex = exchange or _Exchange(up=up, down=down)
        event = EgressEvent(
            host=target.host if target else raw_target[:200],
            port=target.port if target else 0,
            address=address,
            method=ex.method,
            path_hash=ex.path_hash,
            status=ex.status,
            bytes_up=ex.up,
            bytes_down=ex.down,
            decision=decision,
            reason=self._clean(reason),
            secrets=tuple(sorted(ex.used)),
            started=started,
        )
        with self._events_lock:
            # Refusals are what a flood is made of; a connection that reached a host is
            # what an auditor needs. Past the cap, refusals are only counted, and other
            # events have a second allowance of the same size before they are too.
            kept = len(self._events)
            if kept < self._max_events or (
                decision != "refused" and kept - self._max_events < self._past_cap_allowance()
            ):
                self._events.append(event)
            else:
                self._dropped += 1

    # -- one client connection -------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - start_server always runs us in a task
            return
        self._tasks.add(task)
        try:
            if len(self._tasks) > self._max_connections:
                # Counted, not recorded one by one: a flood must not flood the record.
                with self._events_lock:
                    self._capped += 1
                    if self._capped_since is None:
                        self._capped_since = time.time()
                writer.write(
                    self._refusal(
                        f"too many connections through the proxy (at most "
                        f"{self._max_connections} at once)",
                        503,
                    )
                )
                await asyncio.wait_for(writer.drain(), self._timeouts.head)
                # Read what the client sent before closing: closing a unix socket with
                # unread data resets the peer, which may then lose the 503 it was sent.
                writer.write_eof()
                with contextlib.suppress(TimeoutError, OSError):
                    await asyncio.wait_for(reader.read(1 << 16), 1.0)
                return
            self._peak = max(self._peak, len(self._tasks))
            await self._serve(reader, writer)
        except (TimeoutError, OSError, ssl.SSLError, h11.ProtocolError):
            pass  # the peer went away or stalled: the connection is simply over
        except asyncio.CancelledError:
            # The proxy is stopping. Ending normally keeps asyncio's stream callback from
            # logging the cancellation (3.11 calls task.exception() on it).
            pass
        except Exception as exc:  # a bug: record it (never print), fail this connection only
            self._record(
                None, "failed", started=time.time(), reason=f"proxy error: {type(exc).__name__}"
            )
        finally:
            self._tasks.discard(task)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.time()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            head = self._timeouts.head
            event = await _next_event(conn, reader, head, deadline=time.monotonic() + head)
        except h11.RemoteProtocolError as exc:
            reason = self._no_network(f"malformed request: {exc}")
            self._record(None, "refused", started=started, reason=reason)
            writer.write(self._refusal(reason, 400))
            return
        if not isinstance(event, h11.Request):
            return
        raw = event.target.decode("ascii", "replace")
        method = event.method.decode("ascii", "replace")
        try:
            if event.method == b"CONNECT":
                await self._connect(reader, writer, conn, raw, started)
            elif raw.lower().startswith("http://"):
                await self._plain_http(reader, writer, conn, event, started)
            else:
                raise _Refused(
                    "this is jhansi's egress proxy: use CONNECT for https:// or an absolute "
                    "http:// URL",
                    400,
                )
        except _Refused as refusal:
            reason = self._no_network(refusal.reason)
            self._record(
                refusal.target,
                refusal.decision,
                started=started,
                reason=reason,
                raw_target=raw,
                exchange=_Exchange(method=method),
            )
            writer.write(self._refusal(reason, refusal.status))
            await writer.drain()

    def _not_allowed(self, target: HostPort) -> _Refused:
        if not self.policy.enabled:
            return _Refused(
                f"{NO_NETWORK}: this run allows no host; run with --allow-host "
                f"{target.authority()} to allow this one"
            )
        host = target.host
        ports = sorted(
            {t.port for t in self.policy.allow if t.host == host}
            | {t.port for s in self.policy.secrets for t in s.targets if t.host == host}
        )
        if ports:
            shown = ", ".join(map(str, ports))
            return _Refused(
                f"{host} is allowed on port {shown} only, not {target.port}; "
                f"run with --allow-host {target} if that port is intended"
            )
        if any(t.host == host for t in self.policy.allow_http):
            return _Refused(f"{host} is allowed for plain http:// only, not CONNECT")
        return _Refused(
            f"{target.authority()} is not allowed; run with --allow-host "
            f"{target.authority()} or bind a secret to it"
        )

    async def _open_upstream(
        self, target: HostPort
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Resolve once, check every answer, connect to a checked address."""
        if not self.policy.enabled:
            # Unreachable (a policy that allows nothing routes nothing): the one place
            # that resolves and connects says so itself, whatever calls it.
            raise _Refused(f"{NO_NETWORK}: this run allows no host; nothing is connected to")
        if target.is_ip:
            addresses: Sequence[str] = [target.host]
        else:
            loop = asyncio.get_running_loop()
            try:
                addresses = await asyncio.wait_for(
                    loop.run_in_executor(None, self._resolver, target.host, target.port),
                    self._timeouts.resolve,
                )
            except (TimeoutError, OSError) as exc:
                raise _Refused(f"cannot resolve {target.host}: {exc}", 502, "failed") from None
            if not addresses:
                raise _Refused(f"{target.host} has no address", 502, "failed")
        for address in addresses:
            problem = check_address(address, self.policy.allow_private)
            if problem:
                raise _Refused(f"{target.host} resolved to {problem}")
        last: Exception | None = None
        for address in addresses:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(address, target.port, limit=READ_SIZE),
                    self._timeouts.connect,
                )
            except (TimeoutError, OSError) as exc:
                last = exc
                continue
            peer = writer.get_extra_info("peername")
            if peer is None or ipaddress.ip_address(peer[0]) != ipaddress.ip_address(address):
                await _close(writer)
                raise _Refused(f"connected to an unexpected peer {peer}", 502, "failed")
            return reader, writer, str(address)
        raise _Refused(f"cannot connect to {target}: {last}", 502, "failed")

    async def _connect(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        raw: str,
        started: float,
    ) -> None:
        try:
            target = parse_target(raw, literals=self._literals)
        except EgressRefusal as exc:
            raise _Refused(exc.reason) from None
        route = self.policy.route(target)
        if route is None:
            refusal = self._not_allowed(target)
            refusal.target = target
            raise refusal
        early = conn.trailing_data[0]
        try:
            up_reader, up_writer, address = await self._open_upstream(target)
        except _Refused as refusal:
            self._record(target, refusal.decision, started=started, reason=refusal.reason)
            writer.write(self._refusal(refusal.reason, refusal.status))
            await writer.drain()
            return
        try:
            if route == "tunnel":
                await self._tunnel(
                    reader, writer, up_reader, up_writer, target, address, early, started
                )
            else:
                await self._intercept(
                    reader, writer, up_reader, up_writer, target, address, early, started
                )
        finally:
            await _close(up_writer)

    # -- tunnels ---------------------------------------------------------------------

    async def _tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        target: HostPort,
        address: str,
        early: bytes,
        started: float,
    ) -> None:
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        first = early
        while len(first) < 3:
            chunk = await asyncio.wait_for(reader.read(READ_SIZE), self._timeouts.handshake)
            if not chunk:
                self._record(
                    target,
                    "refused",
                    started=started,
                    address=address,
                    reason="the client closed the tunnel before sending anything",
                )
                return
            first += chunk
        if not (first[0] == 0x16 and first[1] == 0x03 and first[2] <= 0x04):
            if first.startswith(b"PRI"):
                reason = (
                    f"HTTP/2 prior-knowledge through CONNECT to {target.host} is refused; "
                    "only TLS is tunnelled"
                )
            else:
                reason = (
                    f"the tunnel to {target.host} did not start with a TLS ClientHello; "
                    "only TLS is tunnelled (use https://)"
                )
            self._record(target, "refused", started=started, address=address, reason=reason)
            writer.write(self._refusal(reason, 403))
            await writer.drain()
            return
        up_writer.write(first)
        counts = [len(first), 0]
        activity = _Activity()
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer, counts, 0, activity)),
            asyncio.ensure_future(self._pipe(up_reader, writer, counts, 1, activity)),
        ]
        try:
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise a failure (timeout, reset) after cancelling the other
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._record(
                target, "tunnelled", started=started, address=address, up=counts[0], down=counts[1]
            )

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        counts: list[int],
        slot: int,
        activity: _Activity,
    ) -> None:
        idle = self._timeouts.idle
        while True:
            try:
                data = await asyncio.wait_for(src.read(READ_SIZE), idle)
            except TimeoutError:
                if time.monotonic() - activity.last < idle:
                    continue  # the other direction is busy
                raise
            if not data:
                break
            activity.touch()
            counts[slot] += len(data)
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()

    # -- interception ----------------------------------------------------------------

    def _upstream_tls(self) -> ssl.SSLContext:
        if self._upstream_context is None:
            context = ssl.create_default_context()
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.policy.upstream_ca is not None:
                context.load_verify_locations(cafile=str(self.policy.upstream_ca))
            context.set_alpn_protocols(["http/1.1"])
            self._upstream_context = context
        return self._upstream_context

    async def _intercept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        target: HostPort,
        address: str,
        early: bytes,
        started: float,
    ) -> None:
        def refuse(reason: str, status: int = 403, decision: Decision = "refused") -> bytes:
            self._record(target, decision, started=started, address=address, reason=reason)
            return self._refusal(reason, status)

        if early:
            writer.write(refuse("the client sent data before the CONNECT was answered", 400))
            return
        try:
            await up_writer.start_tls(
                self._upstream_tls(),
                server_hostname=target.host,
                ssl_handshake_timeout=self._timeouts.handshake,
            )
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            writer.write(refuse(f"TLS to {target.host} failed: {exc}", 502, "failed"))
            return
        up_ssl = up_writer.get_extra_info("ssl_object")
        if up_ssl is not None and up_ssl.selected_alpn_protocol() not in (None, "http/1.1"):
            writer.write(refuse(f"{target.host} did not agree to HTTP/1.1", 502, "failed"))
            return
        if self._ca is None:  # pragma: no cover - routed only when a secret is bound
            writer.write(refuse("no run CA: nothing is intercepted in this run"))
            return
        context = self._ca.leaf_context(target.host)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await writer.start_tls(context, ssl_handshake_timeout=self._timeouts.handshake)
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            refuse(
                f"TLS with the client failed ({exc}); the SNI must be {target.host} and the "
                "client must trust the run CA"
            )
            return
        client_ssl = writer.get_extra_info("ssl_object")
        if client_ssl is not None and client_ssl.selected_alpn_protocol() not in (None, "http/1.1"):
            refuse("only HTTP/1.1 is spoken on intercepted hosts")
            return
        client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        upstream = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        bindings = self.policy.bindings_for(target)
        while True:
            try:
                event = await self._next_request(client, reader)
            except h11.RemoteProtocolError as exc:
                writer.write(refuse(f"malformed request: {exc}", 400))
                return
            if not isinstance(event, h11.Request):
                return
            keep_going = await self._exchange(
                event, client, reader, writer, upstream, up_reader, up_writer,
                target=target, address=address, bindings=bindings, plain=False, started=started,
            )  # fmt: skip
            if not keep_going:
                return
            if client.our_state is not h11.DONE or upstream.our_state is not h11.DONE:
                return
            if client.their_state is not h11.DONE or upstream.their_state is not h11.DONE:
                return
            client.start_next_cycle()
            upstream.start_next_cycle()
            started = time.time()

    async def _next_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> object:
        """The next request on a kept-alive connection: up to ``idle`` for its first
        byte, then ``head`` for the whole head (a trickled head is cut)."""
        if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            data = await asyncio.wait_for(reader.read(READ_SIZE), self._timeouts.idle)
            conn.receive_data(data)
        head = self._timeouts.head
        return await _next_event(conn, reader, head, deadline=time.monotonic() + head)

    async def _plain_http(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        request: h11.Request,
        started: float,
    ) -> None:
        raw = request.target.decode("ascii", "replace")
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            raise _Refused(f"{raw[:80]!r} is not a valid http:// URL", 400) from None
        if "@" in parts.netloc:
            raise _Refused("user information (`user@host`) is not allowed in a URL")
        authority = parts.netloc if port is not None else f"{parts.netloc}:80"
        try:
            target = parse_target(authority, literals=self._literals)
        except EgressRefusal as exc:
            raise _Refused(exc.reason) from None
        if not self.policy.allows_http(target):
            shown = target.authority(default_port=80)
            if not self.policy.enabled:
                raise _Refused(
                    f"{NO_NETWORK}: this run allows no host; use https://, or run with "
                    f"--allow-host http://{shown} to allow plain http to this one",
                    target=target,
                )
            raise _Refused(
                f"plain http://{shown} is not allowed; use https:// or run with "
                f"--allow-host http://{shown}",
                target=target,
            )
        try:
            up_reader, up_writer, address = await self._open_upstream(target)
        except _Refused as refusal:
            self._record(target, refusal.decision, started=started, reason=refusal.reason)
            writer.write(self._refusal(refusal.reason, refusal.status))
            await writer.drain()
            return
        try:
            origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            rewritten = h11.Request(
                method=request.method,
                target=origin.encode("ascii"),
                headers=request.headers,
                http_version=request.http_version,
            )
            upstream = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
            await self._exchange(
                rewritten, conn, reader, writer, upstream, up_reader, up_writer,
                target=target, address=address, bindings=(), plain=True, started=started,
            )  # fmt: skip
        finally:
            await _close(up_writer)

    def _check_request(
        self,
        request: h11.Request,
        target: HostPort,
        bindings: tuple[SecretBinding, ...],
        plain: bool,
        ex: _Exchange,
    ) -> list[tuple[bytes, bytes]]:
        """Validate a request and substitute placeholders; the headers to send upstream."""
        if request.method == b"CONNECT":
            raise _Refused("CONNECT inside an intercepted connection is refused")
        path = request.target
        if not (path.startswith(b"/") or (path == b"*" and request.method == b"OPTIONS")):
            raise _Refused("request targets must be origin-form (/path) on intercepted hosts", 400)
        authority = target.authority(default_port=80 if plain else 443)
        hosts = [v for n, v in request.headers if n == b"host"]
        if len(hosts) != 1 or hosts[0].decode("latin-1").lower().rstrip(".") not in (
            authority,
            f"{authority}:{80 if plain else 443}",
        ):
            shown = b", ".join(hosts).decode("latin-1")[:100] or "none"
            raise _Refused(f"the Host header ({shown}) must be {authority}, the connected host")
        decoded_path = unquote_to_bytes(path)
        for secret in self.policy.secrets:
            mark = secret.placeholder.encode()
            if mark in path or mark in decoded_path:
                raise _Refused(
                    f"the placeholder of {secret.name} is in the request URL; secrets are "
                    "substituted only in headers"
                )
        if any(n == b"upgrade" for n, _ in request.headers):
            raise _Refused("protocol upgrades (WebSocket, h2c) are refused on intercepted hosts")
        out: list[tuple[bytes, bytes]] = []
        for raw_name, value in request.headers.raw_items():  # keep the client's spelling
            name = raw_name.lower()
            value = self._substitute(name, value, target, bindings, plain, ex)
            if name in _HOP_BY_HOP and not (name == b"connection" and value.lower() == b"close"):
                continue
            out.append((raw_name, value))
        out.append((b"Accept-Encoding", b"identity"))
        if any(n.lower() == b"transfer-encoding" for n, _ in out):
            # Both framings at once is how requests are smuggled: send one only.
            out = [(n, v) for n, v in out if n.lower() != b"content-length"]
        return out

    def _substitute(
        self,
        name: bytes,
        value: bytes,
        target: HostPort,
        bindings: tuple[SecretBinding, ...],
        plain: bool,
        ex: _Exchange,
    ) -> bytes:
        for secret in self.policy.secrets:
            mark = secret.placeholder.encode()
            if mark.lower() in name.lower():  # names arrive lower-cased: compare alike
                raise _Refused(f"the placeholder of {secret.name} is in a header name")
            basic = _basic_credentials(value)
            in_basic = basic is not None and mark in basic
            if mark not in value and not in_basic:
                continue
            if plain:
                raise _Refused(
                    f"the placeholder of {secret.name} is in a plain-http request; secrets are "
                    "only ever sent over https"
                )
            if secret not in bindings:
                raise _Refused(
                    f"the placeholder of {secret.name} is sent to {target.host}, which it is not "
                    f"bound to (bound to: {', '.join(secret.hosts)})"
                )
            header = name.decode("latin-1")
            if secret.header is not None and header != secret.header:
                raise _Refused(
                    f"the placeholder of {secret.name} is in the {header} header; it is "
                    f"substituted only in {secret.header}"
                )
            real = secret.value.encode()
            if secret.scheme == "basic":
                if basic is None or mark not in basic or mark in value:
                    raise _Refused(
                        f"the placeholder of {secret.name} must be inside Basic credentials "
                        "(Authorization: Basic base64(user:password))"
                    )
                value = b"Basic " + base64.b64encode(basic.replace(mark, real))
            else:
                if mark not in value:
                    raise _Refused(
                        f"the placeholder of {secret.name} is inside Basic credentials; bind "
                        "it with the basic scheme"
                    )
                value = value.replace(mark, real)
            ex.used.add(secret.name)
        return value

    async def _exchange(
        self,
        request: h11.Request,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: h11.Connection,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        *,
        target: HostPort,
        address: str,
        bindings: tuple[SecretBinding, ...],
        plain: bool,
        started: float,
    ) -> bool:
        """Forward one request and its response; False if the connection must end."""
        ex = _Exchange(method=request.method.decode("ascii", "replace"))
        ex.path_hash = _path_hash(request.target)
        decision: Decision = "forwarded" if plain else "intercepted"
        try:
            headers = self._check_request(request, target, bindings, plain, ex)
            await self._send_request(
                request, headers, client, reader, writer, upstream, up_writer, ex
            )
            keep = await self._relay_response(request, client, writer, upstream, up_reader, ex)
        except _Refused as refusal:
            self._record(target, refusal.decision, started=started, address=address,
                         reason=refusal.reason, exchange=ex)  # fmt: skip
            writer.write(self._refusal(refusal.reason, refusal.status))
            with contextlib.suppress(OSError):
                await writer.drain()
            return False
        if ex.cut:
            self._record(target, "failed", started=started, address=address, reason=ex.cut,
                         exchange=ex)  # fmt: skip
            return False
        self._record(target, decision, started=started, address=address, exchange=ex)
        return keep and not plain

    async def _send_request(
        self,
        request: h11.Request,
        headers: list[tuple[bytes, bytes]],
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: h11.Connection,
        up_writer: asyncio.StreamWriter,
        ex: _Exchange,
    ) -> None:
        """Send the request upstream, holding the first HOLD_BODY bytes until checked.

        What all connections hold together is bounded by BUFFER_BUDGET: when it is
        spent, less is held (a placeholder found later aborts the upstream request
        half-sent, which is never completed).
        """
        held: list[bytes] | None = [
            upstream.send(
                h11.Request(
                    method=request.method,
                    target=request.target,
                    headers=headers,
                    http_version=b"1.1",
                )
            )
            or b""
        ]
        held_size = 0
        allowance = min(HOLD_BODY, max(self._budget, 0))
        self._budget -= allowance
        try:
            await self._send_body(
                client, reader, writer, upstream, up_writer, ex, held, held_size, allowance
            )
        finally:
            self._budget += allowance

    async def _send_body(
        self,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: h11.Connection,
        up_writer: asyncio.StreamWriter,
        ex: _Exchange,
        held: list[bytes] | None,
        held_size: int,
        allowance: int,
    ) -> None:
        """The body: the first ``allowance`` bytes are held until checked, the rest streams."""
        marks = [(s.name, s.placeholder.encode()) for s in self.policy.secrets]
        tail_size = max((len(m) for _, m in marks), default=1) - 1
        tail = b""
        if client.they_are_waiting_for_100_continue:
            writer.write(client.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        while True:
            event = await _next_event(client, reader, self._timeouts.idle)
            if isinstance(event, h11.Data):
                window = tail + event.data
                for name, mark in marks:
                    if mark in window:
                        if held is None:
                            up_writer.transport.abort()  # part was sent: never complete it
                        raise _Refused(
                            f"the placeholder of {name} is in the request body; secrets are "
                            "substituted only in headers"
                        )
                tail = window[-tail_size:] if tail_size else b""
                ex.up += len(event.data)
                chunk = upstream.send(h11.Data(data=event.data)) or b""
                if held is not None:
                    held.append(chunk)
                    held_size += len(chunk)
                    if held_size > allowance:
                        up_writer.write(b"".join(held))
                        held = None
                else:
                    up_writer.write(chunk)
                await up_writer.drain()
            elif isinstance(event, h11.EndOfMessage):
                chunk = upstream.send(h11.EndOfMessage()) or b""
                up_writer.write(b"".join(held) + chunk if held is not None else chunk)
                await up_writer.drain()
                return
            else:
                raise _Refused("the client closed the connection mid-request", 400)

    async def _relay_response(
        self,
        request: h11.Request,
        client: h11.Connection,
        writer: asyncio.StreamWriter,
        upstream: h11.Connection,
        up_reader: asyncio.StreamReader,
        ex: _Exchange,
    ) -> bool:
        """Relay the response, scrubbed; False if either side will close."""
        while True:
            try:
                event = await _next_event(upstream, up_reader, self._timeouts.idle)
            except h11.RemoteProtocolError as exc:
                raise _Refused(
                    f"the upstream response is malformed: {exc}", 502, "failed"
                ) from None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    raise _Refused("the upstream switched protocols; refused", 502, "failed")
                continue  # 1xx are hop-by-hop; 100 was answered to the client already
            if isinstance(event, h11.Response):
                break
            raise _Refused("the upstream closed without a response", 502, "failed")
        ex.status = event.status_code
        scrub = self._scrubber
        closing = event.http_version < b"1.1" or any(
            n == b"connection" and b"close" in v.lower() for n, v in event.headers
        )
        lengths = [v for n, v in event.headers if n == b"content-length"]
        no_body = request.method == b"HEAD" or event.status_code in (204, 304)
        # The body's first bytes say whether it is compressed (whatever it is labelled).
        first: list[bytes] = []
        ended = False
        while not ended and sum(map(len, first)) < SNIFF:
            data = await _body_part(upstream, up_reader, self._timeouts.idle)
            if data is None:
                ended = True
            else:
                first.append(data)
        encodings = [v for n, v in event.headers if n == b"content-encoding"]
        kind = b"".join(v for n, v in event.headers if n == b"content-type")
        try:
            mode, wbits = choose(encodings, kind, b"".join(first))
        except Unreadable as exc:
            raise _Refused(
                f"the upstream sent {exc.args[0]}; the proxy cannot scrub it, so "
                "it is refused (ask for an uncompressed or gzip body)",
                502,
                "failed",
            ) from None
        dropped = {b"transfer-encoding", b"content-length"}
        if mode == "inflate":
            dropped.add(b"content-encoding")  # the sandbox gets the decoded body
        headers = [
            (scrub.scrub(n), scrub.scrub(v))
            for n, v in event.headers.raw_items()
            if n.lower() not in _HOP_BY_HOP and n.lower() not in dropped
        ]
        # A value cut across headers (or folded, or spaced out) is whole again once the
        # values are joined without whitespace: refuse rather than pass the pieces on.
        if scrub.contains(_SPACE.sub(b"", b"".join(v for _, v in headers))):
            raise _Refused(
                "the response's headers spell a secret's value across several headers; refused",
                502,
                "failed",
            )
        if closing:
            headers.append((b"Connection", b"close"))
        if no_body:
            headers.extend((b"Content-Length", v) for v in lengths[:1])
        reason = scrub.scrub(event.reason)
        size = int(lengths[0]) if len(lengths) == 1 and lengths[0].isdigit() else -1
        if not no_body and mode == "plain" and 0 <= size <= min(BUFFER_RESPONSE, self._budget):
            self._budget -= size
            try:
                body = first
                while not ended:
                    data = await _body_part(upstream, up_reader, self._timeouts.idle)
                    if data is None:
                        ended = True
                    else:
                        body.append(data)
                clean = scrub.scrub(b"".join(body))
                del body[:]
            finally:
                self._budget += size
            headers.append((b"Content-Length", str(len(clean)).encode()))
            ex.down = len(clean)
            writer.write(
                (client.send(h11.Response(status_code=event.status_code, headers=headers,
                                          reason=reason)) or b"")
                + (client.send(h11.Data(data=clean)) or b"" if clean else b"")
                + (client.send(h11.EndOfMessage()) or b"")
            )  # fmt: skip
            await writer.drain()
            return not closing and client.our_state is h11.DONE
        writer.write(
            client.send(h11.Response(status_code=event.status_code, headers=headers, reason=reason))
            or b""
        )
        decoder = Decoder(mode, wbits, scrub.fresh())
        pending = first
        try:
            while True:
                for data in pending:
                    for clean in decoder.feed(data):
                        ex.down += len(clean)
                        writer.write(client.send(h11.Data(data=clean)) or b"")
                        await writer.drain()  # backpressure: never more than a piece queued
                if ended:
                    break
                part = await _next_event(upstream, up_reader, self._timeouts.idle)
                if isinstance(part, h11.Data):
                    pending = [part.data]
                elif isinstance(part, h11.EndOfMessage):
                    pending, ended = [], True
                else:
                    return False  # cut mid-body: the client sees the cut too
            clean = decoder.finish()
        except Unreadable as exc:
            # The head is sent: the only refusal left is to cut the body short.
            ex.cut = f"the upstream sent {exc.args[0]}; the response was cut"
            writer.transport.abort()
            return False
        if clean:
            ex.down += len(clean)
            writer.write(client.send(h11.Data(data=clean)) or b"")
        writer.write(client.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return not closing and client.our_state is h11.DONE


def _basic_credentials(value: bytes) -> bytes | None:
    """The decoded ``user:password`` of an ``Authorization: Basic`` value, if it is one."""
    scheme, _, rest = value.strip().partition(b" ")
    if scheme.lower() != b"basic" or not rest:
        return None
    try:
        return base64.b64decode(rest.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


async def _body_part(
    conn: h11.Connection, reader: asyncio.StreamReader, timeout: float
) -> bytes | None:
    """The next piece of a response body from the upstream, ``None`` at its end."""
    part = await _next_event(conn, reader, timeout)
    if isinstance(part, h11.Data):
        return bytes(part.data)
    if isinstance(part, h11.EndOfMessage):
        return None
    raise _Refused("the upstream closed mid-response", 502, "failed")


async def _next_event(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    timeout: float,
    deadline: float | None = None,
) -> object:
    """The next h11 event, reading from ``reader`` as needed: each read bounded by
    ``timeout``, and all of them by ``deadline`` (``time.monotonic()``) if given."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            wait = timeout
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError
            data = await asyncio.wait_for(reader.read(READ_SIZE), wait)
            conn.receive_data(data)
            continue
        return event


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2)


__all__ = [
    "EgressEvent",
    "EgressProxy",
    "ProxyTimeouts",
    "Resolver",
    "system_resolver",
]
