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

This module holds the proxy itself (its thread and loop, each client connection
and where it is routed); the steps are beside it: :mod:`~jhansi.egress.upstream`
(resolving and connecting), :mod:`~jhansi.egress.tunnel`,
:mod:`~jhansi.egress.substitute` (placeholders in request heads),
:mod:`~jhansi.egress.relay` (requests forwarded, responses scrubbed) and
:mod:`~jhansi.egress.events` (what is recorded, and refusals).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11

from jhansi.egress.attempts import NO_NETWORK
from jhansi.egress.ca import RunCA
from jhansi.egress.events import (
    Decision,
    EgressEvent,
    EventLog,
    Exchange,
    Refused,
    path_hash,
    refusal_bytes,
)
from jhansi.egress.hostpolicy import (
    EgressPolicy,
    EgressRefusal,
    HostPort,
    SecretBinding,
    parse_target,
)
from jhansi.egress.relay import READ_SIZE, Relay, close_writer, next_event
from jhansi.egress.scrub import Scrubber
from jhansi.egress.substitute import check_request
from jhansi.egress.tunnel import not_tls, read_start, splice
from jhansi.egress.upstream import Resolver, not_allowed, open_upstream, system_resolver
from jhansi.errors import SandboxError

MAX_HEAD = 64 * 1024
"""Largest request or response head (request line and headers) accepted."""
MAX_CONNECTIONS = 256
"""Connections open at once through one run's proxy; more are refused with 503."""


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
        self._scrubber = Scrubber(
            (s.value for s in policy.secrets), {s.value: s.placeholder for s in policy.secrets}
        )
        self._relay = Relay(
            secrets=policy.secrets, scrubber=self._scrubber, idle=self._timeouts.idle
        )
        self._log = EventLog(max_events=max_events, max_connections=max_connections)
        self._literals = policy.literals()
        self._upstream_context: ssl.SSLContext | None = None
        self._peak = 0
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
        return self._log.events()

    @property
    def refused_for_cap(self) -> int:
        """Connections refused because ``max_connections`` were already open."""
        return self._log.capped

    @property
    def peak_connections(self) -> int:
        """The most connections open at once (refused ones not counted)."""
        return self._peak

    def scrubber(self) -> Scrubber:
        """A fresh scrubber for this run's secrets (for the script's stdout and stderr)."""
        return self._scrubber.fresh()

    @property
    def dropped_events(self) -> int:
        """Events not kept because ``max_events`` was reached."""
        return self._log.dropped

    def _clean(self, text: str) -> str:
        """``text`` with any real secret value scrubbed (reasons can quote upstream bytes)."""
        return self._scrubber.scrub(text.encode("utf-8", "replace")).decode("utf-8", "replace")

    def _refusal(self, reason: str, status: int) -> bytes:
        note = "jhansi: no network" if reason.startswith(NO_NETWORK + ":") else ""
        return refusal_bytes(self._clean(reason), status, note)

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
        exchange: Exchange | None = None,
        up: int = 0,
        down: int = 0,
        raw_target: str = "",
    ) -> None:
        ex = exchange or Exchange(up=up, down=down)
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
        self._log.add(event)

    # -- one client connection -------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - start_server always runs us in a task
            return
        self._tasks.add(task)
        try:
            if len(self._tasks) > self._max_connections:
                # Counted, not recorded one by one: a flood must not flood the record.
                self._log.count_capped(time.time())
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
            await close_writer(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.time()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            head = self._timeouts.head
            event = await next_event(conn, reader, head, deadline=time.monotonic() + head)
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
                raise Refused(
                    "this is jhansi's egress proxy: use CONNECT for https:// or an absolute "
                    "http:// URL",
                    400,
                )
        except Refused as refusal:
            reason = self._no_network(refusal.reason)
            self._record(
                refusal.target,
                refusal.decision,
                started=started,
                reason=reason,
                raw_target=raw,
                exchange=Exchange(method=method),
            )
            writer.write(self._refusal(reason, refusal.status))
            await writer.drain()

    async def _open_upstream(
        self, target: HostPort
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Resolve once, check every answer, connect to a checked address."""
        return await open_upstream(
            target,
            policy=self.policy,
            resolver=self._resolver,
            resolve_timeout=self._timeouts.resolve,
            connect_timeout=self._timeouts.connect,
        )

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
            raise Refused(exc.reason) from None
        route = self.policy.route(target)
        if route is None:
            refusal = not_allowed(self.policy, target)
            refusal.target = target
            raise refusal
        early = conn.trailing_data[0]
        try:
            up_reader, up_writer, address = await self._open_upstream(target)
        except Refused as refusal:
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
            await close_writer(up_writer)

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
        first = await read_start(reader, early, self._timeouts.handshake)
        if first is None:
            self._record(
                target,
                "refused",
                started=started,
                address=address,
                reason="the client closed the tunnel before sending anything",
            )
            return
        reason = not_tls(first, target.host)
        if reason is not None:
            self._record(target, "refused", started=started, address=address, reason=reason)
            writer.write(self._refusal(reason, 403))
            await writer.drain()
            return
        up_writer.write(first)
        counts = [len(first), 0]
        try:
            await splice(reader, writer, up_reader, up_writer, counts, self._timeouts.idle)
        finally:
            self._record(
                target, "tunnelled", started=started, address=address, up=counts[0], down=counts[1]
            )

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
        return await next_event(conn, reader, head, deadline=time.monotonic() + head)

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
            raise Refused(f"{raw[:80]!r} is not a valid http:// URL", 400) from None
        if "@" in parts.netloc:
            raise Refused("user information (`user@host`) is not allowed in a URL")
        authority = parts.netloc if port is not None else f"{parts.netloc}:80"
        try:
            target = parse_target(authority, literals=self._literals)
        except EgressRefusal as exc:
            raise Refused(exc.reason) from None
        if not self.policy.allows_http(target):
            shown = target.authority(default_port=80)
            if not self.policy.enabled:
                raise Refused(
                    f"{NO_NETWORK}: this run allows no host; use https://, or run with "
                    f"--allow-host http://{shown} to allow plain http to this one",
                    target=target,
                )
            raise Refused(
                f"plain http://{shown} is not allowed; use https:// or run with "
                f"--allow-host http://{shown}",
                target=target,
            )
        try:
            up_reader, up_writer, address = await self._open_upstream(target)
        except Refused as refusal:
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
            await close_writer(up_writer)

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
        ex = Exchange(method=request.method.decode("ascii", "replace"))
        ex.path_hash = path_hash(request.target)
        decision: Decision = "forwarded" if plain else "intercepted"
        try:
            headers = check_request(
                request, target, bindings, plain, ex, secrets=self.policy.secrets
            )
            await self._relay.send_request(
                request, headers, client, reader, writer, upstream, up_writer, ex
            )
            keep = await self._relay.relay_response(
                request, client, writer, upstream, up_reader, ex
            )
        except Refused as refusal:
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


__all__ = [
    "EgressProxy",
    "ProxyTimeouts",
]
