"""What a run mounts, sets and passes to ``entry.py`` for egress, and the files it writes.

The proxy's socket is a real unix socket bound by the test (the proxy itself is
not needed to prepare a sandbox). Whether a sandbox can then reach it is
``tests/integration/test_egress_plumbing.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jhansi.egress.sandboxside import (
    BUNDLE_TARGET,
    CA_VARS,
    EGRESS_PORT,
    NO_PROXY,
    PROXY_VARS,
    SOCKET_TARGET,
    EgressMounts,
    find_system_roots,
    make_egress_dir,
)
from jhansi.errors import SandboxError, UsageError
from jhansi.sandbox.interface import Mount

CA = b"-----BEGIN CERTIFICATE-----\nTUlJQnJ1bkNB\n-----END CERTIFICATE-----\n"
ROOTS = b"-----BEGIN CERTIFICATE-----\nUk9PVFM=\n-----END CERTIFICATE-----\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A short runtime directory (a unix socket's path must stay under 108 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="jhansi-rt-"))
    try:
        yield base / "run"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def egress_dir(runtime: Path) -> Iterator[Path]:
    """A run's egress directory with a listening socket in it, as the proxy leaves it."""
    directory = make_egress_dir(runtime)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / "proxy.sock"))
    listener.listen(1)
    try:
        yield directory
    finally:
        listener.close()


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    path = tmp_path / "roots.pem"
    path.write_bytes(ROOTS)
    return path


def test_make_egress_dir_is_private_and_unguessable(runtime: Path) -> None:
    first, second = make_egress_dir(runtime), make_egress_dir(runtime)
    assert first != second
    assert first.parent == runtime
    assert mode(runtime) == 0o700
    assert mode(first) == 0o700
    assert len(first.name.removeprefix("egress-")) == 24


def test_prepare_writes_the_bundle_and_opens_only_what_the_sandbox_needs(
    egress_dir: Path, roots: Path
) -> None:
    prepared = EgressMounts.prepare(
        egress_dir, ca_pem=CA, placeholders={"STRIPE_KEY": "ph-1"}, roots=roots
    )
    bundle = egress_dir / "ca-bundle.pem"
    assert prepared.bundle == bundle
    assert prepared.roots == roots
    content = bundle.read_bytes()
    assert content.startswith(ROOTS)
    assert content.endswith(CA)
    assert mode(bundle) == 0o644
    assert mode(egress_dir / "proxy.sock") == 0o666
    assert mode(egress_dir) == 0o711  # traversable, not listable
    assert sorted(p.name for p in egress_dir.iterdir()) == ["ca-bundle.pem", "proxy.sock"]
    assert prepared.mounts == (
        Mount(egress_dir / "proxy.sock", SOCKET_TARGET, read_only=True, kind="socket"),
        Mount(bundle, BUNDLE_TARGET, read_only=True),
    )
    assert prepared.entry_args == (
        "--egress-socket",
        "/opt/jhansi/egress/proxy.sock",
        "--egress-port",
        str(EGRESS_PORT),
    )


def test_environment_points_every_client_at_the_forwarder_and_the_bundle(
    egress_dir: Path, roots: Path
) -> None:
    prepared = EgressMounts.prepare(
        egress_dir,
        ca_pem=CA,
        placeholders={"STRIPE_KEY": "ph-1", "GH_TOKEN": "ph-2"},
        port=40123,
        roots=roots,
    )
    assert prepared.env == {
        **dict.fromkeys(PROXY_VARS, "http://127.0.0.1:40123"),
        "NO_PROXY": NO_PROXY,
        "no_proxy": NO_PROXY,
        **dict.fromkeys(CA_VARS, "/opt/jhansi/egress/ca-bundle.pem"),
        "STRIPE_KEY": "ph-1",
        "GH_TOKEN": "ph-2",
    }
    assert NO_PROXY == ""  # every name goes to the proxy, which decides (localhost too)
    assert set(PROXY_VARS) == {
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    }
    assert prepared.entry_args[-1] == "40123"


