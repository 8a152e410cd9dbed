"""Finding a Docker Engine API endpoint, telling what is behind it, and talking to it.

One code path serves rootful Docker, rootless Docker and Podman's
Docker-compatible socket. Which one answered — and whether it is rootless — is
part of every run's record, because "rootless" is a security property an
auditor asks about.

The client is a small HTTP/1.1 implementation on a plain socket rather than
the ``docker`` SDK (about 240 ms to import) or even :mod:`http.client` (about
30 ms, for :mod:`email` and :mod:`ssl`): ``jhansi run`` is benchmarked against a
raw ``docker run``, and each request here is one short exchange on a fresh
connection (``Connection: close``), so all it needs is a status line, headers,
and a body framed by ``Content-Length``, chunked encoding or end of stream.
Attaching takes over ("hijacks") the connection for the container's
multiplexed output, which is easier to get right on our own socket than on
:mod:`http.client`'s buffered one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote, urlencode

from jhansi.errors import SandboxError

NO_ENGINE_RUNNING = "no container engine is running"
"""How the error that no endpoint answered begins (``auto`` then uses bubblewrap)."""

START_HINT = (
    "Start the engine (Docker: `sudo systemctl start docker`, rootless Docker: "
    "`systemctl --user start docker`, Podman: `systemctl --user start podman.socket`), "
    "or point DOCKER_HOST / [sandbox] engine_url at a running one."
)
UNSUPPORTED_URL_HINT = (
    "jhansi talks to a local engine only: use its unix socket (unix:///var/run/docker.sock, "
    "unix://$XDG_RUNTIME_DIR/podman/podman.sock) or a plain tcp:// address; for a remote "
    "engine, forward its socket first (`ssh -nNT -L /tmp/engine.sock:/var/run/docker.sock "
    "HOST`) and use unix:///tmp/engine.sock."
)
#: The API version spoken when the engine does not say (Docker 20.10 and Podman 4 speak it).
DEFAULT_API_VERSION: Final = "1.41"
_DEFAULT_TCP_PORT: Final = 2375
_MAX_HEADER_BYTES: Final = 64 * 1024
_USER_AGENT: Final = "jhansi"

#: ``(stream, data)`` as demultiplexed from an attached container (stdin = 0 never comes back).
Frame = tuple[Literal["stdout", "stderr"], bytes]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address to try, and why it is on the list."""

    url: str
    reason: str
    explicit: bool
    """Named by the user (config or DOCKER_HOST): never silently replaced by another."""


@dataclass(frozen=True, slots=True)
class IdMapping:
    """One range of a user namespace's uid or gid map (``container_id`` → ``host_id``)."""

    container_id: int
    host_id: int
    size: int


def map_id(mappings: Sequence[IdMapping], container_id: int) -> int | None:
    """The host id that ``container_id`` is inside a user namespace, or ``None`` if unmapped."""
    for m in mappings:
        if m.container_id <= container_id < m.container_id + m.size:
            return m.host_id + container_id - m.container_id
    return None


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What answered at an endpoint."""

    url: str
    name: str
    """``docker`` or ``podman``."""
    version: str
    api_version: str
    rootless: bool
    runtimes: tuple[str, ...]
    default_runtime: str
    security_options: tuple[str, ...]
    cgroup_version: str
    uid_map: tuple[IdMapping, ...] = ()
    """Podman: how container uids map to host uids (empty for rootful engines and Docker)."""
    gid_map: tuple[IdMapping, ...] = ()
    cgroup_controllers: tuple[str, ...] | None = None
    """The cgroup controllers the engine can use for limits; ``None`` when it does not say
    (Docker, which reports the individual limits instead)."""
    limits: frozenset[str] = field(default_factory=frozenset)
    """Which of ``memory``, ``swap``, ``pids``, ``cpu`` the engine can enforce with cgroups."""
    init_binary: str = ""
    """The engine's init for ``--init`` (``docker-init``), empty when it has none."""

    @property
    def description(self) -> str:
        """One line such as ``podman 4.3.1 (rootless)``."""
        return f"{self.name} {self.version} ({'rootless' if self.rootless else 'rootful'})"

    @property
    def engine_uid(self) -> int | None:
        """The host uid the engine's own processes run as, when a user namespace says so."""
        return map_id(self.uid_map, 0)


# ----------------------------------------------------------------- addresses --


