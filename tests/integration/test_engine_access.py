"""How jhansi reaches engines, as docker users set it up, with the real components.

- Registry credentials: the loopback registry with basic auth that
  scripts/provision.sh runs (Debian's docker-registry), holding the test image;
  jhansi pulls it with the credentials of a config.json in a temporary
  DOCKER_CONFIG (``auths``, ``credHelpers``, ``credsStore``), and refuses cleanly
  without them or when the credential helper fails.
- Docker contexts made by the docker CLI, chosen with DOCKER_CONTEXT or
  ``docker context use``, while DOCKER_HOST is unset.
- TLS: the engine behind a TLS proxy (Python's ssl, a test CA) that demands a
  client certificate, reached with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, or
  with the TLS files a docker context keeps in its own store.
- ssh: the engine behind the loopback sshd that scripts/provision.sh runs
  (``DOCKER_HOST=ssh://…`` and a context whose host is ``ssh://…``), with the
  ssh client configured by a temporary home's ``~/.ssh``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from jhansi.sandbox.endpoints import TLS_HINT
from tests.conftest import DOCKER_HOST, TEST_IMAGE, Engine, absent
from tests.tls_server import TestCA as CA

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello.py"
ON_DOCKER = ("--backend", "docker", "--image", TEST_IMAGE)
REGISTRY = os.environ.get("JHANSI_TEST_REGISTRY", "")
REGISTRY_IMAGE = os.environ.get("JHANSI_TEST_REGISTRY_IMAGE", "")
REGISTRY_AUTH = os.environ.get("JHANSI_TEST_REGISTRY_AUTH", "")
SSH_HOST = os.environ.get("JHANSI_TEST_SSH_HOST", "")
SSH_KEY = os.environ.get("JHANSI_TEST_SSH_KEY", "")
SSH_HOST_KEY = os.environ.get("JHANSI_TEST_SSH_HOST_KEY", "")
#: What the caller's environment must not add: these tests choose the engine themselves.
_ENGINE_VARIABLES = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS",
    "SSH_AUTH_SOCK",  # an agent's keys would log in where the test means a key to fail
)


def jhansi(
    *args: str, env: dict[str, str], prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``jhansi ARGS`` with the engine chosen only by ``env`` (DOCKER_HOST and the like unset),
    started through ``prefix`` if given."""
    base = {k: v for k, v in os.environ.items() if k not in _ENGINE_VARIABLES}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "jhansi", *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=300,
        check=False,
    )


def docker_cli(*args: str, config: Path) -> str:
    """The docker CLI with its configuration in ``config`` (and no DOCKER_HOST)."""
    env = {k: v for k, v in os.environ.items() if k not in _ENGINE_VARIABLES}
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        env={**env, "DOCKER_CONFIG": str(config)},
        timeout=60,
        check=True,
    ).stdout


def run_document(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def backend_details(doc: dict[str, object]) -> dict[str, str]:
    assert doc["backend"] == "docker"
    details = doc["backend_details"]
    assert isinstance(details, dict)
    return details


# ----------------------------------------------------- registry credentials --


@pytest.fixture
def registry(docker_engine: Engine) -> Iterator[tuple[str, str]]:
    """The registry's user and password; the pushed image's tag is not in the engine."""
    if not (REGISTRY and REGISTRY_IMAGE and REGISTRY_AUTH and Path(REGISTRY_AUTH).exists()):
        absent("no test registry (run scripts/provision.sh)")
    user, _, password = Path(REGISTRY_AUTH).read_text().strip().partition(":")
    import docker.errors

    def untag() -> None:
        # The tag only: the image itself is the test image, which stays.
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_engine.client.images.remove(REGISTRY_IMAGE)

    untag()
    yield user, password
    untag()


def _run_pulled(config: Path) -> subprocess.CompletedProcess[str]:
    return jhansi(
        "run",
        "--json",
        "--backend",
        "docker",
        "--image",
        REGISTRY_IMAGE,
        str(HELLO),
        env={"DOCKER_CONFIG": str(config), "DOCKER_HOST": DOCKER_HOST},
    )


@pytest.mark.docker
def test_a_private_image_is_pulled_with_the_docker_configs_credentials(
    registry: tuple[str, str], tmp_path: Path, docker_engine: Engine
) -> None:
    user, password = registry
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {REGISTRY: {"auth": token}}}))
    doc = run_document(_run_pulled(tmp_path))
    assert doc["status"] == "succeeded"
    details = backend_details(doc)
    assert details["image"] == REGISTRY_IMAGE
    assert details["image_digest"] == docker_engine.client.images.get(TEST_IMAGE).id
    assert any(
        d.startswith(f"{REGISTRY}/jhansi-test-python@sha256:")
        for d in details["image_repo_digests"].split()
    )


