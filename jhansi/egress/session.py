"""One run's egress: the policy from settings and flags, the proxy, and what the sandbox gets.

With no secret bound and no host allowed there is no session at all: the sandbox
has no way out, as always. Otherwise :func:`open_session` reads the secrets' values
(keyring, else the host environment), starts an :class:`EgressProxy` on a unix
socket in a private per-run directory, and says what to mount and set; the
session's ``close`` stops the proxy (the sandbox loses its way out: fail closed)
and removes the directory.
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
    from jhansi.config import Settings
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


class EgressSession:
    """A running proxy for one run, and what the sandbox needs to reach it."""

    def __init__(
        self, policy: EgressPolicy, proxy: EgressProxy, directory: Path, mounts: EgressMounts
    ) -> None:
        self.policy = policy
        self.proxy = proxy
        self.directory = directory
        self.mounts = mounts
        self._closed = False

    def scrubber(self) -> Scrubber:
        """A fresh scrubber of the real values (for one output stream)."""
        return self.proxy.scrubber().fresh()

    def record(self) -> dict[str, Any]:
        """What the ledger keeps about the run's egress settings: names and hosts only."""
        p = self.policy
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
            for s in self.policy.secrets
        ]

    def events(self) -> list[dict[str, Any]]:
        """Every connection the proxy saw (for the ``exec.end`` record)."""
        return [_integers(e.as_dict()) for e in self.proxy.events()]

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