@dataclass(frozen=True, slots=True)
class Address:
    """Where a socket connects: a unix socket path, or a TCP host and port."""

    family: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0


def parse_url(url: str, environ: Mapping[str, str] | None = None) -> Address:
    """The socket address of an engine URL; :class:`SandboxError` for what jhansi cannot use.

    ``unix://PATH`` and plain ``tcp://HOST[:PORT]`` (also ``http://``) are used as given.
    ``ssh://``, TLS (``https://``, or ``DOCKER_TLS_VERIFY`` set) and Windows pipes are
    refused with the way round it, never silently downgraded to something else.
    """
    env = os.environ if environ is None else environ
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url.startswith("/"):
            return Address("unix", path=url)
        raise SandboxError(
            f"cannot use the engine address {url!r}: not a URL", hint=UNSUPPORTED_URL_HINT
        )
    scheme = scheme.lower()
    if scheme == "unix":
        path = rest if rest.startswith("/") else "/" + rest
        return Address("unix", path=path)
    if scheme in ("tcp", "http"):
        if env.get("DOCKER_TLS_VERIFY"):
            raise SandboxError(
                f"cannot use the engine at {url}: DOCKER_TLS_VERIFY asks for TLS, which jhansi "
                "does not speak",
                hint=UNSUPPORTED_URL_HINT,
            )
        hostport = rest.split("/", 1)[0]
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
        host = host.strip("[]") or "localhost"
        try:
            number = int(port) if port else _DEFAULT_TCP_PORT
        except ValueError:
            raise SandboxError(
                f"cannot use the engine address {url!r}: bad port {port!r}",
                hint=UNSUPPORTED_URL_HINT,
            ) from None
        return Address("tcp", host=host, port=number)
    what = {
        "ssh": "ssh:// engines",
        "https": "TLS (https://)",
        "npipe": "Windows named pipes",
        "fd": "systemd socket activation (fd://)",
    }.get(scheme, f"{scheme}:// addresses")
    raise SandboxError(
        f"cannot use the engine at {url}: jhansi does not support {what}",
        hint=UNSUPPORTED_URL_HINT,
    )


# ---------------------------------------------------------------- HTTP/1.1 ---


