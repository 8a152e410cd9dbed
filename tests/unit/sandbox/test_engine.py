"""The stdlib Engine API client: framing, requests, addresses, and a fake engine on a socket.

The last section tests the docker backend's pure rules (who the sandbox is, the
container's configuration) on top of the engine descriptions made here.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from jhansi.errors import SandboxError
from jhansi.sandbox.docker import (
    GVISOR_PIDS_BASE,
    GVISOR_PIDS_PER_TASK,
    container_config,
    engine_mounts,
    sandbox_identity,
)
from jhansi.sandbox.engine import (
    Address,
    EngineClient,
    EngineError,
    EngineInfo,
    EngineTimeout,
    FrameDecoder,
    IdMapping,
    PullProgress,
    build_request,
    connect,
    describe,
    iter_json_stream,
    map_id,
    parse_head,
    parse_url,
    split_reference,
)
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


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


# ---------------------------------------------------------------- frames --


def test_frames_are_demultiplexed() -> None:
    decoder = FrameDecoder()
    data = frame(1, b"out") + frame(2, b"err") + frame(1, b"more")
    assert decoder.feed(data) == [("stdout", b"out"), ("stderr", b"err"), ("stdout", b"more")]
    assert decoder.pending == 0


def test_frames_split_anywhere_are_reassembled() -> None:
    data = frame(1, b"hello world") + frame(2, b"x" * 70000) + frame(1, b"!")
    for step in (1, 3, 7, 8, 9, 4096):
        decoder = FrameDecoder()
        got: list[tuple[str, bytes]] = []
        for start in range(0, len(data), step):
            got += decoder.feed(data[start : start + step])
        assert got == [("stdout", b"hello world"), ("stderr", b"x" * 70000), ("stdout", b"!")]
        assert decoder.pending == 0


def test_incomplete_frame_stays_pending() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(1, b"abcdef")[:-2]) == []
    assert decoder.pending == 12


def test_engine_error_stream_is_reported_as_stderr_and_empty_frames_dropped() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(3, b"oci error") + frame(1, b"")) == [("stderr", b"oci error")]


def test_a_raw_stream_is_not_taken_for_frames() -> None:
    with pytest.raises(ValueError, match="bad stream type"):
        FrameDecoder().feed(b"Traceback (most recent call last)")


# -------------------------------------------------------------- requests --


def test_request_with_json_body() -> None:
    raw = build_request("POST", "/v1.41/containers/create?name=x", host="docker", body=b'{"a":1}')
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1.41/containers/create?name=x HTTP/1.1"
    assert "Host: docker" in lines
    assert "Content-Type: application/json" in lines
    assert "Content-Length: 7" in lines
    assert "Connection: close" in lines
    assert body == b'{"a":1}'


def test_post_without_body_says_so_and_get_has_no_length() -> None:
    post = build_request("POST", "/v1.41/containers/x/start", host="docker").decode()
    assert "Content-Length: 0\r\n" in post
    assert "Content-Type" not in post
    get = build_request("GET", "/_ping", host="docker").decode()
    assert "Content-Length" not in get
    assert get.endswith("\r\n\r\n")


def test_upgrade_request_replaces_connection_close() -> None:
    raw = build_request(
        "POST", "/x/attach", host="docker", headers={"Connection": "Upgrade", "Upgrade": "tcp"}
    ).decode()
    assert "Connection: Upgrade\r\n" in raw
    assert "Upgrade: tcp\r\n" in raw
    assert "close" not in raw


def test_target_is_versioned_and_encodes_the_query() -> None:
    client = EngineClient("unix:///nonexistent.sock", api_version="1.41")
    assert client.target("/_ping", versioned=False) == "/_ping"
    assert client.target("/containers/json", {"all": True, "size": False, "x": None}) == (
        "/v1.41/containers/json?all=1&size=0"
    )
    filters = json.dumps({"label": ["jhansi.owner-pid", "a=b c"]})
    target = client.target("/containers/json", {"filters": filters})
    assert target == (
        "/v1.41/containers/json?filters=%7B%22label%22%3A+%5B%22jhansi.owner-pid%22%2C+"
        "%22a%3Db+c%22%5D%7D"
    )


def test_response_head_is_parsed() -> None:
    status, reason, headers = parse_head(
        b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
        b"Connection: Upgrade\r\n\r\n"
    )
    assert (status, reason) == (101, "UPGRADED")
    assert headers["content-type"] == "application/vnd.docker.raw-stream"
    with pytest.raises(ValueError, match="not an HTTP response"):
        parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_json_stream_survives_any_split() -> None:
    events = [{"status": "Pulling fs layer", "id": "abc"}, {"status": "Téléchargé", "id": "é"}]
    data = "\r\n".join(json.dumps(e, ensure_ascii=False) for e in events).encode() + b"\n"
    for step in (1, 2, 5, len(data)):
        chunks = iter([data[i : i + step] for i in range(0, len(data), step)])
        assert list(iter_json_stream(chunks)) == events


def test_references_never_pull_every_tag() -> None:
    assert split_reference("python:3.12-slim") == ("python", "3.12-slim")
    assert split_reference("python") == ("python", "latest")
    assert split_reference("localhost:5000/team/img") == ("localhost:5000/team/img", "latest")
    assert split_reference("localhost:5000/img:1") == ("localhost:5000/img", "1")
    assert split_reference("python@sha256:" + "a" * 64) == ("python", "sha256:" + "a" * 64)


def test_id_mapping() -> None:
    mappings = (IdMapping(0, 1001, 1), IdMapping(1, 100000, 65536))
    assert map_id(mappings, 0) == 1001
    assert map_id(mappings, 1000) == 100999
    assert map_id(mappings, 65536) == 165535
    assert map_id(mappings, 65537) is None


# ------------------------------------------------------------- addresses --


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("unix:///var/run/docker.sock", Address("unix", path="/var/run/docker.sock")),
        ("unix://run/podman.sock", Address("unix", path="/run/podman.sock")),
        ("/run/podman.sock", Address("unix", path="/run/podman.sock")),
        ("tcp://10.0.0.2:2375", Address("tcp", host="10.0.0.2", port=2375)),
        ("tcp://engine", Address("tcp", host="engine", port=2375)),
        ("http://[::1]:2380", Address("tcp", host="::1", port=2380)),
    ],
)
def test_usable_addresses(url: str, address: Address) -> None:
    assert parse_url(url, {}) == address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ssh://me@build-host", "does not support ssh:// engines"),
        ("https://engine:2376", "does not support TLS"),
        ("npipe:////./pipe/docker_engine", "Windows named pipes"),
        ("docker.sock", "not a URL"),
    ],
)
def test_unusable_addresses_are_refused_with_the_way_round(url: str, message: str) -> None:
    with pytest.raises(SandboxError, match=message) as raised:
        parse_url(url, {})
    assert "ssh -nNT -L" in raised.value.hint


def test_tls_asked_for_by_the_environment_is_refused() -> None:
    with pytest.raises(SandboxError, match="DOCKER_TLS_VERIFY"):
        parse_url("tcp://engine:2376", {"DOCKER_TLS_VERIFY": "1"})


# ------------------------------------------------------ a fake engine --

Handler = Callable[[str, str, bytes], bytes]


class FakeEngine:
    """A unix-socket server answering each request with what ``handler`` returns."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[tuple[str, str, bytes]] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                length = next(
                    (int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length")),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append((method, target, body))
                answer = self.handler(method, target, body)
                if not answer:
                    # Never answer: hold the connection until the client gives up.
                    while conn.recv(65536):
                        pass
                    continue
                conn.sendall(answer)
                if b"101 UPGRADED" in answer[:40]:
                    # Keep the hijacked stream open until the client half-closes, echoing stdin.
                    while chunk := conn.recv(65536):
                        conn.sendall(frame(1, chunk.upper()))

    def close(self) -> None:
        self.server.close()


def respond(status: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Handler], FakeEngine]]:
    engines: list[FakeEngine] = []

    def start(handler: Handler) -> FakeEngine:
        engine = FakeEngine(tmp_path / f"engine{len(engines)}.sock", handler)
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.close()