@pytest.mark.docker
def test_a_credential_helper_gives_the_credentials(
    registry: tuple[str, str], tmp_path: Path
) -> None:
    # A real helper program, speaking the docker credential helper protocol.
    user, password = registry
    helpers = tmp_path / "bin"
    helpers.mkdir()
    helper = helpers / "docker-credential-jhansi-test"
    answer = json.dumps({"ServerURL": REGISTRY, "Username": user, "Secret": password})
    helper.write_text(f"#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho '{answer}'\n")
    helper.chmod(0o700)
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {REGISTRY: "jhansi-test"}}))
    proc = jhansi(
        "run",
        "--json",
        "--backend",
        "docker",
        "--image",
        REGISTRY_IMAGE,
        str(HELLO),
        env={
            "DOCKER_CONFIG": str(config),
            "DOCKER_HOST": DOCKER_HOST,
            "PATH": f"{helpers}:{os.environ['PATH']}",
        },
    )
    assert run_document(proc)["status"] == "succeeded"


def _creds_store(tmp_path: Path, name: str, script: str) -> dict[str, str]:
    """A docker config whose only credentials are ``"credsStore": name``, and the helper
    ``docker-credential-NAME`` (``script``) on the PATH: the environment for jhansi."""
    helpers = tmp_path / "bin"
    helpers.mkdir()
    helper = helpers / f"docker-credential-{name}"
    helper.write_text(script)
    helper.chmod(0o700)
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credsStore": name}))
    return {
        "DOCKER_CONFIG": str(config),
        "DOCKER_HOST": DOCKER_HOST,
        "PATH": f"{helpers}:{os.environ['PATH']}",
    }


@pytest.mark.docker
def test_the_credential_store_alone_gives_the_credentials(
    registry: tuple[str, str], tmp_path: Path
) -> None:
    # `credsStore` is how Docker Desktop and the OS keyrings are used: the docker config
    # holds no auths and no credHelpers, every registry's credentials come from one
    # helper. No desktop keyring exists here, so the test writes the helper: a real
    # program answering the real protocol (`get`, the server on stdin, JSON on stdout),
    # which also records what it was asked.
    user, password = registry
    asked = tmp_path / "asked"
    answer = json.dumps({"ServerURL": REGISTRY, "Username": user, "Secret": password})
    env = _creds_store(
        tmp_path,
        "jhansi-store",
        f'#!/bin/sh\n[ "$1" = get ] || exit 1\nread server\n'
        f"echo \"$server\" >>'{asked}'\necho '{answer}'\n",
    )
    proc = jhansi(
        "run", "--json", "--backend", "docker", "--image", REGISTRY_IMAGE, str(HELLO), env=env
    )
    doc = run_document(proc)
    assert doc["status"] == "succeeded"
    assert backend_details(doc)["image"] == REGISTRY_IMAGE
    assert asked.read_text().split() == [REGISTRY]


@pytest.mark.docker
def test_a_failing_credential_store_is_refused_with_a_hint(
    registry: tuple[str, str], tmp_path: Path
) -> None:
    # As a real helper fails (a locked keyring): its message on stdout, exit status 1.
    env = _creds_store(
        tmp_path, "jhansi-locked", "#!/bin/sh\necho 'the keyring is locked'\nexit 1\n"
    )
    proc = jhansi("run", "--backend", "docker", "--image", REGISTRY_IMAGE, str(HELLO), env=env)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip().splitlines()[-2:] == [
        f"error: cannot pull the image {REGISTRY_IMAGE}: the docker config's credential helper "
        'failed: docker-credential-jhansi-locked exited with "the keyring is locked"',
        "hint: Check that `docker-credential-jhansi-locked` works (`echo "
        f"{REGISTRY} | docker-credential-jhansi-locked get`) or log in again (`docker login "
        f"{REGISTRY}`); jhansi uses the credentials of the docker config "
        f"({env['DOCKER_CONFIG']}/config.json). Or choose another image with --image. Or run "
        "on bubblewrap instead, which needs no image: --backend bwrap ([sandbox] backend = "
        '"bwrap"; `jhansi doctor` says whether it works here).',
    ]
    assert len(proc.stderr.strip().splitlines()) == 2, proc.stderr


