"""Reaching an upstream host: refusing what the policy does not route, and connecting once.

The proxy connects only to an address it has checked: the name is resolved once (in
a worker thread, with the proxy's ``Resolver``), every answer is checked against the
policy's private networks, and the connection goes to one of those addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Sequence

from jhansi.egress.attempts import NO_NETWORK
from jhansi.egress.events import Refused
from jhansi.egress.hostpolicy import EgressPolicy, HostPort, check_address
from jhansi.egress.relay import READ_SIZE, close_writer

Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``; called once per connection, in a worker thread."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (TCP), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def not_allowed(policy: EgressPolicy, target: HostPort) -> Refused:
    """The refusal of a ``CONNECT`` to ``target``, which ``policy`` does not route: what
    is allowed of that host instead, and the flag that would allow it."""
    if not policy.enabled:
        return Refused(
            f"{NO_NETWORK}: this run allows no host; run with --allow-host "
            f"{target.authority()} to allow this one"
        )
    host = target.host
    ports = sorted(
        {t.port for t in policy.allow if t.host == host}
        | {t.port for s in policy.secrets for t in s.targets if t.host == host}
    )
    if ports:
        shown = ", ".join(map(str, ports))
        return Refused(
            f"{host} is allowed on port {shown} only, not {target.port}; "
            f"run with --allow-host {target} if that port is intended"
        )
    if any(t.host == host for t in policy.allow_http):
        return Refused(f"{host} is allowed for plain http:// only, not CONNECT")
    return Refused(
        f"{target.authority()} is not allowed; run with --allow-host "
        f"{target.authority()} or bind a secret to it"
    )


async def open_upstream(
    target: HostPort,
    *,
    policy: EgressPolicy,
    resolver: Resolver,
    resolve_timeout: float,
    connect_timeout: float,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Resolve once, check every answer, connect to a checked address (which is returned).

    Every address the name resolves to must pass :func:`check_address` before any is
    connected to, and the connected peer must be the address chosen: the name is never
    looked up again, so a second answer (DNS rebinding) cannot redirect the connection.
    """
    if not policy.enabled:
        # Unreachable (a policy that allows nothing routes nothing): the one place
        # that resolves and connects says so itself, whatever calls it.
        raise Refused(f"{NO_NETWORK}: this run allows no host; nothing is connected to")
    if target.is_ip:
        addresses: Sequence[str] = [target.host]
    else:
        loop = asyncio.get_running_loop()
        try:
            addresses = await asyncio.wait_for(
                loop.run_in_executor(None, resolver, target.host, target.port),
                resolve_timeout,
            )
        except (TimeoutError, OSError) as exc:
            raise Refused(f"cannot resolve {target.host}: {exc}", 502, "failed") from None
        if not addresses:
            raise Refused(f"{target.host} has no address", 502, "failed")
    for address in addresses:
        problem = check_address(address, policy.allow_private)
        if problem:
            raise Refused(f"{target.host} resolved to {problem}")
    last: Exception | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, target.port, limit=READ_SIZE),
                connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            last = exc
            continue
        peer = writer.get_extra_info("peername")
        if peer is None or ipaddress.ip_address(peer[0]) != ipaddress.ip_address(address):
            await close_writer(writer)
            raise Refused(f"connected to an unexpected peer {peer}", 502, "failed")
        return reader, writer, str(address)
    raise Refused(f"cannot connect to {target}: {last}", 502, "failed")


__all__ = ["Resolver", "not_allowed", "open_upstream", "system_resolver"]
