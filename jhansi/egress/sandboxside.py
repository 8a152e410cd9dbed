"""The sandbox's side of egress: what a run mounts, sets and tells ``entry.py``.

The sandbox has no network but loopback. The host proxy listens on a unix
socket in a per-run directory; that socket is bound into the sandbox, and the
forwarder in ``entry.py`` relays ``127.0.0.1:PORT`` to it. The usual proxy
variables point every HTTP client there, and the CA variables point at a bundle
of the host's trusted roots plus the run's own CA (which signs the certificates
of intercepted hosts). Each secret's name is set to its placeholder, which the
proxy swaps for the real value on requests to the hosts the secret is bound to.

Modes, and why they are safe. The runner makes the directory 0700 with an
unguessable name inside jhansi's private runtime directory, and the proxy binds
``proxy.sock`` in it. :meth:`EgressMounts.prepare` then makes the directory
0711, the socket 0666 and the bundle 0644, because the sandbox's user is, on
the host, often neither jhansi's user nor root: host uid 1000 under rootful
Docker, a subordinate uid under rootless Podman (whose engine, another user in
CI, must also traverse to the files to bind them). The socket and the bundle
are bound one by one, so the sandbox never sees the directory; on the host the
way to them goes through jhansi's own 0700 runtime directory (or, where an
engine's user must pass, a 0711 one that cannot be listed), and the per-run
directory itself cannot be listed either: reaching the socket takes its random
name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from jhansi.errors import SandboxError, UsageError
from jhansi.paths import ensure_private_dir
from jhansi.sandbox.interface import ENTRY_DIR, Mount

#: Where the egress files appear inside the sandbox.
EGRESS_DIR: Final = f"{ENTRY_DIR}/egress"
SOCKET_NAME: Final = "proxy.sock"
BUNDLE_NAME: Final = "ca-bundle.pem"
SOCKET_TARGET: Final = f"{EGRESS_DIR}/{SOCKET_NAME}"
BUNDLE_TARGET: Final = f"{EGRESS_DIR}/{BUNDLE_NAME}"
#: The forwarder's port inside the sandbox: its loopback is its own, so a fixed one is safe.
EGRESS_PORT: Final = 3128

PROXY_VARS: Final = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)
NO_PROXY_VARS: Final = ("NO_PROXY", "no_proxy")
#: Empty: every name goes to the host proxy, which decides. A name such as ``localhost``
#: is the proxy's to resolve and check (an API on the host's loopback, allowed through
#: ``allow_private``, is a real need); a bypass list would send it to the sandbox's own
#: loopback instead, where nothing can answer.
NO_PROXY: Final = ""
#: With no host allowed there is no host loopback to reach either: the sandbox's own
#: loopback stays direct (a script talking to a server it started itself), and every
#: other name goes to the proxy, which refuses and records it.
NO_PROXY_NO_NETWORK: Final = "localhost,127.0.0.1,::1,127.0.0.0/8"
CA_VARS: Final = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
)
RESERVED: Final = frozenset(PROXY_VARS + NO_PROXY_VARS + CA_VARS)

#: Where distributions keep their bundle of trusted roots (Debian, Fedora, SUSE, Alpine/BSD).
SYSTEM_BUNDLES: Final = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
)
_PEM_CERT: Final = b"-----BEGIN CERTIFICATE-----"


def find_system_roots() -> Path | None:
    """The host's bundle of trusted root certificates, if it has one.

    OpenSSL's default file first (what Python's ``ssl`` trusts here), then the
    distributions' usual places, then ``certifi``'s bundle when it is installed.
    """
    import ssl

    paths = ssl.get_default_verify_paths()
    candidates: list[str] = [p for p in (paths.cafile, paths.openssl_cafile) if p]
    candidates += SYSTEM_BUNDLES
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:
        pass
    for candidate in candidates:
        path = Path(candidate)
        try:
            with path.open("rb") as handle:
                if _PEM_CERT in handle.read(1 << 16):
                    return path.resolve()
        except OSError:
            continue
    return None


def make_egress_dir(parent: Path) -> Path:
    """A new directory for one run's egress files: mode 0700, a random 96-bit name.

    ``parent`` (jhansi's runtime directory) is created 0700 if missing and left as
    it is otherwise.
    """
    ensure_private_dir(parent)
    directory = parent / f"egress-{secrets.token_hex(12)}"
    directory.mkdir(mode=0o700)
    return directory


@dataclass(frozen=True, slots=True)
class EgressMounts:
    """What a sandbox needs to reach the host proxy: add each part to the spec.

    ``mounts`` to the spec's mounts, ``env`` to its environment, ``entry_args``
    to ``entry.py``'s arguments (before ``--``).
    """

    mounts: tuple[Mount, ...]
    env: Mapping[str, str]
    entry_args: tuple[str, ...]
    bundle: Path | None
    """The CA bundle on the host (inside: :data:`BUNDLE_TARGET`); ``None`` with no network."""
    roots: Path | None
    """The host bundle of trusted roots it starts with (``None``: none was found, so only
    intercepted hosts verify)."""

    @classmethod
    def prepare(
        cls,
        directory: Path,
        *,
        ca_pem: bytes,
        placeholders: Mapping[str, str],
        port: int = EGRESS_PORT,
        roots: Path | None = None,
    ) -> EgressMounts:
        """Write the CA bundle into ``directory`` (which holds the proxy's ``proxy.sock``),
        open the modes the sandbox's user needs, and say how to mount and use them.

        ``roots`` is the bundle of trusted roots to include (default:
        :func:`find_system_roots`).
        """
        socket_path = _check_socket(directory)
        if _PEM_CERT not in ca_pem:
            raise SandboxError(
                "the egress proxy's CA is not a PEM certificate",
                hint="This is a bug in jhansi: please report it.",
            )
        env = _environment(placeholders, port)
        roots = roots if roots is not None else find_system_roots()
        bundle = directory / BUNDLE_NAME
        _write_bundle(bundle, roots, ca_pem)
        socket_path.chmod(0o666)
        directory.chmod(0o711)
        return cls(
            mounts=(
                Mount(socket_path, SOCKET_TARGET, read_only=True, kind="socket"),
                Mount(bundle, BUNDLE_TARGET, read_only=True),
            ),
            env=env,
            entry_args=("--egress-socket", SOCKET_TARGET, "--egress-port", str(port)),
            bundle=bundle,
            roots=roots,
        )

    @classmethod
    def prepare_no_network(cls, directory: Path, *, port: int = EGRESS_PORT) -> EgressMounts:
        """The same for a run that allows no host: the socket and the proxy variables
        only (no CA bundle, no CA variables: nothing is ever tunnelled or intercepted)."""
        socket_path = _check_socket(directory)
        env = dict.fromkeys(PROXY_VARS, f"http://127.0.0.1:{port}")
        env.update(dict.fromkeys(NO_PROXY_VARS, NO_PROXY_NO_NETWORK))
        socket_path.chmod(0o666)
        directory.chmod(0o711)
        return cls(
            mounts=(Mount(socket_path, SOCKET_TARGET, read_only=True, kind="socket"),),
            env=env,
            entry_args=("--egress-socket", SOCKET_TARGET, "--egress-port", str(port)),
            bundle=None,
            roots=None,
        )


def _check_socket(directory: Path) -> Path:
    """The proxy's socket in ``directory``, checked (the directory too)."""
    socket_path = directory / SOCKET_NAME
    _check_directory(directory)
    try:
        is_socket = stat.S_ISSOCK(socket_path.lstat().st_mode)
    except FileNotFoundError:
        is_socket = False
    if not is_socket:
        raise SandboxError(
            f"the egress proxy's socket {socket_path} is missing",
            hint="This is a bug in jhansi: the proxy must listen before the sandbox starts.",
        )
    return socket_path


def _check_directory(directory: Path) -> None:
    """The run's directory must be a real directory of ours that nobody else can enter yet."""
    try:
        st = directory.lstat()
    except FileNotFoundError:
        raise SandboxError(
            f"the egress directory {directory} does not exist",
            hint="This is a bug in jhansi: please report it.",
        ) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SandboxError(
            f"the egress directory {directory} is not a private directory of this user",
            hint="Something else made or changed it; remove it and run again.",
        )


def _environment(placeholders: Mapping[str, str], port: int) -> dict[str, str]:
    from jhansi.egress.secrets import NAME_PATTERN  # not needed by a run with no network

    proxy = f"http://127.0.0.1:{port}"
    env = dict.fromkeys(PROXY_VARS, proxy)
    env.update(dict.fromkeys(NO_PROXY_VARS, NO_PROXY))
    env.update(dict.fromkeys(CA_VARS, BUNDLE_TARGET))
    for name, placeholder in placeholders.items():
        if not NAME_PATTERN.match(name) or name in RESERVED:
            raise UsageError(
                f"{name!r} cannot be a secret's name: "
                + ("jhansi sets it for egress" if name in RESERVED else "not a variable name"),
                hint="Store the secret under another name (`jhansi secret set NAME`).",
            )
        if "\0" in placeholder:
            raise SandboxError(f"the placeholder of secret {name} contains a NUL byte")
        env[name] = placeholder
    return env


def _write_bundle(bundle: Path, roots: Path | None, ca_pem: bytes) -> None:
    """The system roots, then the run's CA; a new file (never through a link), mode 0644."""
    parts = []
    if roots is not None:
        try:
            parts.append(roots.read_bytes().rstrip(b"\n") + b"\n")
        except OSError as exc:
            raise SandboxError(
                f"cannot read the trusted roots {roots}: {exc.strerror or exc}",
                hint="Make the system's CA bundle readable.",
            ) from None
    parts.append(b"# jhansi: this run's egress CA\n" + ca_pem.rstrip(b"\n") + b"\n")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(bundle, flags, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask
        view = memoryview(b"".join(parts))
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            bundle.unlink()
        raise
    os.close(fd)