class EngineError(SandboxError):
    """The engine answered with an error status; ``status`` is the HTTP status code."""

    def __init__(self, message: str, *, status: int, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.status = status


class EngineTimeout(SandboxError):
    """The engine did not answer within the time allowed."""


class _Reader:
    """Buffered reads from a socket; what is buffered after the headers is kept.

    With a ``deadline`` (``time.monotonic()`` seconds) every read waits only for
    what is left of it, so that a timeout bounds the whole exchange, not each read.
    """

    def __init__(
        self, sock: socket.socket, data: bytes = b"", *, deadline: float | None = None
    ) -> None:
        self.sock = sock
        self.buffer = bytearray(data)
        self.deadline = deadline

    def _fill(self) -> bool:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_until(self, marker: bytes, limit: int) -> bytes:
        """Everything up to and including ``marker`` (``ValueError`` past ``limit`` bytes)."""
        start = 0
        while True:
            index = self.buffer.find(marker, start)
            if index >= 0:
                end = index + len(marker)
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise ValueError("response header too long")
            start = max(0, len(self.buffer) - len(marker) + 1)
            if not self._fill():
                raise ConnectionError("the engine closed the connection mid-response")

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes."""
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError("the engine closed the connection mid-response")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_some(self) -> bytes:
        """Whatever is buffered, or the next chunk from the socket; ``b""`` at the end."""
        if not self.buffer and not self._fill():
            return b""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


@dataclass(frozen=True, slots=True)
class Response:
    """A response whose body has been read completely."""

    status: int
    reason: str
    headers: Mapping[str, str]
    """Header names in lower case (a repeated header keeps its last value)."""
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body) if self.body else None


def build_request(
    method: str,
    target: str,
    *,
    host: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The bytes of one HTTP/1.1 request (``target`` already %-encoded)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {_USER_AGENT}"]
    merged = {"Connection": "close", **(headers or {})}
    if body is not None:
        merged.setdefault("Content-Type", "application/json")
        merged["Content-Length"] = str(len(body))
    elif method in ("POST", "PUT"):
        merged["Content-Length"] = "0"
    lines += [f"{name}: {value}" for name, value in merged.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Status, reason and headers (lower-case names) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def iter_body(reader: _Reader, status: int, headers: Mapping[str, str]) -> Iterator[bytes]:
    """The body's bytes as they arrive, decoding chunked transfer encoding."""
    if status in (204, 304) or 100 <= status < 200:
        return
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = reader.read_until(b"\r\n", _MAX_HEADER_BYTES)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Trailers (none expected) end with an empty line.
                while reader.read_until(b"\r\n", _MAX_HEADER_BYTES) != b"\r\n":
                    pass
                return
            yield reader.read_exact(size)
            reader.read_exact(2)
    elif "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            data = reader.read_some()
            if not data:
                raise ConnectionError("the engine closed the connection mid-response")
            if len(data) > remaining:
                reader.buffer[:0] = data[remaining:]
                data = data[:remaining]
            remaining -= len(data)
            yield data
    else:
        while data := reader.read_some():
            yield data


class FrameDecoder:
    """Splits an attached container's output into its stdout and stderr frames.

    Without a TTY the engine multiplexes both streams on one connection: each
    frame is an 8-byte header — the stream (1 stdout, 2 stderr, 3 the engine's
    own error text; 0 would be stdin), three zero bytes, the payload length as
    a big-endian uint32 — followed by the payload. Frames may be split across
    or packed into reads arbitrarily; :meth:`feed` buffers what is incomplete.
    """

    HEADER: Final = struct.Struct(">BxxxL")

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``; stream 3 is reported as stderr."""
        self._buffer += data
        frames: list[Frame] = []
        offset = 0
        size = self.HEADER.size
        while len(self._buffer) - offset >= size:
            kind, length = self.HEADER.unpack_from(self._buffer, offset)
            if kind not in (0, 1, 2, 3):
                raise ValueError(f"bad stream type {kind} in an attached stream")
            if len(self._buffer) - offset - size < length:
                break
            payload = bytes(self._buffer[offset + size : offset + size + length])
            offset += size + length
            if kind and payload:
                frames.append(("stdout" if kind == 1 else "stderr", payload))
        del self._buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered (non-zero at the end means truncation)."""
        return len(self._buffer)


class Attachment:
    """A hijacked ``attach`` connection: the container's output, and its stdin if opened."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self._sock = sock
        self._reader = _Reader(sock, leftover)
        self._decoder = FrameDecoder()

    def frames(self) -> Iterator[Frame]:
        """Output frames until the container closes its output (it exited)."""
        while data := self._reader.read_some():
            yield from self._decoder.feed(data)

    def send(self, data: bytes) -> None:
        """Write to the container's stdin."""
        self._sock.sendall(data)

    def close_stdin(self) -> None:
        """Signal end of input (half-close: the output keeps coming)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Drop the connection (a blocked :meth:`frames` ends)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One progress event of an image pull, as the engine reports it."""

    image: str
    status: str
    layer: str = ""
    current: int | None = None
    total: int | None = None


def iter_json_stream(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """JSON objects from a stream of concatenated (usually newline-separated) documents."""
    decoder = json.JSONDecoder()
    buffer = ""
    pending = b""
    for chunk in chunks:
        pending += chunk
        try:
            buffer += pending.decode("utf-8")
            pending = b""
        except UnicodeDecodeError:
            continue  # a multi-byte character split across chunks
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                value, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                break
            buffer = buffer[end:]
            if isinstance(value, dict):
                yield value
    if buffer.strip():
        raise ValueError(f"truncated JSON in the engine's stream: {buffer[:80]!r}")


def split_reference(image: str) -> tuple[str, str]:
    """``(repository, tag-or-digest)`` for the pull API; a bare name means ``latest``.

    Never leaves the tag empty: the API pulls *every* tag of a repository then.
    """
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    for marker in ("Connection refused", "Permission denied", "No such file", "timed out"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _engine_message(body: bytes) -> str:
    """The engine's own error text (Docker and Podman both use ``message``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500]
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("cause") or doc).strip()
    return str(doc)


class EngineClient:
    """A Docker Engine API client for what jhansi needs, on the standard library.

    Each call opens its own connection, so one client may be used from several
    threads (the output reader and the waiter of a run). Errors are
    :class:`SandboxError`: an unreachable engine says so with :data:`START_HINT`;
    an error status is an :class:`EngineError` carrying the engine's message.
    """

    def __init__(
        self, url: str, *, timeout: float = 60, api_version: str = DEFAULT_API_VERSION
    ) -> None:
        self.url = url
        self.address = parse_url(url)
        self.timeout = timeout
        self.api_version = api_version
        self.server = ""
        """The ``Server`` header of the last ping (``Docker/20.10...`` or ``Libpod/4.3.1``)."""
        self.ping_headers: dict[str, str] = {}
        """The headers of the last ping (``Api-Version``, Podman's ``Libpod-Api-Version`` …)."""

    # -- transport --------------------------------------------------------------

    def _connect(self, timeout: float | None) -> socket.socket:
        address = self.address
        try:
            if address.family == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(address.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((address.host, address.port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise SandboxError(
                f"no container engine answers at {self.url}: {_reason(exc)}", hint=START_HINT
            ) from None
        return sock

    def target(
        self, path: str, query: Mapping[str, object] | None = None, *, versioned: bool = True
    ) -> str:
        """The request target: ``/v{api}{path}?{query}`` (``None`` values are left out)."""
        prefix = f"/v{self.api_version}" if versioned else ""
        items = {
            key: ("1" if value is True else "0" if value is False else str(value))
            for key, value in (query or {}).items()
            if value is not None
        }
        return prefix + path + ("?" + urlencode(items) if items else "")

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None,
        body: object,
        timeout: float | None,
        whole: bool = True,
        headers: Mapping[str, str] | None = None,
        versioned: bool = True,
    ) -> tuple[socket.socket, _Reader, int, str, dict[str, str]]:
        """Send a request and read the response head.

        ``timeout`` bounds the whole exchange when ``whole`` (a deadline), else each read.
        """
        timeout = self.timeout if timeout is None else timeout
        data = None if body is None else json.dumps(body).encode()
        request = build_request(
            method,
            self.target(path, query, versioned=versioned),
            host="docker" if self.address.family == "unix" else self.address.host,
            body=data,
            headers=headers,
        )
        deadline = time.monotonic() + timeout if whole else None
        sock = self._connect(timeout)
        try:
            sock.sendall(request)
            reader = _Reader(sock, deadline=deadline)
            status, reason, head = parse_head(reader.read_until(b"\r\n\r\n", _MAX_HEADER_BYTES))
        except BaseException as exc:
            sock.close()
            raise self._translate(exc, method, path, timeout) from None
        return sock, reader, status, reason, head

    def _translate(
        self, exc: BaseException, method: str, path: str, timeout: float
    ) -> BaseException:
        """A transport failure as a :class:`SandboxError` (anything else unchanged)."""
        if isinstance(exc, TimeoutError):
            return EngineTimeout(
                f"the container engine at {self.url} did not answer {method} {path} "
                f"within {timeout:g} s",
                hint="The engine may be overloaded or stuck: check it (`docker info`), "
                "then try again.",
            )
        if isinstance(exc, OSError | ValueError):
            return SandboxError(
                f"the container engine at {self.url} failed to answer {method} {path}: "
                f"{_reason(exc)}",
                hint=START_HINT,
            )
        return exc

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: object = None,
        timeout: float | None = None,
        versioned: bool = True,
    ) -> Response:
        """One request, its body read completely; :class:`EngineTimeout` after ``timeout``."""
        sock, reader, status, reason, headers = self._send(
            method, path, query=query, body=body, timeout=timeout, versioned=versioned
        )
        try:
            content = b"".join(iter_body(reader, status, headers))
        except BaseException as exc:
            raise self._translate(
                exc, method, path, self.timeout if timeout is None else timeout
            ) from None
        finally:
            sock.close()
        return Response(status, reason, headers, content)

    def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        hint: str = "",
        query: Mapping[str, object] | None = None,
        body: object = None,
        timeout: float | None = None,
        ok: Sequence[int] = (200, 201, 204, 304),
        versioned: bool = True,
    ) -> Response:
        """:meth:`request`, with any status outside ``ok`` raised as :class:`EngineError`.

        ``what`` completes "the engine could not …" in the message.
        """
        response = self.request(
            method, path, query=query, body=body, timeout=timeout, versioned=versioned
        )
        if response.status not in ok:
            raise self.error(response, what, hint)
        return response

    def error(self, response: Response, what: str, hint: str = "") -> EngineError:
        """The :class:`EngineError` for a failed ``response``."""
        message = _engine_message(response.body) or f"HTTP {response.status} {response.reason}"
        default_hint = (
            "Check the engine's log (Docker: `journalctl -u docker`; Podman: "
            "`journalctl --user -u podman`) and try again."
        )
        return EngineError(
            f"the container engine could not {what}: {message}",
            status=response.status,
            hint=hint or default_hint,
        )

    # -- identity ---------------------------------------------------------------

    def ping(self) -> dict[str, str]:
        """Check that an engine answers; adopt its API version; return the response headers.

        The version is the one the engine announces (as the ``docker`` SDK's
        ``version="auto"`` does), or :data:`DEFAULT_API_VERSION` when it does not.
        """
        response = self.call("GET", "/_ping", what="answer a ping", versioned=False)
        version = response.headers.get("api-version", "")
        if version and all(part.isdigit() for part in version.split(".")):
            self.api_version = version
        self.server = response.headers.get("server", "")
        self.ping_headers = dict(response.headers)
        return self.ping_headers

    def version(self) -> dict[str, Any]:
        """``GET /version``."""
        doc: dict[str, Any] = self.call("GET", "/version", what="report its version").json()
        return doc

    def info(self) -> dict[str, Any]:
        """``GET /info``."""
        doc: dict[str, Any] = self.call("GET", "/info", what="describe itself").json()
        return doc

    def libpod_info(self) -> dict[str, Any] | None:
        """Podman's own ``/libpod/info`` (rootless, id mappings, cgroups); ``None`` elsewhere."""
        response = self.request("GET", "/libpod/info")
        if response.status != 200:
            return None
        doc = response.json()
        return doc if isinstance(doc, dict) else None

    # -- images -----------------------------------------------------------------

    def image_inspect(self, image: str) -> dict[str, Any] | None:
        """``GET /images/{name}/json``, or ``None`` when the engine does not have it."""
        response = self.request("GET", f"/images/{quote(image, safe='')}/json")
        if response.status == 404:
            return None
        if response.status != 200:
            raise self.error(response, f"inspect the image {image}")
        doc: dict[str, Any] = response.json()
        return doc

    def image_pull(
        self, image: str, progress: Callable[[PullProgress], None] | None = None
    ) -> None:
        """Pull ``image``, reporting each progress event; :class:`SandboxError` if it fails.

        The engine reports a failure inside the stream (with status 200), so the
        stream is read to the end and every event checked.
        """
        name, tag = split_reference(image)
        hint = (
            f"Check the image name and your network, then pull it yourself (`docker pull "
            f"{image}` or `podman pull {image}`), or choose another with --image."
        )
        sock, reader, status, reason, headers = self._send(
            "POST",
            "/images/create",
            query={"fromImage": name, "tag": tag},
            body=None,
            timeout=300,
            whole=False,
        )
        try:
            if status != 200:
                content = b"".join(iter_body(reader, status, headers))
                raise EngineError(
                    f"cannot pull the image {image}: "
                    f"{_engine_message(content) or f'HTTP {status} {reason}'}",
                    status=status,
                    hint=hint,
                )
            for event in iter_json_stream(iter_body(reader, status, headers)):
                if event.get("error") or event.get("errorDetail"):
                    detail = event.get("errorDetail") or {}
                    message = str(event.get("error") or detail.get("message") or event)
                    raise SandboxError(
                        f"cannot pull the image {image}: {message.strip()}", hint=hint
                    )
                if progress is not None:
                    detail = event.get("progressDetail") or {}
                    progress(
                        PullProgress(
                            image=image,
                            status=str(event.get("status") or event.get("stream") or "").strip(),
                            layer=str(event.get("id") or ""),
                            current=detail.get("current"),
                            total=detail.get("total"),
                        )
                    )
        except (OSError, ValueError) as exc:
            raise SandboxError(
                f"cannot pull the image {image}: {_reason(exc)}", hint=hint
            ) from None
        finally:
            sock.close()

    # -- containers -------------------------------------------------------------

    def container_create(self, config: Mapping[str, Any], *, name: str | None = None) -> str:
        """``POST /containers/create``; the new container's id."""
        response = self.call(
            "POST",
            "/containers/create",
            query={"name": name},
            body=dict(config),
            what="create the sandbox container",
        )
        doc = response.json()
        return str(doc["Id"])

    def container_start(self, container: str) -> None:
        """``POST /containers/{id}/start``."""
        self.call("POST", f"/containers/{container}/start", what="start the sandbox container")

    def container_wait(self, container: str, *, timeout: float) -> dict[str, Any] | None:
        """Block until the container stops: ``{"StatusCode": N, ...}``; ``None`` after ``timeout``
        seconds (the whole wait, not each read)."""
        try:
            response = self.call(
                "POST",
                f"/containers/{container}/wait",
                what="wait for the sandbox container",
                timeout=max(timeout, 0.001),
            )
        except EngineTimeout:
            return None
        doc: dict[str, Any] = response.json()
        return doc

    def container_kill(self, container: str, signal: str = "KILL") -> None:
        """Send ``signal``; a container that is already gone or stopped is not an error."""
        self.call(
            "POST",
            f"/containers/{container}/kill",
            query={"signal": signal},
            what="kill the sandbox container",
            ok=(200, 204, 404, 409),
        )

    def container_remove(self, container: str, *, force: bool = True) -> None:
        """``DELETE /containers/{id}`` with its anonymous volumes; gone already is fine."""
        self.call(
            "DELETE",
            f"/containers/{container}",
            query={"force": force, "v": True},
            what="remove the sandbox container",
            ok=(200, 204, 404),
        )

    def container_inspect(self, container: str) -> dict[str, Any]:
        """``GET /containers/{id}/json``."""
        doc: dict[str, Any] = self.call(
            "GET", f"/containers/{container}/json", what="inspect the sandbox container"
        ).json()
        return doc

    def containers(self, *, labels: Sequence[str], all: bool = True) -> list[dict[str, Any]]:
        """Containers carrying every one of ``labels`` (``key`` or ``key=value``)."""
        doc = self.call(
            "GET",
            "/containers/json",
            query={"all": all, "filters": json.dumps({"label": list(labels)})},
            what="list containers",
        ).json()
        return list(doc or [])

    def attach(self, container: str, *, stdin: bool = False) -> Attachment:
        """Attach to the container's output (and stdin): call before starting it, so no
        output is lost. The connection is hijacked after the engine's ``101`` answer."""
        sock, reader, status, reason, headers = self._send(
            "POST",
            f"/containers/{container}/attach",
            query={"stream": True, "stdout": True, "stderr": True, "stdin": stdin},
            body=None,
            timeout=self.timeout,
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        )
        if status not in (101, 200):
            try:
                content = b"".join(iter_body(reader, status, headers))
            except (OSError, ValueError):
                content = b""
            finally:
                sock.close()
            raise self.error(
                Response(status, reason, headers, content), "attach to the sandbox container"
            )
        # The output comes when the container writes it, for as long as it runs.
        sock.settimeout(None)
        return Attachment(sock, bytes(reader.buffer))

    def close(self) -> None:
        """Nothing to release (each request has its own connection); kept for symmetry."""


# ------------------------------------------------------------------ discovery --


def candidate_endpoints(
    configured: str | None, environ: Mapping[str, str] | None = None
) -> list[Endpoint]:
    """Where to look for an engine, most specific first."""
    env = os.environ if environ is None else environ
    if configured:
        return [Endpoint(configured, "[sandbox] engine_url", explicit=True)]
    if env.get("DOCKER_HOST"):
        return [Endpoint(env["DOCKER_HOST"], "DOCKER_HOST", explicit=True)]
    found = [Endpoint("unix:///var/run/docker.sock", "Docker's default socket", explicit=False)]
    runtime_dir = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    found.append(
        Endpoint(f"unix://{runtime_dir}/docker.sock", "rootless Docker's socket", explicit=False)
    )
    found.append(
        Endpoint(
            f"unix://{runtime_dir}/podman/podman.sock", "rootless Podman's socket", explicit=False
        )
    )
    if os.getuid() == 0:
        found.append(
            Endpoint("unix:///run/podman/podman.sock", "rootful Podman's socket", explicit=False)
        )
    return found


def connect(url: str, *, timeout: float = 10) -> EngineClient:
    """A client for ``url``; raises :class:`SandboxError` when nothing answers there."""
    client = EngineClient(url, timeout=timeout)
    address = client.address
    if address.family == "unix" and not Path(address.path).exists():
        raise SandboxError(
            f"no container engine at {url}: the socket does not exist", hint=START_HINT
        )
    try:
        client.ping()
    except EngineTimeout:
        raise SandboxError(
            f"no container engine answers at {url}: timed out", hint=START_HINT
        ) from None
    except EngineError as exc:
        raise SandboxError(
            f"no container engine answers at {url}: {exc.message}", hint=START_HINT
        ) from None
    # Later calls (a pull, a create on a busy engine) may take longer than a ping should.
    client.timeout = max(timeout, 60)
    return client


def _mappings(raw: object) -> tuple[IdMapping, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(
        IdMapping(int(m["container_id"]), int(m["host_id"]), int(m["size"]))
        for m in raw
        if isinstance(m, dict)
    )


def describe(client: EngineClient, url: str) -> EngineInfo:
    """Identify the engine behind ``client`` (pinged already, or pinged here).

    Few and cheap calls, because every run pays for them: Docker says all in
    ``/info`` (its ``/version`` asks containerd and is slower). Podman 4's
    answers take about 0.3 s each here, so its two run concurrently: its
    Docker-compatible ``/info`` omits rootless and claims every cgroup limit
    even where none can be set, while its own ``/libpod/info`` tells the truth
    (rootless, id mappings, cgroup controllers).
    """
    headers = client.ping_headers or client.ping()
    is_podman = "libpod-api-version" in headers or client.server.lower().startswith("libpod")
    libpod: dict[str, Any] = {}
    if is_podman:
        results: dict[str, Any] = {}

        def fetch_libpod() -> None:
            try:
                results["libpod"] = client.libpod_info()
            except BaseException as exc:  # re-raised in the calling thread
                results["error"] = exc

        worker = threading.Thread(target=fetch_libpod, name="jhansi-libpod-info", daemon=True)
        worker.start()
        info = client.info()
        worker.join()
        if "error" in results:
            raise results["error"]
        libpod = results.get("libpod") or {}
    else:
        info = client.info()
    security = tuple(str(s) for s in info.get("SecurityOptions") or ())
    rootless = any("rootless" in s for s in security)
    runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
    limits = {
        name
        for name, key in (
            ("memory", "MemoryLimit"),
            ("swap", "SwapLimit"),
            ("pids", "PidsLimit"),
            ("cpu", "CpuCfsQuota"),
        )
        if info.get(key)
    }
    uid_map: tuple[IdMapping, ...] = ()
    gid_map: tuple[IdMapping, ...] = ()
    controllers: tuple[str, ...] | None = None
    engine_version = str(info.get("ServerVersion") or "unknown")
    if is_podman:
        engine_version = str((libpod.get("version") or {}).get("Version") or engine_version)
        host = libpod.get("host") or {}
        rootless = rootless or bool((host.get("security") or {}).get("rootless"))
        id_mappings = host.get("idMappings") or {}
        uid_map = _mappings(id_mappings.get("uidmap"))
        gid_map = _mappings(id_mappings.get("gidmap"))
        if "cgroupControllers" in host:
            controllers = tuple(str(c) for c in host.get("cgroupControllers") or ())
            limits = {
                name
                for name, controller in (
                    ("memory", "memory"),
                    ("swap", "memory"),
                    ("pids", "pids"),
                    ("cpu", "cpu"),
                )
                if controller in controllers
            }
    return EngineInfo(
        url=url,
        name="podman" if is_podman else "docker",
        version=engine_version,
        api_version=client.api_version,
        rootless=rootless,
        runtimes=runtimes,
        default_runtime=str(info.get("DefaultRuntime") or ""),
        security_options=security,
        cgroup_version=str(info.get("CgroupVersion") or ""),
        uid_map=uid_map,
        gid_map=gid_map,
        cgroup_controllers=controllers,
        limits=frozenset(limits),
        init_binary=str(info.get("InitBinary") or ""),
    )


def find_engine(
    configured: str | None, environ: Mapping[str, str] | None = None
) -> tuple[EngineClient, EngineInfo]:
    """The first endpoint that answers, identified; :class:`SandboxError` if none does."""
    failures: list[str] = []
    for endpoint in candidate_endpoints(configured, environ):
        try:
            client = connect(endpoint.url)
        except SandboxError as exc:
            if endpoint.explicit:
                raise SandboxError(
                    f"{exc.message} (from {endpoint.reason})", hint=exc.hint or START_HINT
                ) from None
            failures.append(endpoint.url)
            continue
        return client, describe(client, endpoint.url)
    raise SandboxError(
        f"{NO_ENGINE_RUNNING} (tried " + ", ".join(failures) + ")",
        hint=START_HINT,
    )
