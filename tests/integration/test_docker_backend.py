"""The docker backend against the real engines: Docker (runc), Docker with gVisor, rootless Podman.

Every test builds a :class:`SandboxSpec` directly (a project with the script, a
home, the bootstrap) in a 0755 directory under /tmp: rootless Podman's user
(jhansi-ci) must be able to reach it, which pytest's 0700 ``tmp_path`` forbids.
After every test no container of it is left in the engine.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import pytest

import jhansi.sandbox.entry
from jhansi.errors import SandboxError
from jhansi.sandbox.docker import DockerBackend
from jhansi.sandbox.docker.identity import sandbox_identity
from jhansi.sandbox.docker.labels import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    owner_labels,
)
from jhansi.sandbox.engine_client import EngineClient
from jhansi.sandbox.engines import EngineInfo, connect, describe
from jhansi.sandbox.interface import (
    ENTRY_DIR,
    HOME,
    PYTHON,
    WORKDIR,
    ExecResult,
    ExecStatus,
    Limits,
    Mount,
    SandboxSpec,
    Stream,
    spec_root_id,
)
from tests.conftest import PODMAN_HOST, RUNSC, TEST_IMAGE, Engine

ENTRY = Path(jhansi.sandbox.entry.__file__)
TEST_LABEL = "org.jhansi.test.docker-backend"

LIMITS = Limits(
    memory=128 * 1024 * 1024,
    cpus=1.0,
    pids=64,
    tmp_size=8 * 1024 * 1024,
    timeout=30,
    output_limit=64 * 1024,
)

ENGINES = [
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
    pytest.param("podman", marks=pytest.mark.podman, id="podman"),
    pytest.param("gvisor", marks=[pytest.mark.docker, pytest.mark.gvisor], id="gvisor"),
]

_described: dict[str, tuple[EngineClient, EngineInfo]] = {}


@dataclass
class Target:
    """One engine (and runtime) to run sandboxes on, and this test's label on them."""

    kind: str
    engine: Engine
    client: EngineClient
    info: EngineInfo
    runtime: str | None
    token: str

    def backend(self, **options: object) -> DockerBackend:
        """A backend for this engine; the test image is never pulled."""
        return DockerBackend(self.client, self.info, pull="never", **options)  # type: ignore[arg-type]

    def leftovers(self) -> list[str]:
        """Containers this test made that are still in the engine."""
        found = self.client.containers(labels=[f"{TEST_LABEL}={self.token}"])
        return [str(c["Id"]) for c in found]


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """Each engine in turn; fails the test if it left a container behind."""
    kind = request.param
    fixture = {"docker": "docker_engine", "podman": "podman_engine", "gvisor": "gvisor_engine"}
    engine: Engine = request.getfixturevalue(fixture[kind])
    if engine.url not in _described:
        client = connect(engine.url)
        _described[engine.url] = (client, describe(client, engine.url))
    client, info = _described[engine.url]
    found = Target(
        kind,
        engine,
        client,
        info,
        RUNSC if kind == "gvisor" else None,
        secrets.token_hex(6),
    )
    yield found
    left = found.leftovers()
    for container in left:
        client.container_remove(container, force=True)
    assert not left, f"containers left behind: {left}"


