"""Where jhansi looks for an engine, what it refuses before asking the SDK, and its hints.

Talking to engines is tested against the real ones (tests/integration); contexts
made by the docker CLI in tests/integration/test_engine_access.py. The last
section tests the docker backend's pure rules (who the sandbox is, the
container's configuration) on engine descriptions made here.
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from jhansi.errors import SandboxError
from jhansi.sandbox.docker.container import (
    GVISOR_PIDS_BASE,
    GVISOR_PIDS_PER_TASK,
    container_config,
    engine_mounts,
)
from jhansi.sandbox.docker.identity import sandbox_identity
from jhansi.sandbox.endpoints import (
    START_HINT,
    TlsFiles,
    candidate_endpoints,
    current_context,
    env_tls,
    normalize_url,
)
from jhansi.sandbox.engine_client import _credential_helper_failure, pull_hint
from jhansi.sandbox.engines import EngineInfo, IdMapping, connect, map_id
from jhansi.sandbox.interface import (
    HOME,
    PYTHON,
    ROOT_SANDBOX_HOST_GID,
    ROOT_SANDBOX_HOST_UID,
    THREAD_ENV,
    Limits,
    Mount,
    SandboxSpec,
)


def test_id_mapping() -> None:
    mappings = (IdMapping(0, 1001, 1), IdMapping(1, 100000, 65536))
    assert map_id(mappings, 0) == 1001
    assert map_id(mappings, 1000) == 100999
    assert map_id(mappings, 65536) == 165535
    assert map_id(mappings, 65537) is None


# ------------------------------------------------------ where to look --


def test_the_configured_url_then_docker_host_win_over_contexts(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": "unix:///run/a.sock", "DOCKER_CONTEXT": "nope", "HOME": str(tmp_path)}
    configured = candidate_endpoints("tcp://engine:2375", env)
    assert [(e.url, e.reason, e.explicit) for e in configured] == [
        ("tcp://engine:2375", "[sandbox] engine_url", True)
    ]
    from_env = candidate_endpoints(None, env)
    assert [(e.url, e.reason, e.explicit) for e in from_env] == [
        ("unix:///run/a.sock", "DOCKER_HOST", True)
    ]


def test_without_host_or_context_the_usual_sockets_are_tried(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": "/run/user/7"}
    urls = [e.url for e in candidate_endpoints(None, env)]
    assert urls[:3] == [
        "unix:///var/run/docker.sock",
        "unix:///run/user/7/docker.sock",
        "unix:///run/user/7/podman/podman.sock",
    ]
    assert not any(e.explicit for e in candidate_endpoints(None, env))


def test_the_default_context_is_no_choice(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "default"}))
    assert current_context({"DOCKER_CONFIG": str(tmp_path)}) is None
    assert current_context({"DOCKER_CONTEXT": "default", "HOME": str(tmp_path)}) is None
    (tmp_path / "config.json").write_text("{not json")
    assert current_context({"DOCKER_CONFIG": str(tmp_path)}) is None


def test_a_missing_context_is_refused_with_the_way_out(tmp_path: Path) -> None:
    env = {"DOCKER_CONTEXT": "gone", "DOCKER_CONFIG": str(tmp_path)}
    with pytest.raises(
        SandboxError, match=r"docker context 'gone' \(DOCKER_CONTEXT=gone\) does not"
    ):
        candidate_endpoints(None, env)
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "old"}))
    with pytest.raises(SandboxError, match="docker context use") as raised:
        candidate_endpoints(None, {"DOCKER_CONFIG": str(tmp_path)})
    assert "docker context ls" in raised.value.hint


def test_tls_from_the_environment(tmp_path: Path) -> None:
    assert env_tls({"HOME": str(tmp_path)}) is None
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("x")
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    assert env_tls(env) == TlsFiles(
        str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), True
    )
    # DOCKER_CERT_PATH alone: TLS without verifying the engine (as the docker CLI does).
    assert env_tls({"DOCKER_CERT_PATH": str(tmp_path)}) == TlsFiles(
        str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), False
    )
    (endpoint,) = candidate_endpoints(None, {"DOCKER_HOST": "tcp://engine:2376", **env})
    assert endpoint.tls is not None
    assert endpoint.tls.verify
    (plain,) = candidate_endpoints(None, {"DOCKER_HOST": "unix:///run/x.sock", **env})
    assert plain.tls is None


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),
        ("unix://run/podman.sock", "unix:///run/podman.sock"),
        ("/run/podman.sock", "unix:///run/podman.sock"),
        ("tcp://10.0.0.2:2375", "tcp://10.0.0.2:2375"),
        ("ssh://me@build-host", "ssh://me@build-host"),
    ],
)
def test_usable_addresses(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("npipe:////./pipe/docker_engine", "Windows named pipes"),
        ("fd://", "systemd socket activation"),
        ("docker.sock", "not a URL"),
    ],
)
def test_unusable_addresses_are_refused_with_the_way_round(url: str, message: str) -> None:
    with pytest.raises(SandboxError, match=message) as raised:
        normalize_url(url)
    assert "docker context use" in raised.value.hint


def test_an_absent_socket_is_refused_without_importing_the_sdk(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from jhansi.errors import SandboxError\n"
        "from jhansi.sandbox.engines import find_engine\n"
        "try:\n"
        f"    find_engine(None, {{'DOCKER_HOST': 'unix://{tmp_path}/absent.sock'}})\n"
        "except SandboxError as exc:\n"
        "    print(exc.message)\n"
        "print('docker' in sys.modules, 'requests' in sys.modules)\n"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [
        f"no container engine at unix://{tmp_path}/absent.sock: the socket does not exist "
        "(from DOCKER_HOST)",
        "False False",
    ]


def test_nothing_listening_is_connection_refused(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    with pytest.raises(SandboxError, match="connection refused") as raised:
        connect(f"unix://{path}")
    assert raised.value.hint == START_HINT


def test_pull_hints_say_log_in_or_check_the_name() -> None:
    """The engine's hint; the docker backend adds bubblewrap (BWRAP_ALTERNATIVE) to it."""
    denied = pull_hint("localhost:5001/team/img:1", "no basic auth credentials")
    assert "docker login localhost:5001" in denied
    assert "--image" in denied
    missing = pull_hint("python:9", "manifest unknown")
    assert "docker pull python:9" in missing
    assert "--image" in missing
    assert "`docker login localhost`" in pull_hint("localhost/img", "unauthorized")


