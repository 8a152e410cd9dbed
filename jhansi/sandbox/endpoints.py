"""Where jhansi looks for a Docker Engine API endpoint, as the docker CLI does.

``[sandbox] engine_url``, then ``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY``/
``DOCKER_CERT_PATH``), then the docker context (``DOCKER_CONTEXT``, or the one
``docker context use`` chose), then the usual sockets. Only the standard library
is used here, so that finding no engine costs nothing: this module never imports
the docker SDK, which :mod:`jhansi.sandbox.engine_client` loads when an engine
is about to be used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jhansi.errors import SandboxError

START_HINT = (
    "Start the engine (Docker: `sudo systemctl start docker`, rootless Docker: "
    "`systemctl --user start docker`, Podman: `systemctl --user start podman.socket`), "
    "or point DOCKER_HOST, DOCKER_CONTEXT or [sandbox] engine_url at a running one."
)
UNSUPPORTED_URL_HINT = (
    "Use a unix socket (unix:///var/run/docker.sock), tcp://HOST:PORT (with DOCKER_TLS_VERIFY "
    "and DOCKER_CERT_PATH for TLS), ssh://USER@HOST, or a docker context (`docker context use`)."
)
TLS_HINT = (
    "Check DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem) or the context's TLS files "
    "(`docker context inspect`), and that the engine's certificate names the host."
)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """TLS for a ``tcp://`` engine: the CA to verify it with, and the client's certificate."""

    ca: str | None
    cert: str | None
    key: str | None
    verify: bool


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address to try, and why it is on the list."""

    url: str
    reason: str
    explicit: bool
    """Named by the user (config, DOCKER_HOST, a context): never silently replaced by another."""
    tls: TlsFiles | None = None


def docker_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The docker CLI's configuration directory: ``DOCKER_CONFIG``, else ``~/.docker``."""
    env = os.environ if environ is None else environ
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    return Path(env.get("HOME") or Path.home()) / ".docker"


def current_context(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The docker context chosen, and by what (``DOCKER_CONTEXT`` or ``docker context use``);
    ``None`` for the default context."""
    env = os.environ if environ is None else environ
    name, reason = env.get("DOCKER_CONTEXT", ""), "DOCKER_CONTEXT"
    if not name:
        config = docker_config_dir(env) / "config.json"
        try:
            doc = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        name = str(doc.get("currentContext") or "") if isinstance(doc, dict) else ""
        reason = f"the docker context chosen with `docker context use` ({config})"
    else:
        reason = f"DOCKER_CONTEXT={name}"
    if not name or name == "default":
        return None
    return name, reason


def context_endpoint(name: str, reason: str, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The engine endpoint of the docker context ``name`` (its TLS files included).

    Read as the docker CLI stores it: ``contexts/meta/SHA256(name)/meta.json`` and
    ``contexts/tls/SHA256(name)/docker/{ca,cert,key}.pem`` under the config directory.
    """
    base = docker_config_dir(environ) / "contexts"
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = base / "meta" / digest / "meta.json"
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SandboxError(
            f"the docker context {name!r} ({reason}) does not exist",
            hint="List the contexts (`docker context ls`), then choose one "
            "(`docker context use NAME`) or unset DOCKER_CONTEXT.",
        ) from None
    except (OSError, ValueError) as exc:
        raise SandboxError(
            f"cannot read the docker context {name!r} ({meta}): {exc}",
            hint="Recreate it (`docker context rm` and `docker context create`).",
        ) from None
    endpoint = ((doc.get("Endpoints") or {}) if isinstance(doc, dict) else {}).get("docker") or {}
    host = str(endpoint.get("Host") or "")
    if not host:
        raise SandboxError(
            f"the docker context {name!r} ({reason}) names no docker endpoint",
            hint="Give it one (`docker context update NAME --docker host=unix:///var/run/"
            "docker.sock`), or choose another context.",
        )
    tls_dir = base / "tls" / digest / "docker"
    files = {n: tls_dir / f"{n}.pem" for n in ("ca", "cert", "key")}
    present = {n: str(p) for n, p in files.items() if p.is_file()}
    tls = None
    if present and not host.startswith(("unix:", "ssh:", "npipe:")):
        tls = TlsFiles(
            present.get("ca"),
            present.get("cert"),
            present.get("key"),
            verify=not endpoint.get("SkipTLSVerify"),
        )
    return Endpoint(host, f"docker context {name!r}, from {reason}", explicit=True, tls=tls)


def env_tls(environ: Mapping[str, str] | None = None) -> TlsFiles | None:
    """TLS as the docker CLI's variables ask for it (``DOCKER_TLS_VERIFY``, ``DOCKER_TLS``,
    ``DOCKER_CERT_PATH``), or ``None``."""
    env = os.environ if environ is None else environ
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    if not (verify or env.get("DOCKER_TLS") or env.get("DOCKER_CERT_PATH")):
        return None
    cert_path = Path(env.get("DOCKER_CERT_PATH") or docker_config_dir(env))
    files = {n: cert_path / f"{n}.pem" for n in ("ca", "cert", "key")}
    pair = files["cert"].is_file() and files["key"].is_file()
    return TlsFiles(
        str(files["ca"]) if files["ca"].is_file() else None,
        str(files["cert"]) if pair else None,
        str(files["key"]) if pair else None,
        verify=verify,
    )


def candidate_endpoints(
    configured: str | None, environ: Mapping[str, str] | None = None
) -> list[Endpoint]:
    """Where to look for an engine, most specific first."""
    env = os.environ if environ is None else environ
    if configured:
        tls = env_tls(env) if configured.startswith("tcp:") else None
        return [Endpoint(configured, "[sandbox] engine_url", explicit=True, tls=tls)]
    if env.get("DOCKER_HOST"):
        host = env["DOCKER_HOST"]
        tls = env_tls(env) if host.startswith("tcp:") else None
        return [Endpoint(host, "DOCKER_HOST", explicit=True, tls=tls)]
    chosen = current_context(env)
    if chosen is not None:
        return [context_endpoint(*chosen, environ=env)]
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


def normalize_url(url: str) -> str:
    """``url`` as the SDK takes it; :class:`SandboxError` for what jhansi cannot use.

    ``unix://PATH`` (or a bare absolute path), ``tcp://`` (``http://``, ``https://``)
    and ``ssh://`` are used; Windows pipes and ``fd://`` are refused with the way round.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url.startswith("/"):
            return "unix://" + url
        raise SandboxError(
            f"cannot use the engine address {url!r}: not a URL", hint=UNSUPPORTED_URL_HINT
        )
    scheme = scheme.lower()
    if scheme == "unix":
        return "unix://" + (rest if rest.startswith("/") else "/" + rest)
    if scheme in ("tcp", "http", "https", "ssh"):
        return f"{scheme}://{rest}"
    what = {"npipe": "Windows named pipes", "fd": "systemd socket activation (fd://)"}.get(
        scheme, f"{scheme}:// addresses"
    )
    raise SandboxError(
        f"cannot use the engine at {url}: jhansi does not support {what}",
        hint=UNSUPPORTED_URL_HINT,
    )
