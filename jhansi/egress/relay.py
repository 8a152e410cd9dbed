"""One parsed HTTP request through the proxy: forwarded upstream, its response relayed back.

Both sides are framed by h11. A request body's first :data:`HOLD_BODY` bytes are held
until checked for placeholders (a secret's placeholder in a body is refused, never
sent); a response reaches the sandbox only through the run's :class:`Scrubber`, in
whatever encoding it came (:mod:`jhansi.egress.codec`). What all connections hold at
once is bounded by :data:`BUFFER_BUDGET`. Which requests may go, and where a
placeholder becomes a secret, is :mod:`jhansi.egress.substitute`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence

import h11

from jhansi.egress.codec import SNIFF, Decoder, Unreadable, choose
from jhansi.egress.events import Exchange, Refused
from jhansi.egress.hostpolicy import SecretBinding
from jhansi.egress.scrub import Scrubber

HOLD_BODY = 1024 * 1024
"""Request bodies up to this size are checked completely before anything is sent."""
BUFFER_RESPONSE = 1024 * 1024
"""Responses with a Content-Length up to this size keep one (recomputed after scrubbing)."""
BUFFER_BUDGET = 32 * 1024 * 1024
"""Bytes all connections together may hold for HOLD_BODY and BUFFER_RESPONSE; past it a
request body is checked as it streams and a response streams without a Content-Length."""
READ_SIZE = 64 * 1024
"""The most read from a socket at once."""

_SPACE = re.compile(rb"[ \t\r\n]+")

#: Headers about one connection, never forwarded either way (a request's ``Accept-Encoding``
#: is replaced with ``identity``: see :func:`jhansi.egress.substitute.check_request`).
HOP_BY_HOP = frozenset(
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


class Relay:
    """Forwards parsed requests and relays their responses, scrubbed, for one proxy.

    Shared by all the proxy's connections (on its event loop): ``budget`` is what
    they may still hold together for :data:`HOLD_BODY` and :data:`BUFFER_RESPONSE`;
    ``idle`` bounds each wait for the next bytes from either side.
    """

    def __init__(
        self,
        *,
        secrets: Sequence[SecretBinding],
        scrubber: Scrubber,
        idle: float,
        budget: int = BUFFER_BUDGET,
    ) -> None:
        self._marks = [(s.name, s.placeholder.encode()) for s in secrets]
        self._scrubber = scrubber
        self._idle = idle
        self.budget = budget

    async def send_request(
        self,
        request: h11.Request,
        headers: list[tuple[bytes, bytes]],
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: h11.Connection,
        up_writer: asyncio.StreamWriter,
        ex: Exchange,
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
        allowance = min(HOLD_BODY, max(self.budget, 0))
        self.budget -= allowance
        try:
            await self._send_body(
                client, reader, writer, upstream, up_writer, ex, held, held_size, allowance
            )
        finally:
            self.budget += allowance

    async def _send_body(
        self,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: h11.Connection,
        up_writer: asyncio.StreamWriter,
        ex: Exchange,
        held: list[bytes] | None,
        held_size: int,
        allowance: int,
    ) -> None:
        """The body: the first ``allowance`` bytes are held until checked, the rest streams."""
        marks = self._marks
        tail_size = max((len(m) for _, m in marks), default=1) - 1
        tail = b""
        if client.they_are_waiting_for_100_continue:
            writer.write(client.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        while True:
            event = await next_event(client, reader, self._idle)
            if isinstance(event, h11.Data):
                window = tail + event.data
                for name, mark in marks:
                    if mark in window:
                        if held is None:
                            up_writer.transport.abort()  # part was sent: never complete it
                        raise Refused(
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
                raise Refused("the client closed the connection mid-request", 400)

    async def relay_response(
        self,
        request: h11.Request,
        client: h11.Connection,
        writer: asyncio.StreamWriter,
        upstream: h11.Connection,
        up_reader: asyncio.StreamReader,
        ex: Exchange,
    ) -> bool:
        """Relay the response, scrubbed; False if either side will close."""
        while True:
            try:
                event = await next_event(upstream, up_reader, self._idle)
            except h11.RemoteProtocolError as exc:
                raise Refused(f"the upstream response is malformed: {exc}", 502, "failed") from None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    raise Refused("the upstream switched protocols; refused", 502, "failed")
                continue  # 1xx are hop-by-hop; 100 was answered to the client already
            if isinstance(event, h11.Response):
                break
            raise Refused("the upstream closed without a response", 502, "failed")
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
            data = await _body_part(upstream, up_reader, self._idle)
            if data is None:
                ended = True
            else:
                first.append(data)
        encodings = [v for n, v in event.headers if n == b"content-encoding"]
        kind = b"".join(v for n, v in event.headers if n == b"content-type")
        try:
            mode, wbits = choose(encodings, kind, b"".join(first))
        except Unreadable as exc:
            raise Refused(
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
            if n.lower() not in HOP_BY_HOP and n.lower() not in dropped
        ]
        # A value cut across headers (or folded, or spaced out) is whole again once the
        # values are joined without whitespace: refuse rather than pass the pieces on.
        if scrub.contains(_SPACE.sub(b"", b"".join(v for _, v in headers))):
            raise Refused(
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
        if not no_body and mode == "plain" and 0 <= size <= min(BUFFER_RESPONSE, self.budget):
            self.budget -= size
            try:
                body = first
                while not ended:
                    data = await _body_part(upstream, up_reader, self._idle)
                    if data is None:
                        ended = True
                    else:
                        body.append(data)
                clean = scrub.scrub(b"".join(body))
                del body[:]
            finally:
                self.budget += size
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
                part = await next_event(upstream, up_reader, self._idle)
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


async def _body_part(
    conn: h11.Connection, reader: asyncio.StreamReader, timeout: float
) -> bytes | None:
    """The next piece of a response body from the upstream, ``None`` at its end."""
    part = await next_event(conn, reader, timeout)
    if isinstance(part, h11.Data):
        return bytes(part.data)
    if isinstance(part, h11.EndOfMessage):
        return None
    raise Refused("the upstream closed mid-response", 502, "failed")


async def next_event(
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


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``, waiting a little for it; a failure to close is no concern here."""
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2)


__all__ = [
    "BUFFER_BUDGET",
    "BUFFER_RESPONSE",
    "HOLD_BODY",
    "HOP_BY_HOP",
    "READ_SIZE",
    "Relay",
    "close_writer",
    "next_event",
]