class Recorder:
    """An output sink that keeps every chunk and when it came."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, Stream, bytes]] = []
        self.lock = threading.Lock()

    def write(self, stream: Stream, data: bytes) -> None:
        with self.lock:
            self.chunks.append((time.monotonic(), stream, data))

    def text(self, stream: Stream) -> str:
        return b"".join(d for _, s, d in self.chunks if s == stream).decode()


@dataclass
class Sandbox:
    """A project dir with ``script.py``, a home, and the spec that runs them."""

    project: Path
    home: Path
    spec: SandboxSpec


def make_sandbox(
    target: Target,
    base: Path,
    script: str,
    *,
    limits: Limits = LIMITS,
    extra_mounts: tuple[Mount, ...] = (),
    project_read_only: bool = True,
    env: dict[str, str] | None = None,
    argv: tuple[str, ...] | None = None,
    interactive: bool = False,
) -> Sandbox:
    """Write ``script`` into a fresh project and build the spec that runs it."""
    project = base / "project"
    project.mkdir(mode=0o755)
    (project / "script.py").write_text(textwrap.dedent(script))
    home = base / "home"
    home.mkdir(mode=0o700)
    spec = SandboxSpec(
        run_id=f"test-{target.token}",
        argv=argv or (PYTHON, "-I", "-S", f"{ENTRY_DIR}/entry.py", "--", f"{WORKDIR}/script.py"),
        mounts=(
            Mount(project, WORKDIR, read_only=project_read_only),
            Mount(home, HOME, read_only=False, owned=True),
            Mount(ENTRY, f"{ENTRY_DIR}/entry.py"),
            *extra_mounts,
        ),
        env={
            "HOME": HOME,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **(env or {}),
        },
        limits=limits,
        image=TEST_IMAGE,
        python=None,
        labels={TEST_LABEL: target.token},
        runtime=target.runtime,
        interactive=interactive,
    )
    return Sandbox(project, home, spec)


def run(target: Target, sandbox: Sandbox, **options: object) -> tuple[ExecResult, Recorder]:
    sink = Recorder()
    result = target.backend().run(sandbox.spec, sink, **options)  # type: ignore[arg-type]
    return result, sink


def out(result: ExecResult) -> str:
    return result.stdout.data.decode()


def err(result: ExecResult) -> str:
    return result.stderr.data.decode()


# ------------------------------------------------------------------ the tests --


def test_runs_as_non_root_and_streams_output_live(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        import os, sys, time
        print("uid", os.getuid(), "gid", os.getgid(), "cwd", os.getcwd(), flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        time.sleep(1.0)
        print("done", flush=True)
        """,
    )
    result, sink = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    assert result.exit_code == 0
    identity = sandbox_identity(
        target.info, sandbox.spec.uid, sandbox.spec.gid, root_id=spec_root_id(sandbox.spec)
    )
    assert identity.uid != 0
    assert f"uid {identity.uid} gid {identity.gid} cwd /work" in out(result)
    assert out(result).endswith("done\n")
    assert err(result) == "to stderr\n"
    # Live: the first line reached the sink well before the last one was written.
    first = next(t for t, s, d in sink.chunks if s == "stdout" and b"uid" in d)
    last = next(t for t, s, d in sink.chunks if s == "stdout" and b"done" in d)
    assert last - first > 0.5
    assert sink.text("stdout") == out(result)
    assert sink.text("stderr") == "to stderr\n"
    assert result.enforcement["user"] == identity.how