PING = {"Api-Version": "1.43", "Server": "Docker/24.0.7 (linux)"}


def test_ping_adopts_the_engines_api_version(fake: Callable[[Handler], FakeEngine]) -> None:
    engine = fake(lambda m, t, b: respond("200 OK", b"OK", PING))
    client = connect(engine.url)
    assert client.api_version == "1.43"
    assert client.target("/info") == "/v1.43/info"
    assert engine.requests[0][:2] == ("GET", "/_ping")


def test_engine_errors_carry_its_message(fake: Callable[[Handler], FakeEngine]) -> None:
    body = json.dumps({"message": "No such image: nope:1"}).encode()
    engine = fake(lambda m, t, b: respond("404 Not Found", body))
    client = EngineClient(engine.url)
    with pytest.raises(
        EngineError, match="could not start the sandbox container: No such image: nope:1"
    ) as raised:
        client.container_start("abc")
    assert raised.value.status == 404
    assert client.image_inspect("nope:1") is None


def test_chunked_bodies_are_decoded(fake: Callable[[Handler], FakeEngine]) -> None:
    doc = [{"Id": "a" * 64, "Labels": {"jhansi.owner-pid": "1"}}]
    data = json.dumps(doc).encode()
    engine = fake(
        lambda m, t, b: respond(
            "200 OK", chunked(data[:10], data[10:]), {"Transfer-Encoding": "chunked"}
        )
    )
    assert EngineClient(engine.url).containers(labels=["jhansi.owner-pid"]) == doc
    assert "filters=" in engine.requests[0][1]


def test_create_sends_the_config(fake: Callable[[Handler], FakeEngine]) -> None:
    engine = fake(lambda m, t, b: respond("201 Created", b'{"Id": "c0ffee", "Warnings": []}'))
    assert EngineClient(engine.url).container_create({"Image": "x"}, name="jhansi-1") == "c0ffee"
    method, target, body = engine.requests[0]
    assert (method, target) == ("POST", "/v1.41/containers/create?name=jhansi-1")
    assert json.loads(body) == {"Image": "x"}