@pytest.mark.docker
def test_without_credentials_the_pull_is_refused_with_a_hint(
    registry: tuple[str, str], tmp_path: Path
) -> None:
    proc = _run_pulled(tmp_path)  # an empty DOCKER_CONFIG: no credentials
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"error: cannot pull the image {REGISTRY_IMAGE}: "), lines
    assert lines[1].startswith(f"hint: Log in to {REGISTRY} (`docker login {REGISTRY}`"), lines
    assert "--backend bwrap" in lines[1]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------- contexts --


@pytest.fixture
def engine_link(tmp_path: Path, docker_engine: Engine) -> str:
    """The rootful engine's socket under another name, so a run shows which way it came."""
    link = tmp_path / "engine.sock"
    link.symlink_to(docker_engine.url.removeprefix("unix://"))
    return f"unix://{link}"


@pytest.mark.docker
def test_docker_context_selects_the_engine(tmp_path: Path, engine_link: str) -> None:
    config = tmp_path / "docker-config"
    docker_cli("context", "create", "jhansi-ctx", "--docker", f"host={engine_link}", config=config)
    env = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "jhansi-ctx"}
    doctor = jhansi("doctor", "--json", env=env)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["docker"]["ok"], checks["docker"]
    assert f"at {engine_link} (docker context 'jhansi-ctx', from DOCKER_CONTEXT" in str(
        checks["docker"]["detail"]
    )
    doc = run_document(jhansi("run", "--json", *ON_DOCKER, str(HELLO), env=env))
    assert doc["status"] == "succeeded"
    assert backend_details(doc)["url"] == engine_link


@pytest.mark.docker
def test_docker_context_use_selects_the_engine(tmp_path: Path, engine_link: str) -> None:
    config = tmp_path / "docker-config"
    docker_cli("context", "create", "jhansi-used", "--docker", f"host={engine_link}", config=config)
    docker_cli("context", "use", "jhansi-used", config=config)
    env = {"DOCKER_CONFIG": str(config)}
    doctor = jhansi("doctor", "--json", env=env)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["docker"]["ok"], checks["docker"]
    assert "docker context 'jhansi-used', from the docker context chosen with `docker " in str(
        checks["docker"]["detail"]
    )
    doc = run_document(jhansi("run", "--json", *ON_DOCKER, str(HELLO), env=env))
    assert backend_details(doc)["url"] == engine_link


def test_a_context_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    proc = jhansi(
        "run",
        "--backend",
        "docker",
        str(HELLO),
        env={"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "nowhere"},
    )
    assert proc.returncode == 4
    assert proc.stderr.splitlines() == [
        "error: the docker context 'nowhere' (DOCKER_CONTEXT=nowhere) does not exist",
        "hint: List the contexts (`docker context ls`), then choose one (`docker context use "
        "NAME`) or unset DOCKER_CONTEXT.",
    ]


# ------------------------------------------------------------------ TLS --


class TlsProxy:
    """A TLS endpoint on loopback for the engine's unix socket, demanding a client certificate
    from the CA (what ``dockerd --tlsverify`` does), passing bytes both ways."""

    def __init__(self, directory: Path, ca: CA, engine_socket: str) -> None:
        self.engine_socket = engine_socket
        cert, key = ca.issue(["localhost"], ["127.0.0.1"])
        (directory / "server.pem").write_bytes(cert + key)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(directory / "server.pem")
        self.context.load_verify_locations(cadata=ca.pem.decode())
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        engine = socket.socket(socket.AF_UNIX)
        engine.connect(self.engine_socket)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(engine, client), daemon=True)
        back.start()
        pump(client, engine)
        back.join()
        client.close()
        engine.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def tls_engine(tmp_path: Path, docker_engine: Engine) -> Iterator[tuple[TlsProxy, Path, CA]]:
    ca = CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_bytes(ca.pem)
    proxy = TlsProxy(tmp_path, ca, docker_engine.url.removeprefix("unix://"))
    yield proxy, certs, ca
    proxy.close()