def test_exit_code_passes_through(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(target, shared_dir, "import sys\nprint('bye')\nsys.exit(7)\n")
    result, _ = run(target, sandbox)
    assert result.status is ExecStatus.FAILED
    assert result.exit_code == 7
    assert out(result) == "bye\n"


def test_output_keeps_the_tail(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        "import sys\nsys.stdout.write('x' * 200_000 + 'END\\n')\n",
        limits=replace(LIMITS, output_limit=1000),
    )
    result, sink = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED
    assert result.stdout.truncated
    assert result.stdout.total == 200_004
    assert len(result.stdout.data) == 1000
    assert result.stdout.data.endswith(b"xEND\n")
    # The sink saw all of it.
    assert len(sink.text("stdout")) == 200_004


@pytest.mark.parametrize("read_only", [True, False], ids=["ro", "rw"])
def test_work_is_read_only_unless_asked(target: Target, shared_dir: Path, read_only: bool) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        try:
            with open("/work/new.txt", "w") as handle:
                handle.write("written")
            print("wrote")
        except OSError as exc:
            print("refused", exc.errno)
        """,
        project_read_only=read_only,
    )
    # Writable for everyone on the host: only the mount's read-only flag can refuse.
    sandbox.project.chmod(0o777)
    result, _ = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    if read_only:
        assert out(result) == "refused 30\n"  # EROFS
        assert not (sandbox.project / "new.txt").exists()
    else:
        assert out(result) == "wrote\n"
        assert (sandbox.project / "new.txt").read_text() == "written"


def test_rw_project_the_sandbox_cannot_write_is_refused(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(target, shared_dir, "print(1)\n", project_read_only=False)
    identity = sandbox_identity(
        target.info, sandbox.spec.uid, sandbox.spec.gid, root_id=spec_root_id(sandbox.spec)
    )
    if identity.host_uid == os.getuid():
        pytest.skip("the sandbox is the invoking user here: it can write its own project")
    with pytest.raises(SandboxError, match=r"cannot write .*project") as raised:
        run(target, sandbox)
    assert "chmod" in raised.value.hint  # (jhansi run --rw never mounts a project like this)


def test_masks_hide_file_and_directory_content(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        import os
        print("env:", repr(open("/work/.env").read()))
        print("git:", sorted(os.listdir("/work/.git")))
        print("script visible:", os.path.exists("/work/script.py"))
        for path in ("/work/.env", "/work/.git/config"):
            try:
                open(path, "w").write("x")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, exc.errno)
        """,
    )
    (sandbox.project / ".env").write_text("API_KEY=sk-very-secret\n")
    git = sandbox.project / ".git"
    git.mkdir()
    (git / "config").write_text("[credential]\n token = ghp_secret\n")
    spec = replace(
        sandbox.spec,
        mounts=(
            *sandbox.spec.mounts,
            Mount(sandbox.project / ".env", "/work/.env", kind="empty"),
            Mount(git, "/work/.git", kind="empty"),
        ),
    )
    result, _ = run(target, replace(sandbox, spec=spec))
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    text = out(result)
    assert "env: ''" in text
    assert "git: []" in text
    assert "script visible: True" in text
    # EROFS; gVisor checks the (read-only) mode bits first and says EACCES.
    assert re.search(r"refused /work/\.env (30|13)", text), text
    assert re.search(r"refused /work/\.git/config (30|13)", text), text
    assert "secret" not in text


def test_no_network(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        import socket
        print("interfaces:", sorted(name for _, name in socket.if_nameindex()))
        for host, port in (("1.1.1.1", 53), ("169.254.169.254", 80)):
            try:
                socket.create_connection((host, port), timeout=3).close()
                print("reached", host)
            except OSError as exc:
                print("unreachable", host, type(exc).__name__)
        """,
    )
    result, _ = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    text = out(result)
    assert "interfaces: ['lo']" in text
    assert "unreachable 1.1.1.1" in text
    assert "unreachable 169.254.169.254" in text
    assert "reached" not in text.replace("unreachable", "")


def test_host_environment_is_not_visible(
    target: Target, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JHANSI_TEST_HOST_SECRET", "do-not-leak")
    sandbox = make_sandbox(
        target,
        shared_dir,
        "import os\nfor k, v in sorted(os.environ.items()): print(k, '=', v)\n",
        env={"FROM_SPEC": "yes"},
    )
    result, _ = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    text = out(result)
    assert "FROM_SPEC = yes" in text
    assert f"HOME = {HOME}" in text
    assert "do-not-leak" not in text
    assert "JHANSI_TEST_HOST_SECRET" not in text


def test_root_filesystem_is_read_only(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        # /var/tmp is world-writable in the image: only a read-only root stops this.
        for path in ("/var/tmp/x", "/etc/x", "/x"):
            try:
                open(path, "w").write("x")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, exc.errno)
        """,
    )
    result, _ = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    assert "refused /var/tmp/x 30" in out(result)  # EROFS, not a permission error
    assert "wrote" not in out(result)


