"""Talking to a Docker Engine API endpoint, through the docker SDK (``docker``).

The SDK brings registry credentials from the docker config (``auths`` and
credential helpers), TLS and API version negotiation. It is imported only when
an engine is about to be used (about 180 ms, mostly ``requests``): ``jhansi
--version`` and bwrap runs never pay for it, the helper pays once. ``ssh://``
engines go through the system's ``ssh`` (:mod:`jhansi.sandbox.sshtunnel`), not
the SDK's paramiko transport, whose import would cost every run another 200 ms.

The SDK's failures are translated here, at its boundary, into
:class:`~jhansi.errors.SandboxError` with the way out (:func:`pull_hint` and
:func:`credential_helper_hint` for images that cannot be pulled).
"""

from __future__ import annotations

import re
import socket
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from jhansi.errors import SandboxError
from jhansi.sandbox.endpoints import (
    START_HINT,
    TLS_HINT,
    UNSUPPORTED_URL_HINT,
    TlsFiles,
    docker_config_dir,
    normalize_url,
)

if TYPE_CHECKING:
    import docker

#: The API version spoken when the engine does not say (Docker 20.10 and Podman 4 speak it).
DEFAULT_API_VERSION: Final = "1.41"
_USER_AGENT: Final = "jhansi"

#: ``(stream, data)`` as demultiplexed from an attached container (stdin = 0 never comes back).
Frame = tuple[Literal["stdout", "stderr"], bytes]


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One progress event of an image pull, as the engine reports it."""

    image: str
    status: str
    layer: str = ""
    current: int | None = None
    total: int | None = None


# ------------------------------------------------------------ errors --


class EngineError(SandboxError):
    """The engine answered with an error status; ``status`` is the HTTP status code."""

    def __init__(self, message: str, *, status: int, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.status = status


class EngineTimeout(SandboxError):
    """The engine did not answer within the time allowed."""


_ENGINE_LOG_HINT: Final = (
    "Check the engine's log (Docker: `journalctl -u docker`; Podman: "
    "`journalctl --user -u podman`) and try again."
)


def _reason(exc: BaseException) -> str:
    """A short reason for a transport failure (the SDK's are nested several levels deep)."""
    text = str(exc)
    for marker, reason in (
        ("Connection refused", "connection refused"),
        ("Permission denied", "permission denied"),
        ("No such file", "no such file"),
        ("timed out", "timed out"),
        ("CERTIFICATE_VERIFY_FAILED", "the engine's TLS certificate is not trusted"),
        ("Connection aborted", "the engine closed the connection"),
    ):
        if marker in text:
            return reason
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _is_timeout(exc: BaseException) -> bool:
    """Whether a ``requests`` failure was a read or connect timeout (also when it is wrapped
    in a ``ConnectionError``, as a timeout while reading a body is)."""
    import requests.exceptions
    import urllib3.exceptions

    if isinstance(exc, requests.exceptions.Timeout):
        return True
    return any(isinstance(arg, urllib3.exceptions.TimeoutError) for arg in exc.args)


def _explanation(exc: Any) -> str:
    """The engine's own words in an SDK ``APIError`` (Docker and Podman say ``message``)."""
    text = getattr(exc, "explanation", None)
    if text:
        return str(text).strip()
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    return str(exc)


# ------------------------------------------------------------ client --


class Attachment:
    """An attached container's output (and its stdin if opened), on the hijacked connection."""

    def __init__(self, sock: Any, response: Any) -> None:
        self._io = sock
        self._response = response  # the socket lives as long as its response
        raw = getattr(sock, "_sock", sock)
        self._sock: socket.socket = raw
        # The output comes when the container writes it, for as long as it runs.
        with suppress(OSError, AttributeError):
            raw.settimeout(None)

    def frames(self) -> Iterator[Frame]:
        """Output frames until the container closes its output (it exited).

        Without a TTY the engine multiplexes the streams: 1 is stdout, 2 stderr,
        3 the engine's own error text (reported as stderr); empty frames are dropped.
        """
        from docker.utils.socket import frames_iter

        frames: Iterator[tuple[int, bytes]] = frames_iter(self._io, tty=False)  # type: ignore[no-untyped-call]
        for kind, data in frames:
            if kind not in (0, 1, 2, 3):
                raise ValueError(f"bad stream type {kind} in an attached stream")
            if kind and data:
                yield ("stdout" if kind == 1 else "stderr", bytes(data))

    def send(self, data: bytes) -> None:
        """Write to the container's stdin."""
        self._sock.sendall(data)

    def close_stdin(self) -> None:
        """Signal end of input (half-close: the output keeps coming)."""
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Drop the connection (a blocked :meth:`frames` ends)."""
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with suppress(Exception):
            self._response.close()
        with suppress(OSError):
            self._sock.close()


class EngineClient:
    """What jhansi asks of an engine, through the docker SDK's low-level ``APIClient``.

    Errors are :class:`SandboxError`: an unreachable engine says so with
    :data:`START_HINT`; an error status is an :class:`EngineError` carrying the
    engine's message. Safe to use from several threads (the output reader and
    the waiter of a run), as the SDK's connection pool is.
    """

    def __init__(self, url: str, api: docker.APIClient, *, closer: Callable[[], None]) -> None:
        self.url = url
        self.api: Any = api
        """The SDK's client; typed loosely because jhansi also uses its request helpers
        (``_get``, ``_post``, ``_url``), which its type stubs leave out."""
        # An ssh tunnel ends with its client: on close, when the client is dropped (a
        # Runner that moved on to bwrap, an MCP run done) or when the process exits.
        self._closer = weakref.finalize(self, closer)
        self.server = ""
        """The ``Server`` header of the last ping (``Docker/20.10...`` or ``Libpod/4.3.1``)."""
        self.ping_headers: dict[str, str] = {}
        """The headers of the last ping (``Api-Version``, Podman's ``Libpod-Api-Version`` …)."""

    @classmethod
    def open(cls, url: str, *, tls: TlsFiles | None = None, timeout: float = 60) -> EngineClient:
        """A client for ``url`` (nothing is sent yet); :class:`SandboxError` if it cannot be."""
        url = normalize_url(url)
        closer: Callable[[], None] = lambda: None  # noqa: E731
        base = url
        if url.startswith("ssh://"):
            from jhansi.sandbox.sshtunnel import open_tunnel

            local, closer = open_tunnel(url)
            base = f"unix://{local}"
        try:
            import docker
            import docker.errors
            from docker.tls import TLSConfig

            # A credential helper missing from PATH is reported as the pull's error
            # (see image_pull); the SDK's warning about it would only repeat it.
            warnings.filterwarnings(
                "ignore", message=r"docker-credential-\S+ not installed", category=UserWarning
            )
        except ImportError as exc:  # pragma: no cover - a dependency of jhansi
            closer()
            raise SandboxError(
                f"cannot talk to container engines: the docker SDK does not load ({exc})",
                hint="Reinstall jhansi (`uv tool install --reinstall jhansi`), or use --backend "
                "bwrap.",
            ) from None
        try:
            config: TLSConfig | bool = False
            if tls is not None:
                client_cert = (tls.cert, tls.key) if tls.cert and tls.key else None
                config = TLSConfig(client_cert=client_cert, ca_cert=tls.ca, verify=tls.verify)
            api = docker.APIClient(
                base_url=base,
                version=DEFAULT_API_VERSION,
                timeout=int(timeout),
                tls=config,
                user_agent=_USER_AGENT,
            )
            if tls is not None:
                _keep_engine_ca(api)
        except docker.errors.DockerException as exc:
            closer()
            raise SandboxError(
                f"cannot use the engine at {url}: {exc}",
                hint=TLS_HINT if tls is not None else UNSUPPORTED_URL_HINT,
            ) from None
        return cls(url, api, closer=closer)

    @property
    def api_version(self) -> str:
        """The API version spoken (negotiated by :meth:`ping`)."""
        return str(self.api.api_version)

    @contextmanager
    def _calling(self, what: str, hint: str = "", timeout: float | None = None) -> Iterator[None]:
        """Turn the SDK's failures while the engine should ``what`` into :class:`SandboxError`."""
        import docker.errors
        import requests.exceptions

        try:
            yield
        except docker.errors.APIError as exc:
            status = exc.status_code or 0
            raise EngineError(
                f"the container engine could not {what}: {_explanation(exc)}",
                status=status,
                hint=hint or _ENGINE_LOG_HINT,
            ) from None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            if _is_timeout(exc):
                limit = f" within {timeout:g} s" if timeout is not None else " in time"
                raise EngineTimeout(
                    f"the container engine at {self.url} did not {what}{limit}",
                    hint="The engine may be overloaded or stuck: check it (`docker info`), "
                    "then try again.",
                ) from None
            tls = isinstance(exc, requests.exceptions.SSLError)
            raise SandboxError(
                f"the container engine at {self.url} failed to {what}: {_reason(exc)}",
                hint=TLS_HINT if tls else START_HINT,
            ) from None
        except OSError as exc:
            raise SandboxError(
                f"the container engine at {self.url} failed to {what}: {_reason(exc)}",
                hint=START_HINT,
            ) from None

    # -- identity ---------------------------------------------------------------

    def ping(self, timeout: float = 10) -> dict[str, str]:
        """Check that an engine answers; negotiate the API version; return the headers.

        The version is the lower of the engine's and the SDK's (as the docker CLI
        negotiates), or :data:`DEFAULT_API_VERSION` when the engine does not say.
        Asking ``/_ping`` rather than ``/version`` (the SDK's ``version="auto"``)
        because Podman takes 0.4 s to answer ``/version``.
        """
        from docker.constants import DEFAULT_DOCKER_API_VERSION, MINIMUM_DOCKER_API_VERSION
        from docker.utils import version_lt

        with self._calling("answer a ping", timeout=timeout):
            response = self.api.get(self.api._url("/_ping", versioned_api=False), timeout=timeout)
            self.api._raise_for_status(response)
        headers = {k.lower(): v for k, v in response.headers.items()}
        version = headers.get("api-version", "")
        if version and all(part.isdigit() for part in version.split(".")):
            if version_lt(DEFAULT_DOCKER_API_VERSION, version):
                version = DEFAULT_DOCKER_API_VERSION
            if not version_lt(version, MINIMUM_DOCKER_API_VERSION):
                self.api._version = version
        self.server = headers.get("server", "")
        self.ping_headers = headers
        return headers

    def info(self) -> dict[str, Any]:
        """``GET /info``."""
        with self._calling("describe itself"):
            doc: dict[str, Any] = self.api.info()
        return doc

    def libpod_info(self) -> dict[str, Any] | None:
        """Podman's own ``/libpod/info`` (rootless, id mappings, cgroups); ``None`` elsewhere."""
        with self._calling("describe itself"):
            response = self.api._get(self.api._url("/libpod/info"))
        if response.status_code != 200:
            return None
        doc = response.json()
        return doc if isinstance(doc, dict) else None

    # -- images -----------------------------------------------------------------

    def image_inspect(self, image: str) -> dict[str, Any] | None:
        """The engine's description of ``image``, or ``None`` when it does not have it."""
        import docker.errors

        try:
            with self._calling(f"inspect the image {image}"):
                try:
                    doc: dict[str, Any] = self.api.inspect_image(image)
                except docker.errors.NotFound:
                    return None
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return doc

    def image_pull(
        self, image: str, progress: Callable[[PullProgress], None] | None = None
    ) -> None:
        """Pull ``image`` with the user's registry credentials, reporting each progress event.

        The SDK sends the credentials the docker config has for the image's registry
        (``auths``, ``credsStore``, ``credHelpers``). The engine reports a failure
        inside the stream (with status 200), so the stream is read to the end and
        every event checked.
        """
        import docker.errors

        hint = pull_hint(image)
        try:
            with self._calling(f"pull the image {image}", hint=hint):
                try:
                    # The credentials are looked up (a helper run) before anything is sent.
                    events = self.api.pull(image, stream=True, decode=True)
                except docker.errors.DockerException as exc:
                    helper = _credential_helper_failure(exc)
                    if helper is None:
                        raise
                    raise SandboxError(
                        f"cannot pull the image {image}: the docker config's credential "
                        f"helper failed: {helper}",
                        hint=credential_helper_hint(image, helper),
                    ) from None
                for event in events:
                    if event.get("error") or event.get("errorDetail"):
                        detail = event.get("errorDetail") or {}
                        message = str(event.get("error") or detail.get("message") or event)
                        raise SandboxError(
                            f"cannot pull the image {image}: {message.strip()}",
                            hint=pull_hint(image, message),
                        )
                    if progress is not None:
                        detail = event.get("progressDetail") or {}
                        progress(
                            PullProgress(
                                image=image,
                                status=str(
                                    event.get("status") or event.get("stream") or ""
                                ).strip(),
                                layer=str(event.get("id") or ""),
                                current=detail.get("current"),
                                total=detail.get("total"),
                            )
                        )
        except EngineError as exc:
            message = exc.message.partition(": ")[2] or exc.message
            raise SandboxError(
                f"cannot pull the image {image}: {message}", hint=pull_hint(image, message)
            ) from None

    # -- containers -------------------------------------------------------------

    def container_create(self, config: Mapping[str, Any], *, name: str | None = None) -> str:
        """``POST /containers/create`` with ``config`` as is; the new container's id."""
        with self._calling("create the sandbox container"):
            doc = self.api.create_container_from_config(dict(config), name=name)
        return str(doc["Id"])

    def container_start(self, container: str) -> None:
        """``POST /containers/{id}/start``."""
        with self._calling("start the sandbox container"):
            self.api.start(container)

    def container_wait(self, container: str, *, timeout: float) -> dict[str, Any] | None:
        """Block until the container stops: ``{"StatusCode": N, ...}``; ``None`` after ``timeout``
        seconds (the engine sends nothing until the container stops, so a read timeout bounds
        the whole wait)."""
        try:
            with self._calling("wait for the sandbox container", timeout=timeout):
                doc: dict[str, Any] = self.api.wait(container, timeout=max(timeout, 0.001))
        except EngineTimeout:
            return None
        return doc

    def container_kill(self, container: str, signal: str = "KILL") -> None:
        """Send ``signal``; a container that is already gone or stopped is not an error."""
        try:
            with self._calling("kill the sandbox container"):
                self.api.kill(container, signal)
        except EngineError as exc:
            if exc.status not in (404, 409):
                raise

    def container_remove(self, container: str, *, force: bool = True) -> None:
        """Remove the container with its anonymous volumes; gone already is fine."""
        try:
            with self._calling("remove the sandbox container"):
                self.api.remove_container(container, v=True, force=force)
        except EngineError as exc:
            if exc.status != 404:
                raise

    def container_inspect(self, container: str) -> dict[str, Any]:
        """``GET /containers/{id}/json``."""
        with self._calling("inspect the sandbox container"):
            doc: dict[str, Any] = self.api.inspect_container(container)
        return doc

    def containers(self, *, labels: Sequence[str], all: bool = True) -> list[dict[str, Any]]:
        """Containers carrying every one of ``labels`` (``key`` or ``key=value``)."""
        with self._calling("list containers"):
            doc = self.api.containers(all=all, filters={"label": list(labels)})
        return list(doc or [])

    def attach(self, container: str, *, stdin: bool = False) -> Attachment:
        """Attach to the container's output (and stdin): call before starting it, so no
        output is lost. The connection is hijacked after the engine's ``101`` answer; the
        response is kept with the socket, whose life it holds."""
        params = {"stream": 1, "stdout": 1, "stderr": 1, "stdin": 1 if stdin else 0}
        with self._calling("attach to the sandbox container"):
            response = self.api._post(
                self.api._url("/containers/{0}/attach", container),
                params=params,
                stream=True,
                headers={"Connection": "Upgrade", "Upgrade": "tcp"},
            )
            sock = self.api._get_raw_response_socket(response)
        return Attachment(sock, response)

    def close(self) -> None:
        """Close the SDK's connections (and an ssh tunnel)."""
        with suppress(Exception):
            self.api.close()
        self._closer()


def _keep_engine_ca(api: Any) -> None:
    """Verify the engine with its own CA even when ``REQUESTS_CA_BUNDLE`` is set.

    ``requests`` lets that variable (or ``CURL_CA_BUNDLE``) replace a session's
    ``verify`` on every request, so an engine's CA from DOCKER_CERT_PATH or a
    context would be ignored and a valid engine reported untrusted.
    """
    merge = api.merge_environment_settings

    def merged(*args: Any, **kwargs: Any) -> Any:
        settings = merge(*args, **kwargs)
        settings["verify"] = api.verify
        return settings

    api.merge_environment_settings = merged


def _credential_helper_failure(exc: BaseException) -> str | None:
    """What went wrong with a credential helper (``docker-credential-NAME exited with
    "..."``), when the SDK's ``exc`` is that; ``None`` for any other failure."""
    from docker.credentials.errors import StoreError

    cause = exc.__cause__
    if not isinstance(cause, StoreError):
        return None
    text = str(cause).strip().removeprefix("Credentials store ").removesuffix(".")
    exited = re.fullmatch(r'(\S+) exited with "(.*)"', text, re.DOTALL)
    if exited is None:  # "docker-credential-NAME not installed or not available in PATH"
        return " ".join(text.split())
    said = " ".join(exited[2].split())
    return f'{exited[1]} exited with "{said}"' if said else f"{exited[1]} failed and said nothing"


def _registry(image: str) -> str:
    """The registry an image reference names (``docker.io`` when it names none)."""
    first = image.split("/", 1)[0] if "/" in image else ""
    return first if any(c in first for c in ".:") or first == "localhost" else "docker.io"


def credential_helper_hint(image: str, failure: str) -> str:
    """What to do when the docker config's credential helper fails for ``image``."""
    registry = _registry(image)
    found = re.search(r"docker-credential-\S+", failure)
    program = found.group(0) if found else "the credential helper"
    return (
        f"Check that `{program}` works (`echo {registry} | {program} get`) or log in again "
        f"(`docker login {registry}`); jhansi uses the credentials of the docker config "
        f"({docker_config_dir() / 'config.json'}). Or choose another image with --image."
    )


def pull_hint(image: str, message: str = "") -> str:
    """What to do when ``image`` cannot be pulled: log in when the registry wants
    credentials, else check the name (the backend adds bubblewrap, which needs no image)."""
    registry = _registry(image)
    lowered = message.lower()
    if any(
        word in lowered
        for word in ("unauthorized", "authentication required", "no basic auth", "denied")
    ) or lowered.startswith("credentials"):
        return (
            f"Log in to {registry} (`docker login {registry}`: jhansi uses the docker config's "
            f"credentials, {docker_config_dir() / 'config.json'}), choose another image with "
            "--image."
        )
    return (
        f"Check the image name and your network, then pull it yourself (`docker pull "
        f"{image}` or `podman pull {image}`), or choose another with --image."
    )