@pytest.mark.docker
def test_a_tls_engine_is_reached_with_the_cert_path(
    tls_engine: tuple[TlsProxy, Path, CA],
) -> None:
    proxy, certs, ca = tls_engine
    cert, key = ca.issue(["jhansi"], client=True)
    (certs / "cert.pem").write_bytes(cert)
    (certs / "key.pem").write_bytes(key)
    url = f"tcp://localhost:{proxy.port}"
    env = {"DOCKER_HOST": url, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    doc = run_document(jhansi("run", "--json", *ON_DOCKER, str(HELLO), env=env))
    assert doc["status"] == "succeeded"
    assert backend_details(doc)["url"] == url


@pytest.mark.docker
def test_a_tls_engine_without_a_client_certificate_is_refused(
    tls_engine: tuple[TlsProxy, Path, CA],
) -> None:
    proxy, certs, _ = tls_engine
    url = f"tcp://localhost:{proxy.port}"
    env = {"DOCKER_HOST": url, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    proc = jhansi("run", *ON_DOCKER, str(HELLO), env=env)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"error: no container engine answers at {url}: "), lines
    assert "DOCKER_CERT_PATH" in lines[1]


def _tls_context(tmp_path: Path, port: int, ca_pem: bytes, ca: CA) -> Path:
    """A docker config with the context ``jhansi-tls`` for the proxy, its TLS files (``ca``
    trusted, a client certificate of ``ca``) copied by the docker CLI into its own store;
    the files it was made from are gone, so only the store's copies can be used."""
    source = tmp_path / "context-files"
    source.mkdir()
    cert, key = ca.issue(["jhansi"], client=True)
    for name, data in (("ca.pem", ca_pem), ("cert.pem", cert), ("key.pem", key)):
        (source / name).write_bytes(data)
    config = tmp_path / "docker-config"
    docker_cli(
        "context",
        "create",
        "jhansi-tls",
        "--docker",
        f"host=tcp://127.0.0.1:{port},ca={source}/ca.pem,cert={source}/cert.pem,"
        f"key={source}/key.pem",
        config=config,
    )
    shutil.rmtree(source)
    assert list((config / "contexts" / "tls").glob("*/docker/ca.pem"))
    return config


@pytest.mark.docker
def test_a_tls_engine_is_reached_with_the_contexts_own_files(
    tmp_path: Path, tls_engine: tuple[TlsProxy, Path, CA]
) -> None:
    proxy, _, ca = tls_engine
    config = _tls_context(tmp_path, proxy.port, ca.pem, ca)
    env = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "jhansi-tls"}  # no DOCKER_TLS_*
    doc = run_document(jhansi("run", "--json", *ON_DOCKER, str(HELLO), env=env))
    assert doc["status"] == "succeeded"
    assert backend_details(doc)["url"] == f"tcp://127.0.0.1:{proxy.port}"


@pytest.mark.docker
def test_a_context_whose_ca_does_not_match_the_engine_is_refused(
    tmp_path: Path, tls_engine: tuple[TlsProxy, Path, CA]
) -> None:
    proxy, _, ca = tls_engine
    config = _tls_context(tmp_path, proxy.port, CA().pem, ca)  # another CA than the engine's
    env = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "jhansi-tls"}
    proc = jhansi("run", *ON_DOCKER, str(HELLO), env=env)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: no container engine answers at tcp://127.0.0.1:{proxy.port}: the engine's TLS "
        "certificate is not trusted (from docker context 'jhansi-tls', from "
        "DOCKER_CONTEXT=jhansi-tls)",
        f"hint: {TLS_HINT}",
    ]


# ------------------------------------------------------------------ ssh --