def test_attach_keeps_output_sent_with_the_upgrade(fake: Callable[[Handler], FakeEngine]) -> None:
    # The first frames arrive in the same packet as the 101 answer.
    upgrade = (
        b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n" + frame(1, b"early ") + frame(2, b"err")
    )
    engine = fake(lambda m, t, b: upgrade)
    attachment = EngineClient(engine.url).attach("abc", stdin=True)
    attachment.send(b"typed")
    attachment.close_stdin()
    assert list(attachment.frames()) == [
        ("stdout", b"early "),
        ("stderr", b"err"),
        ("stdout", b"TYPED"),
    ]
    attachment.close()
    assert "stdin=1" in engine.requests[0][1]


def test_attach_refused_is_an_engine_error(fake: Callable[[Handler], FakeEngine]) -> None:
    body = b'{"message": "can only attach to created or running containers"}'
    engine = fake(lambda m, t, b: respond("409 Conflict", body))
    with pytest.raises(EngineError, match="can only attach"):
        EngineClient(engine.url).attach("abc")


def test_pull_reports_progress(fake: Callable[[Handler], FakeEngine]) -> None:
    events = [
        {"status": "Pulling from library/python", "id": "3.12-slim"},
        {"status": "Downloading", "id": "l1", "progressDetail": {"current": 5, "total": 10}},
        {"status": "Status: Downloaded newer image for python:3.12-slim"},
    ]
    stream = b"".join(json.dumps(e).encode() + b"\r\n" for e in events)
    engine = fake(
        lambda m, t, b: respond(
            "200 OK", chunked(stream[:30], stream[30:]), {"Transfer-Encoding": "chunked"}
        )
    )
    seen: list[PullProgress] = []
    EngineClient(engine.url).image_pull("python:3.12-slim", seen.append)
    assert engine.requests[0][1] == "/v1.41/images/create?fromImage=python&tag=3.12-slim"
    assert seen[1] == PullProgress("python:3.12-slim", "Downloading", "l1", 5, 10)
    assert len(seen) == 3


def test_pull_failure_inside_the_stream_names_the_image(
    fake: Callable[[Handler], FakeEngine],
) -> None:
    stream = json.dumps(
        {"errorDetail": {"message": "manifest unknown"}, "error": "manifest unknown"}
    ).encode()
    engine = fake(lambda m, t, b: respond("200 OK", stream))
    with pytest.raises(
        SandboxError, match="cannot pull the image python:9: manifest unknown"
    ) as raised:
        EngineClient(engine.url).image_pull("python:9")
    assert "docker pull python:9" in raised.value.hint
    assert "--image" in raised.value.hint


def test_wait_gives_up_at_the_timeout(fake: Callable[[Handler], FakeEngine]) -> None:
    engine = fake(lambda m, t, b: b"")  # never answers
    client = EngineClient(engine.url)
    assert client.container_wait("abc", timeout=0.2) is None
    with pytest.raises(EngineTimeout, match="did not answer POST"):
        client.request("POST", "/containers/abc/stop", timeout=0.2)


def test_nothing_listening_is_connection_refused(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    with pytest.raises(SandboxError, match="connection refused") as raised:
        connect(f"unix://{path}")
    assert "DOCKER_HOST" in raised.value.hint
    with pytest.raises(SandboxError, match="socket does not exist"):
        connect(f"unix://{tmp_path}/absent.sock")


def test_podman_is_described_from_its_own_api(fake: Callable[[Handler], FakeEngine]) -> None:
    libpod = {
        "host": {
            "security": {"rootless": True},
            "cgroupControllers": [],
            "idMappings": {
                "uidmap": [
                    {"container_id": 0, "host_id": 1001, "size": 1},
                    {"container_id": 1, "host_id": 100000, "size": 65536},
                ],
                "gidmap": [{"container_id": 0, "host_id": 1001, "size": 1}],
            },
        },
        "version": {"Version": "4.3.1"},
    }
    info = {
        "SecurityOptions": ["name=seccomp,profile=default"],
        "MemoryLimit": True,
        "PidsLimit": True,
        "Runtimes": {"runc": {}, "crun": {}},
        "DefaultRuntime": "runc",
        "CgroupVersion": "1",
        "ServerVersion": "4.3.1",
    }

    def handler(method: str, target: str, body: bytes) -> bytes:
        if target == "/_ping":
            return respond("200 OK", b"OK", {"Api-Version": "1.41", "Libpod-Api-Version": "4.3.1"})
        if target.endswith("/libpod/info"):
            return respond("200 OK", json.dumps(libpod).encode())
        return respond("200 OK", json.dumps(info).encode())

    engine = fake(handler)
    described: EngineInfo = describe(connect(engine.url), engine.url)
    assert described.description == "podman 4.3.1 (rootless)"
    assert described.limits == frozenset()  # its /info claims limits it cannot set
    assert described.engine_uid == 1001
    assert described.runtimes == ("crun", "runc")
    assert {t for _, t, _ in engine.requests} == {"/_ping", "/v1.41/info", "/v1.41/libpod/info"}


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
