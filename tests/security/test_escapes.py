"""The escape suite: hostile scripts through ``jhansi run`` on every backend.

Each script in ``escapes/`` exits 77 only if its escape worked, and 0 when it
was contained (so a script that crashed for another reason does not pass as
"contained"). The limit cases end the way the limit says: timed out (124),
killed for memory (137) or refused memory (MemoryError, exit 1).

Backends: bubblewrap, rootful Docker, rootless Podman, and Docker with gVisor
(runsc). Nothing is loosened for the tests: they run with jhansi's defaults plus
tighter limits, given as the flags a user would type.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import (
    BACKENDS,
    backend_env,
    prepare_jhansi_home,
    require_backend,
    run_jhansi,
)

ESCAPES = Path(__file__).parent / "escapes"
CANARY = "jhansi-canary-7f3a"


@dataclass(frozen=True)
class Target:
    """A backend under test and the environment that selects it."""

    name: str
    env: dict[str, str]
    home: Path
    project: Path
    work: Path
    """A directory for host-side canaries, outside every mount."""


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, shared_dir: Path) -> Target:
    name = request.param
    require_backend(request, name)
    base = shared_dir / f"{name}-{request.node.name.split('[')[0]}"
    base.mkdir()
    project = base / "project"
    (project / "sub").mkdir(parents=True)
    (project / ".git").mkdir()
    (project / ".git" / "config").write_text(f"[remote] token = {CANARY}\n")
    (project / ".env").write_text(f"API_KEY={CANARY}\n")
    (project / ".netrc").write_text(f"machine x password {CANARY}\n")
    (project / "sub" / "id_rsa").write_text(f"{CANARY}\n")
    for script in ESCAPES.glob("*.py"):
        shutil.copy(script, project / script.name)
    work = base / "outside"
    work.mkdir()
    (work / "canary.txt").write_text(CANARY)
    prepare_jhansi_home(name, base / "jhansi-home")
    env = {
        **backend_env(name),
        "JHANSI_HOME": str(base / "jhansi-home"),
        "JHANSI_ESCAPE_CANARY": CANARY,
    }
    return Target(name, env, base / "jhansi-home", project, work)


def jhansi_run(
    target: Target, script: str, *args: str, flags: tuple[str, ...] = (), timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    proc = run_jhansi(
        "run",
        "--json",
        *flags,
        str(target.project / script),
        *args,
        env=target.env,
        cwd=target.project,
        timeout=timeout,
    )
    assert proc.stdout, f"no JSON on stdout; stderr: {proc.stderr}"
    doc = json.loads(proc.stdout)
    return proc, doc


def assert_contained(proc: subprocess.CompletedProcess[str], doc: dict[str, object]) -> None:
    out = doc.get("stdout", {})
    err = doc.get("stderr", {})
    detail = f"stdout: {out}\nstderr: {err}\njhansi stderr: {proc.stderr}"
    assert proc.returncode != 77, "ESCAPED\n" + detail
    assert proc.returncode == 0, "the probe did not run to the end\n" + detail
    assert doc["status"] == "succeeded"


def test_cannot_read_files_outside_the_mounts(target: Target) -> None:
    # Another sandbox's home, with a secret in it, is outside this one's mounts too.
    other = run_jhansi(
        "run",
        "--sandbox",
        "other",
        str(target.project / "host_env.py"),
        env=target.env,
        cwd=target.project,
    )
    assert other.returncode == 0, other.stderr
    other_home = target.home / "data" / "sandboxes" / "other" / "home"
    (other_home / "secret.txt").write_text(CANARY)
    proc, doc = jhansi_run(
        target,
        "read_canary.py",
        str(target.work / "canary.txt"),
        str(other_home / "secret.txt"),
        "/etc/shadow",
        "/root/.bash_history",
    )
    assert_contained(proc, doc)


def test_cannot_write_the_project_or_the_root(target: Target) -> None:
    proc, doc = jhansi_run(target, "write_work.py")
    assert_contained(proc, doc)
    assert not (target.project / "pwned.txt").exists()
    stdout = str(doc["stdout"]["text"])  # type: ignore[index]
    if doc.get("layer"):
        # /work is copy-on-write: the write succeeded, into the sandbox's layer only.
        assert "wrote /work/pwned.txt" in stdout
        assert (Path(str(doc["layer"])) / "pwned.txt").read_text() == "pwned"
    else:
        # No copy-on-write mechanism here (rootless Podman): /work is read-only.
        assert target.name == "podman", doc.get("enforcement")
        assert "contained: /work/pwned.txt" in stdout


def test_masked_secrets_are_not_visible(target: Target) -> None:
    proc, doc = jhansi_run(target, "masked.py")
    assert_contained(proc, doc)


def test_no_network(target: Target) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        server.settimeout(60)
        try:
            conn, _ = server.accept()
            accepted.append(conn)
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        proc, doc = jhansi_run(target, "network.py", str(port))
    finally:
        server.close()
    assert_contained(proc, doc)
    assert not accepted
    assert "interfaces: ['lo']" in str(doc["stdout"])


def test_no_engine_socket(target: Target) -> None:
    proc, doc = jhansi_run(target, "engine_socket.py")
    assert_contained(proc, doc)


def test_no_privileges(target: Target) -> None:
    proc, doc = jhansi_run(target, "privileges.py")
    assert_contained(proc, doc)


def test_host_environment_not_visible(target: Target) -> None:
    proc, doc = jhansi_run(target, "host_env.py")
    assert_contained(proc, doc)


def test_host_processes_not_visible(target: Target) -> None:
    marker = f"jhansi-host-marker-{os.getpid()}"
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
    try:
        proc, doc = jhansi_run(target, "host_processes.py", marker[::-1])
        assert host.poll() is None, "the host process was killed"
    finally:
        host.kill()
        host.wait()
    assert_contained(proc, doc)


def test_fork_bomb_is_contained(target: Target) -> None:
    # gVisor at the default 256 (where its host threads once ran out and the sandbox died
    # with a silent exit 2), with memory enough for 256 Python processes in gVisor.
    limit, more = ("256", ("--memory", "2g")) if target.name == "gvisor" else ("64", ())
    proc, doc = jhansi_run(target, "fork_bomb.py", limit, flags=("--pids", limit, *more))
    assert_contained(proc, doc)
    # The script itself was refused (EAGAIN) at its own limit and went on to the end.
    out = str(doc["stdout"])
    assert "fork refused after" in out, out
    assert "Resource temporarily unavailable" in out, out
    assert "children:" in out, out


@pytest.mark.parametrize("target", ["docker", "gvisor"], indirect=True)
def test_a_killed_runtime_is_a_sandbox_error_not_the_scripts_exit(target: Target) -> None:
    """The runtime ends under a sleeping script: jhansi says so (exit 4), never "exit N".

    The sandbox is ended from the host as it would be by the host's OOM killer or by
    gVisor's kernel dying: SIGKILL to the container's first process on the host (for
    gVisor, its sandbox process, the user-space kernel itself).
    """
    script = target.project / "sleeper.py"
    script.write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n")
    cmd = [sys.executable, "-m", "jhansi", "run", "--json", str(script)]
    env = {**os.environ, **target.env}
    jhansi = subprocess.Popen(
        cmd, cwd=target.project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        pid = _container_pid_of(target.home, deadline=time.monotonic() + 60)
        os.kill(pid, 9)
        stdout, stderr = jhansi.communicate(timeout=60)
    finally:
        if jhansi.poll() is None:
            jhansi.kill()
            jhansi.communicate()
    doc = json.loads(stdout)
    detail = f"{doc}\n{stderr}"
    assert jhansi.returncode == 4, detail
    assert doc["status"] == "engine_error", detail
    assert doc["exit_code"] is None
    runtime = "the gVisor runtime (runsc)" if target.name == "gvisor" else "the runtime (runc)"
    assert str(doc["error"]).startswith(f"{runtime} ended the sandbox before the script"), detail
    assert "sleeping" in str(doc["stdout"])
    lines = [line for line in stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(lines) == 2, stderr
    assert runtime in lines[0], stderr
    end = json.loads(
        run_jhansi("ledger", "show", "--json", str(doc["run_id"]), env=target.env).stdout
    )["records"][-1]["body"]["result"]
    assert end["status"] == "engine_error", end
    assert runtime in str(end.get("error")), end


def _container_pid_of(home: Path, *, deadline: float) -> int:
    """The host pid of the running jhansi container that mounts a directory of the
    JHANSI_HOME ``home`` (its sandbox's home: /work is an overlay volume by default, whose
    source is no host directory of the test's)."""
    while time.monotonic() < deadline:
        ids = subprocess.run(
            ["docker", "ps", "-q", "--filter", "label=jhansi.run-id"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for container in ids:
            found = subprocess.run(
                [
                    "docker",
                    "inspect",
                    "-f",
                    "{{.State.Pid}} {{range .Mounts}}{{.Source}} {{end}}",
                    container,
                ],
                capture_output=True,
                text=True,
            ).stdout.split()
            if (
                found
                and any(Path(source).is_relative_to(home) for source in found[1:])
                and int(found[0]) > 0
            ):
                time.sleep(1)  # let the script print and fall asleep
                return int(found[0])
        time.sleep(0.2)
    raise AssertionError(f"no running container mounts a directory of {home}")


def test_memory_limit_kills_or_refuses(target: Target) -> None:
    proc, doc = jhansi_run(target, "memory.py", "128", flags=("--memory", "128m"))
    detail = f"{doc}\n{proc.stderr}"
    assert proc.returncode != 77, "ESCAPED\n" + detail
    if doc["status"] == "killed_oom":
        assert proc.returncode == 137
        assert "memory limit" in proc.stderr
    else:  # an address-space rlimit refuses the allocation instead of killing
        assert doc["status"] == "failed", detail
        assert "MemoryError" in str(doc["stdout"]) + str(doc["stderr"]), detail


def test_tmp_is_capped(target: Target) -> None:
    proc, doc = jhansi_run(target, "tmp_cap.py", "16", flags=("--tmp-size", "16m"))
    assert_contained(proc, doc)


def test_timeout_kills(target: Target) -> None:
    started = time.monotonic()
    proc, doc = jhansi_run(target, "timeout.py", "60", flags=("--timeout", "3"))
    elapsed = time.monotonic() - started
    assert proc.returncode == 124, f"{doc}\n{proc.stderr}"
    assert doc["status"] == "timed_out"
    assert "timed out after 3 s" in proc.stderr
    assert elapsed < 30