@dataclass(frozen=True)
class SshHome:
    """A home of its own for the ssh client that jhansi starts, and how to start jhansi in it."""

    home: Path
    tmp: Path
    """jhansi's TMPDIR: where its tunnel's socket lives while it runs."""
    prefix: tuple[str, ...]

    def leftovers(self) -> list[str]:
        """Tunnel directories, and processes (ssh, its keeper) naming one, still there 5 s
        after jhansi ended (the keeper stops ssh once jhansi's end closes its pipe)."""
        deadline = time.monotonic() + 5
        while True:
            found = [str(p) for p in self.tmp.glob("jhansi-ssh-*")]
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):
                    if str(self.tmp).encode() in (text := cmdline.read_bytes()):
                        found.append(text.replace(b"\0", b" ").decode())
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture
def ssh_home(tmp_path: Path, docker_engine: Engine) -> SshHome:
    """``~/.ssh`` as a user sets it up for the test sshd: the key, the host's key in
    ``known_hosts``, and an alias ``jhansi-engine`` in ``config``.

    ssh finds ``~`` in the password database, not in ``HOME``, so jhansi runs in a
    mount namespace of its own where a copy of /etc/passwd gives root this home
    (``unshare`` as root: the machine's files and root's real ~/.ssh stay untouched).
    """
    if not (SSH_HOST and SSH_KEY and SSH_HOST_KEY and Path(SSH_KEY).exists()):
        absent("no test sshd (run scripts/provision.sh)")
    if os.getuid() != 0 or shutil.which("unshare") is None:
        absent("the ssh tests give root a home of its own: they need root and unshare")
    target = urlsplit(SSH_HOST)
    home = tmp_path / "home"
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(parents=True, mode=0o700)
    shutil.copyfile(SSH_KEY, dot_ssh / "engine_ed25519")
    (dot_ssh / "engine_ed25519").chmod(0o600)
    host_key = " ".join(Path(SSH_HOST_KEY).read_text().split()[:2])
    (dot_ssh / "known_hosts").write_text(f"[{target.hostname}]:{target.port} {host_key}\n")
    (dot_ssh / "config").write_text(
        f"Host jhansi-engine\n  HostName {target.hostname}\n  Port {target.port}\n"
        f"  User {target.username}\n"
        f"Host jhansi-engine {target.hostname}\n  IdentityFile ~/.ssh/engine_ed25519\n"
        "  IdentitiesOnly yes\n"
    )
    (dot_ssh / "config").chmod(0o600)
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "".join(
            ":".join([*f[:5], str(home), *f[6:]]) if f[2] == "0" else line
            for line in Path("/etc/passwd").read_text().splitlines(keepends=True)
            for f in [line.split(":")]
        )
    )
    tmp = tmp_path / "t"
    tmp.mkdir()
    mount = 'mount --bind "$0" /etc/passwd && exec "$@"'
    return SshHome(
        home,
        tmp,
        ("unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(passwd)),
    )


def _in_home(ssh: SshHome, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return jhansi(*args, env={**env, "TMPDIR": str(ssh.tmp)}, prefix=ssh.prefix)


@pytest.mark.docker
def test_an_ssh_engine_is_reached_from_docker_host(ssh_home: SshHome) -> None:
    env = {"DOCKER_HOST": SSH_HOST}
    doctor = _in_home(ssh_home, "doctor", "--json", env=env)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["docker"]["ok"], checks["docker"]
    assert f"(rootful) at {SSH_HOST} (DOCKER_HOST)" in str(checks["docker"]["detail"])
    doc = run_document(_in_home(ssh_home, "run", "--json", *ON_DOCKER, str(HELLO), env=env))
    assert doc["status"] == "succeeded"
    assert backend_details(doc)["url"] == SSH_HOST
    assert ssh_home.leftovers() == []  # the tunnel ended with jhansi


@pytest.mark.docker
def test_an_ssh_context_is_reached_through_the_users_ssh_config(
    tmp_path: Path, ssh_home: SshHome
) -> None:
    # "jhansi-engine" exists only in ~/.ssh/config: the user's ssh set-up is what is used.
    config = tmp_path / "docker-config"
    docker_cli(
        "context", "create", "jhansi-ssh", "--docker", "host=ssh://jhansi-engine", config=config
    )
    env = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "jhansi-ssh"}
    doctor = _in_home(ssh_home, "doctor", "--json", env=env)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["docker"]["ok"], checks["docker"]
    assert "at ssh://jhansi-engine (docker context 'jhansi-ssh'" in str(checks["docker"]["detail"])
    doc = run_document(_in_home(ssh_home, "run", "--json", *ON_DOCKER, str(HELLO), env=env))
    assert backend_details(doc)["url"] == "ssh://jhansi-engine"
    assert ssh_home.leftovers() == []


@pytest.mark.docker
@pytest.mark.parametrize("problem", ["an unknown key", "an unknown host"])
def test_an_ssh_engine_that_does_not_let_jhansi_in_is_refused(
    problem: str, ssh_home: SshHome
) -> None:
    target = urlsplit(SSH_HOST)
    login = f"ssh -p {target.port} {target.username}@{target.hostname}"
    if problem == "an unknown key":
        key = ssh_home.home / ".ssh" / "engine_ed25519"
        key.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        reason = f"{target.username}@{target.hostname}: Permission denied (publickey)."
        hint = (
            f"hint: Check that `{login}` logs in without a prompt (a key or an agent) and that "
            "the engine's socket there is where the URL says (default /var/run/docker.sock)."
        )
    else:
        (ssh_home.home / ".ssh" / "known_hosts").write_text("")
        reason = "Host key verification failed."
        hint = (
            "hint: ssh does not know this host's key (or it changed): check the key and add it "
            f"to ~/.ssh/known_hosts, for instance by logging in once (`{login}`)."
        )
    proc = _in_home(ssh_home, "run", *ON_DOCKER, str(HELLO), env={"DOCKER_HOST": SSH_HOST})
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot reach the engine at {SSH_HOST} over ssh: {reason} (from DOCKER_HOST)",
        hint,
    ]
    assert ssh_home.leftovers() == []
