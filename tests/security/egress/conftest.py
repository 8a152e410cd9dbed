"""The egress attack scenario, run once per backend through the real ``jhansi run`` CLI.

Per backend: one JHANSI_HOME, three real HTTPS servers on loopback (tests/tls_server.py),
each with its own test CA, and two ``jhansi run`` invocations of ``probe.py``:

``attacks``  project ``loopback`` (``[network] allow_private`` = loopback,
             ``upstream_ca`` = the test CAs): ``--secret KEY@localhost:A``, the other
             secret bound to ``localhost:B`` in ``[secrets.NAME]``, ``--allow-host
             localhost:C`` (tunnelled), plain ``http://localhost:A_PLAIN`` allowed in
             ``[network] allow``; ``--json``.
``strict``   project ``strict`` (no ``allow_private``): the same flags; human output.

The secrets' real values exist only in the environment of the ``jhansi`` process (the
store's fallback: keyring's ``fail`` backend is forced, which is what this machine has
anyway). Tests read what the sandbox received from the files the probe wrote into the
sandbox home, unscrubbed, and what the servers received from the servers.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import backend_env, prepare_jhansi_home, require_backend
from tests.tls_server import TLSServer

KEY_NAME = "JHANSI_TEST_API_KEY"
OTHER_NAME = "JHANSI_TEST_OTHER_KEY"
CANARY_NAME = "JHANSI_TEST_EGRESS_CANARY"
EGRESS_BACKENDS = (
    pytest.param("bwrap", marks=pytest.mark.bwrap, id="bwrap"),
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
    pytest.param("podman", marks=pytest.mark.podman, id="podman"),
)
PROBE = Path(__file__).with_name("probe.py")
SANDBOX = "egress-attacks"


@dataclass(frozen=True)
class Run:
    """One ``jhansi run`` as a real process: its arguments and everything it printed."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout))


@dataclass
class Scenario:
    """Everything one backend's egress scenario produced."""

    backend: str
    base: Path
    home: Path
    """JHANSI_HOME: ledger, sandbox homes, runtime directory."""
    env: dict[str, str]
    key: str
    other: str
    canary: str
    servers: dict[str, TLSServer]
    config: dict[str, Any]
    runs: dict[str, Run] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    """What each server (``a``, ``b``, ``c``) received during each run (by mode)."""
    sandbox_home: Path | None = None

    @property
    def placeholder(self) -> str:
        return str(self.probes["attacks"]["environ"][KEY_NAME])

    @property
    def other_placeholder(self) -> str:
        return str(self.probes["attacks"]["environ"][OTHER_NAME])