def test_tmp_is_writable_and_capped(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        import os
        open("/tmp/small", "w").write("ok")
        print("small ok")
        written = 0
        try:
            with open("/tmp/big", "wb") as handle:
                for _ in range(32):
                    handle.write(b"x" * 1024 * 1024)
                    handle.flush()
                    written += 1
            print("wrote all", written)
        except OSError as exc:
            print("stopped at", written, "MiB errno", exc.errno)
        """,
    )
    result, _ = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    text = out(result)
    assert "small ok" in text
    assert "errno 28" in text  # ENOSPC at the 8 MiB cap
    assert int(text.split("stopped at ")[1].split()[0]) <= 8


def test_timeout_kills_and_removes_the_container(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        "import time\nprint('started', flush=True)\ntime.sleep(120)\nprint('never')\n",
        limits=replace(LIMITS, timeout=2),
    )
    began = time.monotonic()
    result, _ = run(target, sandbox)
    elapsed = time.monotonic() - began
    assert result.status is ExecStatus.TIMED_OUT
    assert result.exit_code is None
    assert result.signal == 9
    assert out(result) == "started\n"
    assert 2 <= result.duration_ms / 1000 < 10
    assert elapsed < 20
    assert target.leftovers() == []


def test_memory_limit_is_enforced(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        import sys
        held = []
        for i in range(64):  # up to 1 GiB, 16 MiB at a time, every page touched
            held.append(b"\\x01" * (16 * 1024 * 1024))
            print("MiB", (i + 1) * 16, flush=True)
        print("allocated 1 GiB: the limit did not hold")
        """,
        limits=replace(LIMITS, memory=96 * 1024 * 1024),
    )
    result, _ = run(target, sandbox)
    assert "the limit did not hold" not in out(result)
    if result.enforcement["memory"].startswith("RLIMIT_AS"):
        # No memory cgroup for this engine: the address-space rlimit refuses the allocation.
        assert result.status is ExecStatus.FAILED
        assert "MemoryError" in err(result)
    else:
        assert result.status is ExecStatus.KILLED_OOM, (result, err(result))
        assert result.signal == 9
    last = out(result).strip().splitlines()[-1]
    assert int(last.split()[1]) <= 96


