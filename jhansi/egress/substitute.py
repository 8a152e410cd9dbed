"""Where a placeholder may become a secret: the check of each intercepted request's head.

A secret reaches a request only as the value of a header (only its configured
header, when it names one) of a request over https to one of the hosts it is bound
to; inside ``Authorization: Basic`` credentials only when it is bound with the
``basic`` scheme. A placeholder anywhere else (the URL, a header name, another host,
plain http) refuses the request (:class:`~jhansi.egress.events.Refused`, 403), so
the sandbox can never make the proxy send a secret where it does not belong. The
request body is checked as it is sent (:mod:`jhansi.egress.relay`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

import h11

from jhansi.egress.events import Exchange, Refused
from jhansi.egress.hostpolicy import HostPort, SecretBinding
from jhansi.egress.relay import HOP_BY_HOP


def check_request(
    request: h11.Request,
    target: HostPort,
    bindings: tuple[SecretBinding, ...],
    plain: bool,
    ex: Exchange,
    *,
    secrets: Sequence[SecretBinding],
) -> list[tuple[bytes, bytes]]:
    """Validate a request and substitute placeholders; the headers to send upstream."""
    if request.method == b"CONNECT":
        raise Refused("CONNECT inside an intercepted connection is refused")
    path = request.target
    if not (path.startswith(b"/") or (path == b"*" and request.method == b"OPTIONS")):
        raise Refused("request targets must be origin-form (/path) on intercepted hosts", 400)
    authority = target.authority(default_port=80 if plain else 443)
    hosts = [v for n, v in request.headers if n == b"host"]
    if len(hosts) != 1 or hosts[0].decode("latin-1").lower().rstrip(".") not in (
        authority,
        f"{authority}:{80 if plain else 443}",
    ):
        shown = b", ".join(hosts).decode("latin-1")[:100] or "none"
        raise Refused(f"the Host header ({shown}) must be {authority}, the connected host")
    decoded_path = unquote_to_bytes(path)
    for secret in secrets:
        mark = secret.placeholder.encode()
        if mark in path or mark in decoded_path:
            raise Refused(
                f"the placeholder of {secret.name} is in the request URL; secrets are "
                "substituted only in headers"
            )
    if any(n == b"upgrade" for n, _ in request.headers):
        raise Refused("protocol upgrades (WebSocket, h2c) are refused on intercepted hosts")
    out: list[tuple[bytes, bytes]] = []
    for raw_name, value in request.headers.raw_items():  # keep the client's spelling
        name = raw_name.lower()
        value = _substitute(name, value, target, bindings, plain, ex, secrets=secrets)
        if name in HOP_BY_HOP and not (name == b"connection" and value.lower() == b"close"):
            continue
        out.append((raw_name, value))
    out.append((b"Accept-Encoding", b"identity"))
    if any(n.lower() == b"transfer-encoding" for n, _ in out):
        # Both framings at once is how requests are smuggled: send one only.
        out = [(n, v) for n, v in out if n.lower() != b"content-length"]
    return out


def _substitute(
    name: bytes,
    value: bytes,
    target: HostPort,
    bindings: tuple[SecretBinding, ...],
    plain: bool,
    ex: Exchange,
    *,
    secrets: Sequence[SecretBinding],
) -> bytes:
    """``value`` with the placeholder it may hold replaced by the secret, or :class:`Refused`."""
    for secret in secrets:
        mark = secret.placeholder.encode()
        if mark.lower() in name.lower():  # names arrive lower-cased: compare alike
            raise Refused(f"the placeholder of {secret.name} is in a header name")
        basic = _basic_credentials(value)
        in_basic = basic is not None and mark in basic
        if mark not in value and not in_basic:
            continue
        if plain:
            raise Refused(
                f"the placeholder of {secret.name} is in a plain-http request; secrets are "
                "only ever sent over https"
            )
        if secret not in bindings:
            raise Refused(
                f"the placeholder of {secret.name} is sent to {target.host}, which it is not "
                f"bound to (bound to: {', '.join(secret.hosts)})"
            )
        header = name.decode("latin-1")
        if secret.header is not None and header != secret.header:
            raise Refused(
                f"the placeholder of {secret.name} is in the {header} header; it is "
                f"substituted only in {secret.header}"
            )
        real = secret.value.encode()
        if secret.scheme == "basic":
            if basic is None or mark not in basic or mark in value:
                raise Refused(
                    f"the placeholder of {secret.name} must be inside Basic credentials "
                    "(Authorization: Basic base64(user:password))"
                )
            value = b"Basic " + base64.b64encode(basic.replace(mark, real))
        else:
            if mark not in value:
                raise Refused(
                    f"the placeholder of {secret.name} is inside Basic credentials; bind "
                    "it with the basic scheme"
                )
            value = value.replace(mark, real)
        ex.used.add(secret.name)
    return value


def _basic_credentials(value: bytes) -> bytes | None:
    """The decoded ``user:password`` of an ``Authorization: Basic`` value, if it is one."""
    scheme, _, rest = value.strip().partition(b" ")
    if scheme.lower() != b"basic" or not rest:
        return None
    try:
        return base64.b64decode(rest.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


__all__ = ["check_request"]