def _helper_failed(store_error: str) -> str | None:
    """What jhansi says of the SDK's error for a credential helper that failed so."""
    import docker.errors
    from docker.credentials.errors import StoreError

    try:
        try:
            raise StoreError(store_error)
        except StoreError as cause:  # as docker.auth raises it
            raise docker.errors.DockerException(f"Credentials store error: {cause!r}") from cause
    except docker.errors.DockerException as exc:
        return _credential_helper_failure(exc)


def test_a_credential_helpers_failure_is_told_in_its_own_words() -> None:
    # The texts the SDK makes (docker/credentials): the helper's stdout, or its absence.
    assert (
        _helper_failed('Credentials store docker-credential-pass exited with "gpg: locked\n".')
        == 'docker-credential-pass exited with "gpg: locked"'
    )
    assert (
        _helper_failed('Credentials store docker-credential-pass exited with "".')
        == "docker-credential-pass failed and said nothing"
    )
    assert (
        _helper_failed("docker-credential-desktop not installed or not available in PATH")
        == "docker-credential-desktop not installed or not available in PATH"
    )
    import docker.errors

    assert _credential_helper_failure(docker.errors.DockerException("other")) is None


# ------------------------------------ who the sandbox is, per engine --


ROOTFUL = EngineInfo(
    url="unix:///var/run/docker.sock",
    name="docker",
    version="20.10.24",
    api_version="1.41",
    rootless=False,
    runtimes=("runc", "runsc"),
    default_runtime="runc",
    security_options=("name=seccomp,profile=default",),
    cgroup_version="1",
    limits=frozenset({"memory", "swap", "pids", "cpu"}),
    init_binary="docker-init",
)
PODMAN = EngineInfo(
    url="unix:///run/jhansi-ci/podman.sock",
    name="podman",
    version="4.3.1",
    api_version="1.41",
    rootless=True,
    runtimes=("runc",),
    default_runtime="runc",
    security_options=(),
    cgroup_version="1",
    uid_map=(IdMapping(0, 1001, 1), IdMapping(1, 100000, 65536)),
    gid_map=(IdMapping(0, 1001, 1), IdMapping(1, 100000, 65536)),
    cgroup_controllers=(),
)


def test_root_on_a_rootful_engine_runs_the_sandbox_as_the_dedicated_id() -> None:
    # Not 1000 (often a person's account): the id bwrap gives root's sandboxes too.
    identity = sandbox_identity(ROOTFUL, 1000, 1000, invoker_uid=0, invoker_gid=0)
    dedicated = ROOT_SANDBOX_HOST_UID
    assert (identity.uid, identity.host_uid, identity.userns_mode) == (dedicated, dedicated, None)


def test_a_user_on_a_rootful_engine_runs_the_sandbox_as_themselves() -> None:
    identity = sandbox_identity(ROOTFUL, 1000, 1000, invoker_uid=1234, invoker_gid=99)
    assert (identity.uid, identity.gid, identity.host_uid) == (1234, 99, 1234)


def test_rootless_podman_of_the_same_user_keeps_the_uid() -> None:
    identity = sandbox_identity(PODMAN, 1000, 1000, invoker_uid=1001, invoker_gid=1001)
    assert (identity.uid, identity.host_uid, identity.userns_mode) == (1001, 1001, "keep-id")
    assert identity.engine_uid is None


def test_rootless_podman_driven_by_root_maps_to_a_subordinate_uid() -> None:
    identity = sandbox_identity(PODMAN, 1000, 1000, invoker_uid=0, invoker_gid=0)
    assert (identity.uid, identity.host_uid, identity.host_gid) == (1000, 100999, 100999)
    assert identity.engine_uid == 1001
    assert identity.userns_mode is None


