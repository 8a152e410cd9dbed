"""A tunnel: TLS relayed untouched, both ways, for a host no secret is bound to.

Once the proxy has answered ``CONNECT`` with ``200``, the client's first bytes must
open a TLS record (:func:`not_tls`): only TLS is tunnelled, so plain text and HTTP/2
prior-knowledge prefaces never leave through a tunnel. Then :func:`splice` relays
bytes until either side ends; a tunnel ends when neither direction has moved a byte
for ``idle`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from jhansi.egress.relay import READ_SIZE


async def read_start(reader: asyncio.StreamReader, early: bytes, timeout: float) -> bytes | None:
    """``early`` and what follows until at least three bytes (a TLS record header's type
    and version) are in; ``None`` if the client closes first. Each read waits ``timeout``."""
    first = early
    while len(first) < 3:
        chunk = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
        if not chunk:
            return None
        first += chunk
    return first


def not_tls(first: bytes, host: str) -> str | None:
    """Why a tunnel that starts with ``first`` is refused; ``None`` when it starts TLS."""
    if first[0] == 0x16 and first[1] == 0x03 and first[2] <= 0x04:
        return None
    if first.startswith(b"PRI"):
        return f"HTTP/2 prior-knowledge through CONNECT to {host} is refused; only TLS is tunnelled"
    return (
        f"the tunnel to {host} did not start with a TLS ClientHello; "
        "only TLS is tunnelled (use https://)"
    )


class _Activity:
    """Last time any byte moved on a connection (for the idle timeout of a relay)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    counts: list[int],
    idle: float,
) -> None:
    """Relay bytes client → upstream and upstream → client until both end, or one fails.

    ``counts`` (up, down) grows as bytes pass, so it is right even when this raises
    (a timeout, a reset: re-raised once the other direction is cancelled).
    """
    activity = _Activity()
    pipes = [
        asyncio.ensure_future(_pipe(reader, up_writer, counts, 0, activity, idle)),
        asyncio.ensure_future(_pipe(up_reader, writer, counts, 1, activity, idle)),
    ]
    try:
        done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # re-raise a failure (timeout, reset) after cancelling the other
    finally:
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def _pipe(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    counts: list[int],
    slot: int,
    activity: _Activity,
    idle: float,
) -> None:
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


__all__ = ["not_tls", "read_start", "splice"]