def test_the_host_roots_are_found_and_included_by_default(egress_dir: Path) -> None:
    found = find_system_roots()
    assert found is not None, "this machine has a CA bundle (ca-certificates)"
    assert b"-----BEGIN CERTIFICATE-----" in found.read_bytes()
    prepared = EgressMounts.prepare(egress_dir, ca_pem=CA, placeholders={})
    assert prepared.roots == found
    content = prepared.bundle.read_bytes()
    assert content.count(b"BEGIN CERTIFICATE") == found.read_bytes().count(b"BEGIN CERTIFICATE") + 1
    assert content.endswith(CA)


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "no_proxy", "SSL_CERT_FILE", "PIP_CERT"])
def test_a_secret_cannot_shadow_an_egress_variable(
    egress_dir: Path, roots: Path, name: str
) -> None:
    with pytest.raises(UsageError, match="jhansi sets it for egress"):
        EgressMounts.prepare(egress_dir, ca_pem=CA, placeholders={name: "x"}, roots=roots)
    assert not (egress_dir / "ca-bundle.pem").exists()


def test_a_secret_name_must_be_a_variable_name(egress_dir: Path, roots: Path) -> None:
    with pytest.raises(UsageError, match="not a variable name"):
        EgressMounts.prepare(egress_dir, ca_pem=CA, placeholders={"A-B": "x"}, roots=roots)


def test_a_missing_socket_is_refused(runtime: Path, roots: Path) -> None:
    directory = make_egress_dir(runtime)
    with pytest.raises(SandboxError, match=r"socket .* is missing"):
        EgressMounts.prepare(directory, ca_pem=CA, placeholders={}, roots=roots)
    (directory / "proxy.sock").write_text("a file, not a socket")
    with pytest.raises(SandboxError, match=r"socket .* is missing"):
        EgressMounts.prepare(directory, ca_pem=CA, placeholders={}, roots=roots)


def test_a_directory_others_could_enter_is_refused(egress_dir: Path, roots: Path) -> None:
    egress_dir.chmod(0o755)
    with pytest.raises(SandboxError, match="not a private directory"):
        EgressMounts.prepare(egress_dir, ca_pem=CA, placeholders={}, roots=roots)


def test_a_symlinked_directory_is_refused(egress_dir: Path, roots: Path) -> None:
    link = egress_dir.parent / "link"
    link.symlink_to(egress_dir)
    with pytest.raises(SandboxError, match="not a private directory"):
        EgressMounts.prepare(link, ca_pem=CA, placeholders={}, roots=roots)


def test_a_ca_that_is_not_pem_is_refused(egress_dir: Path, roots: Path) -> None:
    with pytest.raises(SandboxError, match="not a PEM certificate"):
        EgressMounts.prepare(egress_dir, ca_pem=b"\x30\x82", placeholders={}, roots=roots)


def test_the_bundle_is_never_written_through_a_planted_link(
    egress_dir: Path, roots: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (egress_dir / "ca-bundle.pem").symlink_to(victim)
    with pytest.raises(OSError):  # noqa: PT011 - EEXIST (O_EXCL) or ELOOP (O_NOFOLLOW)
        EgressMounts.prepare(egress_dir, ca_pem=CA, placeholders={}, roots=roots)
    assert victim.read_text() == "untouched"


def test_the_umask_does_not_decide_the_modes(egress_dir: Path, roots: Path) -> None:
    old = os.umask(0o077)
    try:
        prepared = EgressMounts.prepare(egress_dir, ca_pem=CA, placeholders={}, roots=roots)
    finally:
        os.umask(old)
    assert mode(prepared.bundle) == 0o644


def test_a_deep_runtime_directory_gets_a_short_socket_parent(tmp_path: Path) -> None:
    import os

    from jhansi.egress.session import _socket_parent

    shallow = Path("/run/user/1000/jhansi")  # only measured, never made
    assert _socket_parent(shallow) == shallow
    deep = tmp_path / ("d" * 90) / "run"
    short = _socket_parent(deep)
    assert short != deep
    assert short.name == f"jhansi-{os.getuid()}"
    assert short.stat().st_mode & 0o777 == 0o711
    assert len(str(short / ("egress-" + "0" * 24) / "proxy.sock")) <= 107