def test_fork_bomb_is_contained(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        import os, time
        children = 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError as exc:
                print("fork refused after", children, "errno", exc.errno, flush=True)
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            children += 1
        else:
            print("forked all", children, flush=True)
        """,
        # Room for gVisor, whose kernel charges each forked interpreter to the sandbox.
        limits=replace(LIMITS, pids=32, memory=512 * 1024 * 1024),
    )
    result, _ = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED, (result, err(result))
    text = out(result)
    assert "fork refused after" in text, text
    assert int(text.split("after ")[1].split()[0]) < 32


def test_home_files_belong_to_the_sandbox_user_and_root_can_delete_them(
    target: Target, shared_dir: Path
) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        """
        import os
        os.makedirs(os.path.expanduser("~/deep/er"))
        with open(os.path.expanduser("~/deep/er/file.txt"), "w") as handle:
            handle.write("kept")
        os.chmod(os.path.expanduser("~/deep/er"), 0o500)
        os.chmod(os.path.expanduser("~/deep"), 0o500)
        print("ok")
        """,
    )
    result, _ = run(target, sandbox)
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    identity = sandbox_identity(
        target.info, sandbox.spec.uid, sandbox.spec.gid, root_id=spec_root_id(sandbox.spec)
    )
    written = sandbox.home / "deep" / "er" / "file.txt"
    assert written.read_text() == "kept"
    assert written.stat().st_uid == identity.host_uid
    assert sandbox.home.stat().st_uid == identity.host_uid
    shutil.rmtree(sandbox.home)  # as the invoking user (root here)
    assert not sandbox.home.exists()


def test_interactive_stdin_is_forwarded(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(
        target,
        shared_dir,
        "",
        argv=(PYTHON, "-I", "-S", f"{ENTRY_DIR}/entry.py", "--interactive"),
        interactive=True,
    )
    result, _ = run(
        target, sandbox, stdin=io.BytesIO(b"print(6 * 7)\nimport os\nprint(os.getuid() != 0)\n")
    )
    assert result.status is ExecStatus.SUCCEEDED, err(result)
    assert out(result) == "42\nTrue\n"


def test_prune_removes_containers_of_dead_owners(target: Target, shared_dir: Path) -> None:
    client = target.client
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    labels = {TEST_LABEL: target.token}
    mine = owner_labels()
    config = {
        "Image": TEST_IMAGE,
        "Cmd": ["sleep", "60"],
        "User": "1000:1000",
        "HostConfig": {"NetworkMode": "none", "LogConfig": {"Type": "none", "Config": {}}},
    }
    orphan = client.container_create(
        {
            **config,
            "Labels": {
                **labels,
                LABEL_OWNER_PID: str(dead.pid),
                LABEL_OWNER_START: "1",
                LABEL_OWNER_HOST: socket.gethostname(),
            },
        }
    )
    client.container_start(orphan)
    # Our own pid, but a different start time: the pid was reused, the owner is gone.
    reused = client.container_create(
        {**config, "Labels": {**labels, **mine, LABEL_OWNER_START: "1"}}
    )
    alive = client.container_create({**config, "Labels": {**labels, **mine}})
    elsewhere = client.container_create(
        {
            **config,
            "Labels": {**labels, LABEL_OWNER_PID: str(dead.pid), LABEL_OWNER_HOST: "another-host"},
        }
    )
    try:
        removed = target.backend().prune()
        remaining = set(target.leftovers())
        assert orphan not in remaining
        assert reused not in remaining
        assert alive in remaining
        assert elsewhere in remaining
        assert removed >= 2
    finally:
        for container in (alive, elsewhere):
            client.container_remove(container, force=True)


def test_missing_image_names_the_fix(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(target, shared_dir, "print(1)\n")
    spec = replace(sandbox.spec, image="jhansi-test-absent:never")
    with pytest.raises(
        SandboxError, match="image jhansi-test-absent:never is not in the engine"
    ) as raised:
        target.backend().run(spec, Recorder())
    assert "pull jhansi-test-absent:never" in raised.value.hint
    assert "--image" in raised.value.hint


def test_failed_pull_names_the_image(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(target, shared_dir, "print(1)\n")
    # A registry on a closed local port: refused at once, no network needed.
    image = "127.0.0.1:9/jhansi-test-absent:1"
    events: list[object] = []
    backend = DockerBackend(target.client, target.info, pull="missing", on_pull=events.append)
    with pytest.raises(SandboxError, match=re.escape(f"cannot pull the image {image}")) as raised:
        backend.info(replace(sandbox.spec, image=image))
    assert "--image" in raised.value.hint


def test_info_identifies_engine_and_image(target: Target, shared_dir: Path) -> None:
    sandbox = make_sandbox(target, shared_dir, "print(1)\n")
    info = target.backend().info(sandbox.spec)
    assert info.backend == "docker"
    assert info.details["engine"] == target.engine.name
    assert info.details["rootless"] == ("true" if target.engine.rootless else "false")
    assert info.details["url"] == target.engine.url
    assert info.details["runtime"] == (target.runtime or "runc")
    assert info.details["image"] == TEST_IMAGE
    expected = target.engine.client.images.get(TEST_IMAGE).id
    assert info.details["image_digest"] == expected


@pytest.mark.docker
def test_unregistered_runtime_is_refused_with_the_fix(
    docker_engine: Engine, shared_dir: Path
) -> None:
    client = connect(docker_engine.url)
    backend = DockerBackend(client, describe(client, docker_engine.url), pull="never")
    target = Target("docker", docker_engine, client, backend.engine, "kata-nope", "x")
    sandbox = make_sandbox(target, shared_dir, "print(1)\n")
    with pytest.raises(SandboxError, match="'kata-nope' is not registered") as raised:
        backend.run(sandbox.spec, Recorder())
    assert "daemon.json" in raised.value.hint


@pytest.mark.podman
def test_podman_user_must_reach_the_mounts(podman_engine: Engine, tmp_path: Path) -> None:
    # pytest's tmp_path is inside /tmp/pytest-of-root (0700): jhansi-ci cannot get in.
    client = connect(podman_engine.url)
    info = describe(client, podman_engine.url)
    target = Target("podman", podman_engine, client, info, None, secrets.token_hex(6))
    sandbox = make_sandbox(target, tmp_path, "print(1)\n")
    with pytest.raises(
        SandboxError,
        match=r"the engine's user \(jhansi-ci, uid \d+\) cannot read /tmp/pytest-of-root",
    ):
        DockerBackend(client, info, pull="never").run(sandbox.spec, Recorder())
    assert target.leftovers() == []


KEEP_ID_PROGRAM = """
import os, sys, tempfile
from pathlib import Path
import jhansi.sandbox.entry
from jhansi.sandbox.docker import DockerBackend
from jhansi.sandbox.interface import HOME, PYTHON, Limits, Mount, SandboxSpec

base = Path(sys.argv[1])
(base / "project").mkdir()
(base / "project" / "script.py").write_text(
    "import os\\nprint(os.getuid())\\nopen(os.path.expanduser('~/made'), 'w').write('x')\\n"
)
(base / "home").mkdir(mode=0o700)
spec = SandboxSpec(
    run_id="keep-id",
    argv=(PYTHON, "-I", "-S", "/opt/jhansi/entry.py", "--", "/work/script.py"),
    mounts=(
        Mount(base / "project", "/work"),
        Mount(base / "home", HOME, read_only=False),
        Mount(Path(jhansi.sandbox.entry.__file__), "/opt/jhansi/entry.py"),
    ),
    env={"HOME": HOME},
    limits=Limits(memory=1 << 28, cpus=1, pids=64, tmp_size=1 << 24, timeout=60, output_limit=1000),
    image=sys.argv[3],
    python=None,
)
class Sink:
    def write(self, stream, data):
        pass
result = DockerBackend.from_settings(sys.argv[2], pull="never").run(spec, Sink())
print(result.status.value, result.stdout.data.decode().strip(), result.enforcement["user"])
print(os.stat(base / "home" / "made").st_uid)
"""


@pytest.mark.podman
def test_rootless_podman_run_by_its_own_user_keeps_the_uid(
    podman_engine: Engine, shared_dir: Path
) -> None:
    user = "jhansi-ci"
    if not shutil.which("runuser") or not Path("/usr/bin/python3").exists():
        pytest.skip("needs runuser and /usr/bin/python3 to act as the engine's user")
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    os.chown(shared_dir, uid, uid)
    program = shared_dir / "program.py"
    program.write_text(KEEP_ID_PROGRAM)
    work = shared_dir / "run"
    work.mkdir()
    os.chown(work, uid, uid)
    proc = subprocess.run(
        [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            "-i",
            # jhansi's checkout, and where its dependencies (the docker SDK) are installed:
            # the same Python minor version as Debian's, which runs it.
            f"PYTHONPATH={Path(jhansi.sandbox.entry.__file__).parents[2]}:"
            f"{Path(docker.__file__).parents[1]}",
            f"HOME={work}",
            "/usr/bin/python3",
            str(program),
            str(work),
            PODMAN_HOST,
            TEST_IMAGE,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    status, line = proc.stdout.splitlines()[0], proc.stdout.splitlines()[1]
    assert status.startswith(f"succeeded {uid} uid {uid} (yours, Podman keep-id)"), proc.stdout
    assert int(line) == uid


INTERRUPT_PROGRAM = """
import sys
from pathlib import Path
import jhansi.sandbox.entry
from jhansi.sandbox.docker import DockerBackend
from jhansi.sandbox.interface import HOME, PYTHON, Limits, Mount, SandboxSpec

base = Path(sys.argv[1])
spec = SandboxSpec(
    run_id="interrupted",
    argv=(PYTHON, "-c", "import time; print('running', flush=True); time.sleep(120)"),
    mounts=(Mount(base, "/work"),),
    env={"HOME": HOME},
    limits=Limits(
        memory=1 << 28, cpus=1, pids=64, tmp_size=1 << 24, timeout=120, output_limit=1000
    ),
    image=sys.argv[3],
    python=None,
    labels={sys.argv[4]: sys.argv[5]},
)
class Sink:
    def write(self, stream, data):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
DockerBackend.from_settings(sys.argv[2], pull="never").run(spec, Sink())
"""


@pytest.mark.docker
def test_ctrl_c_removes_the_container_and_is_re_raised(
    docker_engine: Engine, shared_dir: Path
) -> None:
    token = secrets.token_hex(6)
    program = shared_dir / "program.py"
    program.write_text(INTERRUPT_PROGRAM)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(program),
            str(shared_dir),
            docker_engine.url,
            TEST_IMAGE,
            TEST_LABEL,
            token,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(jhansi.sandbox.entry.__file__).parents[2])},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "running\n"  # the sandbox is up
    client = connect(docker_engine.url)
    assert client.containers(labels=[f"{TEST_LABEL}={token}"])
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert client.containers(labels=[f"{TEST_LABEL}={token}"]) == []