def test_the_sandbox_never_runs_as_root() -> None:
    # Root asking for uid 0 on a rootful engine still gets the dedicated unprivileged id.
    identity = sandbox_identity(ROOTFUL, 0, 0, invoker_uid=0, invoker_gid=0, root_id=2_000_000_007)
    assert identity.uid == identity.host_uid == 2_000_000_007
    # Where the spec's uid is used as it is (rootless Podman's mapping), 0 is refused.
    with pytest.raises(SandboxError, match="never"):
        sandbox_identity(PODMAN, 0, 0, invoker_uid=0, invoker_gid=0)


def _spec(**changes: object) -> SandboxSpec:
    spec = SandboxSpec(
        run_id="r1",
        argv=(PYTHON, "-I", "/opt/jhansi/entry.py"),
        mounts=(Mount(Path("/p"), "/work"), Mount(Path("/h"), HOME, read_only=False)),
        env={"HOME": HOME},
        limits=Limits(
            memory=256 << 20, cpus=1.5, pids=64, tmp_size=16 << 20, timeout=30, output_limit=1000
        ),
        image="python:3.12-slim",
        python=None,
        labels={"team": "a"},
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def test_container_config_is_hardened() -> None:
    spec = _spec()
    identity = sandbox_identity(ROOTFUL, 1000, 1000, invoker_uid=0, invoker_gid=0)
    config = container_config(
        spec,
        image="sha256:abc",
        engine=ROOTFUL,
        identity=identity,
        mounts=engine_mounts(spec.mounts, None),
        labels={"jhansi.run-id": "r1"},
    )
    host = config["HostConfig"]
    assert config["Entrypoint"] == ["python3"]
    assert config["Cmd"] == ["-I", "/opt/jhansi/entry.py"]
    assert config["User"] == f"{ROOT_SANDBOX_HOST_UID}:{ROOT_SANDBOX_HOST_GID}"
    assert config["Env"] == [*(f"{name}=2" for name in THREAD_ENV), f"HOME={HOME}"]
    assert config["Labels"] == {"team": "a", "jhansi.run-id": "r1"}
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] == 256 << 20
    assert host["NanoCpus"] == 1_500_000_000
    assert host["PidsLimit"] == 64
    assert host["Tmpfs"] == {"/tmp": f"rw,nosuid,nodev,size={16 << 20},mode=1777"}
    assert host["Ulimits"] == [{"Name": "core", "Soft": 0, "Hard": 0}]
    assert host["Init"] is True
    assert "Runtime" not in host
    assert host["Mounts"][1] == {
        "Type": "bind",
        "Source": "/h",
        "Target": HOME,
        "ReadOnly": False,
        "BindOptions": {"Propagation": "rprivate"},
    }


def test_gvisor_counts_processes_in_its_own_kernel() -> None:
    spec = _spec(runtime="runsc")
    identity = sandbox_identity(ROOTFUL, 1000, 1000, invoker_uid=0, invoker_gid=0)
    host = container_config(
        spec, image="x", engine=ROOTFUL, identity=identity, mounts=[], labels={}
    )["HostConfig"]
    assert host["Runtime"] == "runsc"
    assert host["PidsLimit"] == GVISOR_PIDS_BASE + 64 * GVISOR_PIDS_PER_TASK
    assert {"Name": "nproc", "Soft": 64, "Hard": 64} in host["Ulimits"]


def test_podman_without_cgroups_gets_rlimits_set_before_the_command() -> None:
    spec = _spec()
    identity = sandbox_identity(PODMAN, 1000, 1000, invoker_uid=0, invoker_gid=0)
    config = container_config(
        spec, image="x", engine=PODMAN, identity=identity, mounts=[], labels={}
    )
    assert config["Entrypoint"] == ["python3"]
    assert config["Cmd"][:3] == ["-I", "-S", "-c"]
    assert config["Cmd"][4] == f"core=0,as={256 << 20},nproc=64,cpu=45"
    assert config["Cmd"][5:] == ["python3", "-I", "/opt/jhansi/entry.py"]
    assert config["HostConfig"]["Tmpfs"]["/var/tmp"].startswith("ro,")
    assert "Init" not in config["HostConfig"]


def test_masks_bind_an_empty_file_or_directory(tmp_path: Path) -> None:
    secret_dir = tmp_path / ".git"
    secret_dir.mkdir()
    secret_file = tmp_path / ".env"
    secret_file.write_text("KEY=1")
    empty = (Path("/m/file"), Path("/m/dir"))
    mounts = engine_mounts(
        (
            Mount(secret_file, "/work/.env", kind="empty"),
            Mount(secret_dir, "/work/.git", kind="empty"),
        ),
        empty,
    )
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in mounts] == [
        ("/m/file", "/work/.env", True),
        ("/m/dir", "/work/.git", True),
    ]
