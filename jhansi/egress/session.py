"""One run's egress: the policy from settings and flags, the proxy, and what the sandbox gets.

:func:`open_session` reads the secrets' values (keyring, else the host environment),
starts an :class:`EgressProxy` on a unix socket in a private per-run directory, and
says what to mount and set; the session's ``close`` stops the proxy (the sandbox
loses its way out: fail closed) and removes the directory.

With no secret bound and no host allowed, :func:`open_no_network` gives the sandbox
the same socket and proxy variables, but the proxy behind them allows nothing: it
refuses every request before any lookup or connection and records its destination,
so that jhansi can say what the script tried and how to allow it. It is built only
when the sandbox first connects (:class:`LazyProxy`): until then a run pays for one
listening socket and one waiting thread, not for the proxy's imports, its event loop
or a CA (there is none: nothing is intercepted).
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jhansi.errors import UsageError

if TYPE_CHECKING:
    import socket

    from jhansi.config import Settings
    from jhansi.egress.events import EgressEvent
    from jhansi.egress.hostpolicy import EgressPolicy
    from jhansi.egress.proxy import EgressProxy
    from jhansi.egress.sandboxside import EgressMounts
    from jhansi.egress.scrub import Scrubber
    from jhansi.paths import Paths

#: How ``--secret`` is written (for hints).
SECRET_FORM = "--secret NAME@HOST[,HOST...] (or NAME, bound in [secrets.NAME] hosts)"  # noqa: S105


@dataclass(frozen=True, slots=True)
class SecretRequest:
    """A secret a run asks for: its name, and the hosts given with it (if any)."""

    name: str
    hosts: tuple[str, ...] = ()


def parse_secret_flag(text: str) -> SecretRequest:
    """``NAME@host[,host…]`` or ``NAME`` (``--secret``)."""
    from jhansi.egress.secrets import NAME_PATTERN

    name, at, hosts = text.partition("@")
    name = name.strip()
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"--secret {text!r}: {name!r} is not a valid name",
            hint=f"Write {SECRET_FORM}; the name becomes a variable in the sandbox.",
        )
    chosen = tuple(h.strip() for h in hosts.split(",") if h.strip()) if at else ()
    if at and not chosen:
        raise UsageError(f"--secret {text!r} names no host", hint=f"Write {SECRET_FORM}.")
    return SecretRequest(name, chosen)


def build_policy(
    settings: Settings,
    *,
    secrets: Sequence[SecretRequest] = (),
    allow_hosts: Sequence[str] = (),
    values: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    paths: Paths | None = None,
) -> EgressPolicy | None:
    """The run's egress policy, or ``None`` when nothing may leave the sandbox.

    Secrets bound in ``[secrets.NAME]`` apply to every run; ``--secret NAME@HOST``
    binds (or re-binds) one for this run. ``values`` replaces the secret store (tests).
    """
    from jhansi.egress.hostpolicy import (
        EgressPolicy,
        SecretBinding,
        parse_host_rule,
        parse_http_rule,
    )

    wanted: dict[str, tuple[tuple[str, ...], str | None, str | None]] = {
        name: (conf.hosts, conf.header, conf.scheme) for name, conf in settings.secrets.items()
    }
    for request in secrets:
        configured = wanted.get(request.name)
        if request.hosts:
            header, scheme = (configured[1], configured[2]) if configured else (None, None)
            wanted[request.name] = (request.hosts, header, scheme)
        elif configured is None:
            raise UsageError(
                f"--secret {request.name}: no hosts are bound to it",
                hint=f"Write --secret {request.name}@api.example.com, or bind it in "
                f'[secrets.{request.name}] hosts = ["api.example.com"].',
            )
    allow = (*settings.network.allow, *allow_hosts)
    if not wanted and not allow:
        return None
    plain = tuple(parse_http_rule(a) for a in allow if a.lower().startswith("http://"))
    tunnelled = tuple(parse_host_rule(a) for a in allow if not a.lower().startswith("http://"))
    private = tuple(ipaddress.ip_network(n, strict=False) for n in settings.network.allow_private)
    if values is None:
        from jhansi.egress.secrets import SecretStore
        from jhansi.paths import Paths

        store = SecretStore.from_paths(paths or Paths.from_environment(), environ=environ)
        values = {name: store.get(name) for name in wanted}
    bindings = tuple(
        SecretBinding(
            name=name,
            value=values[name],
            hosts=hosts,
            header=header,
            scheme="basic" if scheme == "basic" else None,
        )
        for name, (hosts, header, scheme) in sorted(wanted.items())
    )
    upstream = Path(settings.network.upstream_ca) if settings.network.upstream_ca else None
    if upstream is not None and not upstream.is_file():
        raise UsageError(
            f"[network] upstream_ca {upstream} is not a file",
            hint="Name a PEM file of CA certificates, or unset it.",
        )
    return EgressPolicy(
        allow=tunnelled,
        secrets=bindings,
        allow_private=private,
        allow_http=plain,
        upstream_ca=upstream,
    )


class LazyProxy:
    """A proxy that allows nothing, built only when the sandbox first connects.

    The unix socket is bound and listening at once (the sandbox binds it in before it
    starts); one thread waits for the first connection, then builds the
    :class:`EgressProxy` and hands it the listening socket: connections made meanwhile
    wait in its backlog, so none is lost. Should building it fail, the socket is closed
    (the sandbox's connections end: fail closed) and the failure is an event.
    """

    def __init__(self, path: Path, lifetime: timedelta) -> None:
        import os
        import socket
        import threading

        from jhansi.errors import SandboxError

        self._path = path
        self._lifetime = lifetime
        self._proxy: EgressProxy | None = None
        self._failure = ""
        self._failed_at = 0.0
        self._state = "waiting"  # → building → serving | failed, or → stopped
        self._lock = threading.Lock()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise SandboxError(
                f"the egress proxy cannot listen on {path}: {exc.strerror or exc}",
                hint="check that the directory exists and is writable",
            ) from None
        self._listener: socket.socket | None = listener
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="jhansi-egress", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import select

        listener = self._listener
        if listener is None:  # pragma: no cover - set before the thread starts
            return
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            with self._lock:
                if self._state != "waiting":
                    return  # stopped
                if listener.fileno() in ready:
                    self._state = "building"
                    break
        try:
            self._serve(listener)
        except BaseException as exc:  # recorded as an event; the library never prints
            import time

            with self._lock:
                self._failure = f"the egress proxy could not start: {type(exc).__name__}: {exc}"
                self._failed_at = time.time()
                self._state = "failed"
                self._listener = None
            listener.close()

    def _serve(self, listener: socket.socket) -> None:
        from jhansi.egress.hostpolicy import EgressPolicy
        from jhansi.egress.proxy import EgressProxy

        proxy = EgressProxy(EgressPolicy(), lifetime=self._lifetime)
        proxy.serve_listener(listener, self._path)
        with self._lock:
            self._proxy = proxy
            self._state = "serving"
            self._listener = None  # the proxy's now

    def _settle(self, timeout: float = 10.0) -> None:
        """Wait for a proxy being built (so that what reached it is in its events)."""
        with self._lock:
            building = self._state == "building"
        if building:
            self._thread.join(timeout)

    @property
    def started(self) -> bool:
        """Whether the sandbox connected at least once (and the proxy was built)."""
        self._settle()
        return self._proxy is not None

    @property
    def failure(self) -> tuple[str, float] | None:
        """Why the proxy could not be built, and when (``None``: it was not, or it was)."""
        self._settle()
        return (self._failure, self._failed_at) if self._failure else None

    def events(self) -> tuple[EgressEvent, ...]:
        """What the proxy saw (nothing if the sandbox never connected)."""
        self._settle()
        return self._proxy.events() if self._proxy is not None else ()

    @property
    def dropped_events(self) -> int:
        """Events past the proxy's cap (see :attr:`EgressProxy.dropped_events`)."""
        self._settle()
        return self._proxy.dropped_events if self._proxy is not None else 0

    def scrubber(self) -> Scrubber:
        """No secrets, nothing to scrub."""
        from jhansi.egress.scrub import Scrubber

        return Scrubber((), {})

    def stop(self) -> None:
        """Stop waiting (or stop the proxy) and close the socket; idempotent."""
        import contextlib
        import os

        with self._lock:
            waiting = self._state == "waiting"
            if waiting:
                self._state = "stopped"
        if waiting:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
        self._thread.join(10)
        with self._lock:
            proxy, listener = self._proxy, self._listener
            self._listener = None
        if proxy is not None:
            proxy.stop()
        if listener is not None:
            listener.close()
        for fd in self._wake:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake = (-1, -1)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


class EgressSession:
    """A running proxy for one run, and what the sandbox needs to reach it."""

    def __init__(
        self,
        policy: EgressPolicy | None,
        proxy: EgressProxy | LazyProxy,
        directory: Path,
        mounts: EgressMounts,
    ) -> None:
        self.policy = policy
        """``None`` for a run that allows no host (its proxy only refuses and records)."""
        self.proxy = proxy
        self.directory = directory
        self.mounts = mounts
        self._closed = False

    @property
    def no_network(self) -> bool:
        """Whether this run allows no host (the proxy only refuses and records)."""
        return self.policy is None or not self.policy.enabled

    @property
    def socket(self) -> Path:
        """The proxy's unix socket on the host."""
        from jhansi.egress.sandboxside import SOCKET_NAME

        return self.directory / SOCKET_NAME

    @property
    def has_secrets(self) -> bool:
        """Whether a secret is bound (then the run's output is scrubbed of its value)."""
        return self.policy is not None and bool(self.policy.secrets)

    def scrubber(self) -> Scrubber:
        """A fresh scrubber of the real values (for one output stream)."""
        return self.proxy.scrubber().fresh()

    def record(self) -> dict[str, Any]:
        """What the ledger keeps about the run's egress settings: names and hosts only."""
        p = self.policy
        if p is None:
            return {"allow": [], "allow_http": [], "allow_private": [], "upstream_ca": None}
        return {
            "allow": [str(h) for h in p.allow],
            "allow_http": [str(h) for h in p.allow_http],
            "allow_private": [str(n) for n in p.allow_private],
            "upstream_ca": str(p.upstream_ca) if p.upstream_ca else None,
        }

    def secrets(self) -> list[dict[str, Any]]:
        """The secrets bound for the run: name, hosts, header, scheme — never a value."""
        return [
            {"name": s.name, "hosts": list(s.hosts), "header": s.header, "scheme": s.scheme}
            for s in (self.policy.secrets if self.policy is not None else ())
        ]

    def events(self) -> list[dict[str, Any]]:
        """Every connection the proxy saw (for the ``exec.end`` record)."""
        found = [_integers(e.as_dict()) for e in self.proxy.events()]
        failure = self.proxy.failure if isinstance(self.proxy, LazyProxy) else None
        if failure is not None:
            reason, when = failure
            found.append(
                {
                    "host": "", "port": 0, "address": None, "method": None,
                    "path_hash": None, "status": None, "bytes_up": 0, "bytes_down": 0,
                    "decision": "failed", "reason": reason[:300], "secrets": [],
                    "started_ms": round(when * 1000),
                }
            )  # fmt: skip
        return found

    def dropped_events(self) -> int:
        """Connections not in :meth:`events` because the proxy's event cap was reached
        (counted in ``exec.end`` as ``egress_dropped``: never silently lost)."""
        return self.proxy.dropped_events

    def close(self) -> None:
        """Stop the proxy and remove the run's directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.proxy.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _integers(event: dict[str, Any]) -> dict[str, Any]:
    """Ledger records hold no floats (RFC 8785 exactness): times in whole milliseconds."""
    out: dict[str, Any] = {}
    for key, value in event.items():
        if isinstance(value, float):
            out[f"{key}_ms" if not key.endswith("_ms") else key] = round(value * 1000)
        else:
            out[key] = value
    return out


#: A unix socket's path must fit in ``sun_path`` (108 bytes on Linux, with its NUL).
_SUN_PATH_MAX = 107
#: ``egress-<24 hex>/proxy.sock`` below the parent, and its ``/``.
_SOCKET_TAIL = len("/egress-") + 24 + len("/proxy.sock")


def _socket_parent(runtime_dir: Path) -> Path:
    """``runtime_dir``, or a short private directory when a socket there would not fit.

    A deep ``JHANSI_HOME`` makes the socket's path longer than the kernel accepts; then
    the per-run directory goes in ``<tmp>/jhansi-<uid>`` instead (mode 0711, like the
    runtime directory an engine's user may need to pass through: it cannot be listed,
    and each run's directory in it has an unguessable name).
    """
    import os
    import stat
    import tempfile

    from jhansi.errors import SandboxError

    if len(os.fsencode(str(runtime_dir))) + _SOCKET_TAIL <= _SUN_PATH_MAX:
        return runtime_dir
    short = Path(tempfile.gettempdir()) / f"jhansi-{os.getuid()}"
    try:
        short.mkdir(mode=0o711, exist_ok=True)
        st = short.lstat()
    except OSError as exc:
        raise SandboxError(
            f"cannot make {short} for the egress proxy's socket: {exc.strerror or exc}",
            hint="Use a shorter JHANSI_HOME (a unix socket's path is limited to 107 bytes).",
        ) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SandboxError(
            f"{short} is not a private directory of this user",
            hint=f"Remove {short} (something else made it), or use a shorter JHANSI_HOME.",
        )
    return short


def open_session(policy: EgressPolicy, *, runtime_dir: Path, lifetime: timedelta) -> EgressSession:
    """Start the proxy for ``policy`` on a socket in a fresh private directory."""
    from jhansi.egress.proxy import EgressProxy
    from jhansi.egress.sandboxside import SOCKET_NAME, EgressMounts, make_egress_dir

    directory = make_egress_dir(_socket_parent(runtime_dir))
    proxy = EgressProxy(policy, lifetime=lifetime)
    try:
        proxy.start_unix(directory / SOCKET_NAME)
        mounts = EgressMounts.prepare(
            directory, ca_pem=proxy.ca_pem, placeholders=proxy.placeholders
        )
    except BaseException:
        proxy.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return EgressSession(policy, proxy, directory, mounts)


def open_no_network(*, runtime_dir: Path, lifetime: timedelta) -> EgressSession:
    """The session of a run that allows no host: a socket and proxy variables for the
    sandbox, and a proxy behind them, built on first use, that refuses and records."""
    from jhansi.egress.sandboxside import SOCKET_NAME, EgressMounts, make_egress_dir

    directory = make_egress_dir(_socket_parent(runtime_dir))
    try:
        proxy = LazyProxy(directory / SOCKET_NAME, lifetime)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        mounts = EgressMounts.prepare_no_network(directory)
    except BaseException:
        proxy.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return EgressSession(None, proxy, directory, mounts)