def secret_forms(value: str) -> list[bytes]:
    """``value`` as a leak could carry it: raw, hex, URL-encoded, and base64 at every
    alignment (standard and URL-safe: the characters that do not depend on neighbours)."""
    import base64
    from urllib.parse import quote

    raw = value.encode()
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode(), quote(raw, safe="").encode()]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * pad + raw)
            forms.append(text[(0, 2, 3)[pad] : (pad + len(raw)) * 4 // 3])
    return forms


def find_secret(data: bytes | str, *values: str) -> list[str]:
    """Which forms of which ``values`` occur in ``data``, ignoring case (empty: none).

    Only a prefix of a form is named in the answer, so a failing test never prints a value.
    """
    blob = (data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data).lower()
    return [
        f"{value[:6]}...: a form starting {form[:6]!r}"
        for value in values
        for form in secret_forms(value)
        if form.lower() in blob
    ]


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> Run:
    """``jhansi ARGS`` as a real subprocess, in exactly ``env`` (nothing inherited)."""
    done = subprocess.run(
        [sys.executable, "-m", "jhansi", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return Run(tuple(args), done.returncode, done.stdout, done.stderr)


def clean_env(base: Path, home: Path, backend: str) -> dict[str, str]:
    """The caller's environment without any jhansi setting, plus this scenario's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JHANSI_")}
    env.pop("DOCKER_HOST", None)
    env.update(backend_env(backend))
    env.update(
        JHANSI_HOME=str(home),
        XDG_CONFIG_HOME=str(base / "xdg-config"),
        # No keyring here (and none wanted): values come from the environment fallback.
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    return env


def refused_targets(a: int, a_plain: int) -> list[str]:
    """CONNECT targets the proxy must refuse, every one, whatever the policy allows."""
    return [
        # Not allowed at all, or not on that port (a_plain has a real listener).
        "api.example.com:443",
        "localhost:443",
        "localhost:8443",
        f"localhost:{a_plain}",
        # Cloud metadata, in every spelling.
        "169.254.169.254:443",
        "169.254.169.254:80",
        "2852039166:443",
        "0xa9fea9fe:443",
        "0xA9.0xFE.0xA9.0xFE:443",
        "0251.0376.0251.0376:443",
        "169.254.43518:443",
        "169.16689662:443",
        "[::ffff:169.254.169.254]:443",
        "[::ffff:a9fe:a9fe]:443",
        "[64:ff9b::a9fe:a9fe]:443",
        "[2002:a9fe:a9fe::1]:443",
        "[fd00:ec2::254]:443",
        "100.100.100.200:443",
        "metadata.google.internal:80",
        # Loopback as IP literals (even though allow_private allows 127.0.0.0/8 by name).
        f"127.0.0.1:{a}",
        f"[::1]:{a}",
        f"2130706433:{a}",
        f"0x7f000001:{a}",
        f"0x7f.1:{a}",
        f"127.1:{a}",
        f"0177.0.0.1:{a}",
        f"[::ffff:127.0.0.1]:{a}",
        f"[0:0:0:0:0:ffff:7f00:1]:{a}",
        # Public IP literals.
        "1.1.1.1:443",
        "[2606:4700:4700::1111]:443",
        # Look-alikes of the allowed name.
        "localhost@evil.example:443",
        f"user@localhost:{a}",
        f"localhost:{a}@evil.example:443",
        f"localhost.evil.example:{a}",
        f"evil.localhost:{a}",
        f"localhostevil.example:{a}",
        f"localhost..:{a}",
        f"localhost%2e:{a}",
        f"localhost:{a}0",
    ]


def _shared_base(backend: str) -> Path:
    """A directory rootless Podman's engine user can traverse (pytest's are root's own)."""
    base = Path(tempfile.mkdtemp(prefix=f"jhansi-egress-{backend}-"))
    base.chmod(0o755)
    return base


def _write_project(
    directory: Path, servers: dict[str, TLSServer], upstream_ca: Path, *, loopback: bool
) -> None:
    directory.mkdir()
    directory.chmod(0o755)
    lines = ["[network]", f'upstream_ca = "{upstream_ca}"']
    if loopback:
        lines += [
            # ::1 too: a resolver may answer both for localhost, and every answer is checked.
            'allow_private = ["127.0.0.0/8", "::1/128"]',
            f'allow = ["http://localhost:{servers["a"].plain_port}"]',
            "",
            f"[secrets.{OTHER_NAME}]",
            f'hosts = ["localhost:{servers["b"].port}"]',
        ]
    (directory / "jhansi.toml").write_text("\n".join(lines) + "\n")
    shutil.copy(PROBE, directory / "probe.py")
    for path in directory.iterdir():
        path.chmod(0o644)


@pytest.fixture(scope="session", params=EGRESS_BACKENDS)
def scenario(request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """The whole egress scenario on one backend (runs once; every test reads it)."""
    backend = str(request.param)
    require_backend(request, backend)
    base = _shared_base(backend)
    servers: dict[str, TLSServer] = {}
    try:
        for name in ("a", "b", "c"):
            servers[name] = TLSServer(base / f"server-{name}")
        upstream_ca = base / "upstream-ca.pem"
        upstream_ca.write_bytes(b"".join(s.ca_path.read_bytes() for s in servers.values()))
        home = base / "jhansi-home"
        home.mkdir()
        prepare_jhansi_home(backend, home)
        a, b, c = (servers[n].port for n in "abc")
        config = {
            "a": a,
            "b": b,
            "c": c,
            "a_plain": servers["a"].plain_port,
            "key": KEY_NAME,
            "other": OTHER_NAME,
            "refused_targets": refused_targets(a, servers["a"].plain_port),
            "tunnel_ca": servers["c"].ca_path.read_text(),
        }
        env = clean_env(base, home, backend)
        found = Scenario(
            backend=backend,
            base=base,
            home=home,
            env=env,
            key="sk-live-" + secrets.token_urlsafe(36),
            other="other-" + secrets.token_hex(24),
            canary="canary-" + secrets.token_hex(16),
            servers=servers,
            config=config,
        )
        env.update({KEY_NAME: found.key, OTHER_NAME: found.other, CANARY_NAME: found.canary})
        for project, loopback in (("loopback", True), ("strict", False)):
            _write_project(base / project, servers, upstream_ca, loopback=loopback)
            # Its network and secret keys need trust: the user gives it, as a user would.
            trusted = run_cli("trust", str(base / project / "jhansi.toml"), env=env, cwd=base)
            assert trusted.returncode == 0, trusted.stderr
        flags = (
            "--sandbox",
            SANDBOX,
            "--secret",
            f"{KEY_NAME}@localhost:{a}",
            "--allow-host",
            f"localhost:{c}",
        )
        for mode, project, output in (
            ("attacks", "loopback", ("--json",)),
            ("strict", "strict", ()),
        ):
            before = {n: len(s.seen) for n, s in servers.items()}
            found.runs[mode] = run_cli(
                "run", *output, *flags, "probe.py", mode, json.dumps(config),
                env=env, cwd=base / project,
            )  # fmt: skip
            found.seen[mode] = {n: list(s.seen[before[n] :]) for n, s in servers.items()}
        sandbox_homes = list((home / "data" / "sandboxes").glob(f"{SANDBOX}*/home"))
        if len(sandbox_homes) == 1:
            found.sandbox_home = sandbox_homes[0]
            for mode in found.runs:
                path = sandbox_homes[0] / f"probe-{mode}.json"
                if path.is_file():
                    found.probes[mode] = json.loads(path.read_text(encoding="utf-8"))
        yield found
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(base, ignore_errors=True)
