"""The helper (``jhansi.helper``): warm runs forked from a process with jhansi loaded.

Everything here is real: the console path (``python -m jhansi``) starts a real
helper in a private directory, later runs go through its socket to a forked
child that runs the real bwrap sandbox and writes the real ledger. The suite's
other tests run with ``JHANSI_HELPER=off`` (``tests/conftest.py``); these turn it
on, each in its own helper directory, and stop their helpers at the end.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jhansi.cli import _helper_client as client
from jhansi.errors import ExitCode
from tests.conftest import backend_env, require_backend


@pytest.fixture
def helper_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a user with the helper on, in a private (short) directory."""
    require_backend(request, "bwrap")
    directory = Path(tempfile.mkdtemp(prefix="jh-"))  # a socket path must fit 107 bytes
    # Made now, not by the first run: the tests run `python -m jhansi` in tmp_path,
    # which is then on the import path, so a new entry there changes the helper's key.
    Path(os.environ["JHANSI_HOME"]).mkdir(parents=True, exist_ok=True)
    # tmp_path is the project: the sandbox's host uid (1000 when root runs the tests,
    # never root) must be able to read it, as for rootful Docker.
    tmp_path.chmod(0o755)
    env = {
        **os.environ,
        "JHANSI_HELPER": "on",
        "JHANSI_HELPER_DIR": str(directory / "helper"),
        "JHANSI_HELPER_IDLE": "120",
        "JHANSI_SANDBOX_BACKEND": "bwrap",
    }
    try:
        yield env
    finally:
        jhansi(["helper", "stop", "--all"], env, tmp_path)
        shutil.rmtree(directory, ignore_errors=True)


def jhansi(
    args: list[str], env: dict[str, str], cwd: Path, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """``python -m jhansi ARGS`` as a user's shell would start it."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "jhansi", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
        **kwargs,
    )


def helpers(env: dict[str, str], cwd: Path) -> list[dict[str, object]]:
    """``jhansi helper status --json``'s helpers."""
    proc = jhansi(["helper", "status", "--json"], env, cwd)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["helpers"]
    assert isinstance(found, list)
    return found


def start_helper(env: dict[str, str], cwd: Path) -> int:
    """Run (which starts the helper) until a helper serves; return its pid.

    A helper that sees its key change while it loads (here: the working directory,
    on the import path of ``python -m``, gains a file) exits at once, and the next
    run starts another, so this runs again when none shows up.
    """
    (cwd / "warmup.py").write_text("print('warm')\n")
    for _ in range(10):
        first = jhansi(["run", "-q", "warmup.py"], env, cwd)
        assert first.returncode == 0, first.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            running = helpers(env, cwd)
            sockets = list(Path(env["JHANSI_HELPER_DIR"]).glob("*.sock"))
            if running and sockets:
                pid = running[0]["pid"]
                assert isinstance(pid, int)
                return pid
            time.sleep(0.1)
    pytest.fail("no helper started after 10 runs")


def served(env: dict[str, str], cwd: Path) -> int:
    """How many runs the helpers have forked (``jhansi helper status --json``)."""
    return sum(int(str(h["served"])) for h in helpers(env, cwd))


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def end_records(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    """Every ``exec.end`` body in the ledger (``jhansi ledger export --format records``)."""
    proc = jhansi(["ledger", "export", "--format", "records"], env, cwd)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return [r["body"] for r in records if r["kind"] == "exec.end"]


SCRIPTS = {
    "fails.py": "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(7)\n",
    "bad.py": "x = (\n",
    "ok.py": "print('hello', 1 + 1)\n",
}


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["run", "-q", "fails.py"], None),
        (["run", "-q", "bad.py"], None),
        (["run", "-q", "missing.py"], None),
        (["run", "--json", "-q", "ok.py"], None),
        (["run", "-q", "-"], "print('from stdin')\n"),
        (["run", "-q", "--memory", "banana", "ok.py"], None),
        (["run", "--debug", "-q", "missing.py"], None),
        (["run", "--frobnicate", "ok.py"], None),
    ],
    ids=[
        "exit-code",
        "syntax-error",
        "missing",
        "json",
        "stdin",
        "bad-option",
        "debug-after-run",
        "unknown-option",
    ],
)
def test_a_run_through_the_helper_is_the_run_without_it(
    helper_env: dict[str, str], tmp_path: Path, args: list[str], stdin: str | None
) -> None:
    for name, text in SCRIPTS.items():
        (tmp_path / name).write_text(text)
    start_helper(helper_env, tmp_path)
    before = served(helper_env, tmp_path)
    through = jhansi(args, helper_env, tmp_path, input=stdin)
    assert served(helper_env, tmp_path) == before + 1, "the helper did not serve the run"
    alone = jhansi(args, {**helper_env, "JHANSI_HELPER": "off"}, tmp_path, input=stdin)
    assert through.returncode == alone.returncode, (through.stderr, alone.stderr)
    if "--json" in args:
        ours, theirs = json.loads(through.stdout), json.loads(alone.stdout)
        for varying in ("run_id", "duration_ms", "record"):
            ours.pop(varying), theirs.pop(varying)
        assert ours == theirs
    else:
        assert through.stdout == alone.stdout
        assert through.stderr == alone.stderr
    assert jhansi(["ledger", "verify"], helper_env, tmp_path).returncode == 0


def test_a_docker_run_through_the_helper_answers_then_removes_its_container(
    request: pytest.FixtureRequest, helper_env: dict[str, str], tmp_path: Path
) -> None:
    # The container's removal is housekeeping (jhansi.housekeeping): the helper's child
    # hands the client its status and streams first, then removes it.
    engine = request.getfixturevalue("docker_engine")
    (tmp_path / "ok.py").write_text(SCRIPTS["ok.py"])
    start_helper(helper_env, tmp_path)
    env = {**helper_env, **backend_env("docker")}
    before = served(helper_env, tmp_path)
    proc = jhansi(["run", "--json", "-q", "ok.py"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert served(helper_env, tmp_path) == before + 1, "the helper did not serve the run"
    result = json.loads(proc.stdout)
    assert result["stdout"]["text"] == "hello 2\n"
    assert end_records(helper_env, tmp_path)[-1]["run_id"] == result["run_id"]
    label = f"jhansi.run-id={result['run_id']}"
    deadline = time.monotonic() + 60
    while engine.client.containers.list(all=True, filters={"label": label}):
        assert time.monotonic() < deadline, "the run's container was never removed"
        time.sleep(0.1)


def test_the_run_happens_in_a_child_of_the_helper_with_the_clients_settings(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    # Files first: `python -m` has the working directory on its import path, so a
    # new file there changes the helper's key.
    (tmp_path / "slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(30)\n")
    pid = start_helper(helper_env, tmp_path)
    # The timeout comes from this client's environment, not the helper's.
    env = {**helper_env, "JHANSI_SANDBOX_TIMEOUT": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jhansi", "run", "-q", "slow.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    assert children_of(pid), "no child of the helper while the run is in progress"
    assert proc.wait(timeout=60) == ExitCode.TIMED_OUT
    assert end_records(helper_env, tmp_path)[-1]["result"]["status"] == "timed_out"


@pytest.mark.parametrize("how", ["ctrl-c", "client-killed"])
def test_an_interrupted_client_interrupts_the_run_and_it_is_recorded(
    helper_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    (tmp_path / "slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    start_helper(helper_env, tmp_path)
    ended = len(end_records(helper_env, tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jhansi", "run", "-q", "slow.py"],
        cwd=tmp_path,
        env=helper_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    assert served(helper_env, tmp_path) == 1  # the warm-up ran here, this run in the helper
    started = time.monotonic()
    if how == "ctrl-c":
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == ExitCode.INTERRUPTED
    else:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ends = end_records(helper_env, tmp_path)
        if len(ends) > ended:
            break
        time.sleep(0.2)
    else:
        pytest.fail("no exec.end for the interrupted run")
    assert "interrupted" in str(ends[-1]["result"]["error"]), ends[-1]
    assert time.monotonic() - started < 30  # not the script's 60 s
    assert jhansi(["ledger", "verify"], helper_env, tmp_path).returncode == 0


def test_a_helper_serves_only_its_own_key(helper_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text(SCRIPTS["ok.py"])
    start_helper(helper_env, tmp_path)
    [path] = Path(helper_env["JHANSI_HELPER_DIR"]).glob("*.sock")
    request = client.encode_request("not this helper's key", ["run", "ok.py"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        fds = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
        try:
            sock.sendmsg(
                [len(request).to_bytes(4, "big"), request],
                [
                    (
                        socket.SOL_SOCKET,
                        socket.SCM_RIGHTS,
                        b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds),
                    )
                ],
            )
        finally:
            for fd in fds:
                os.close(fd)
        sock.settimeout(10)
        assert sock.recv(16) == client.STALE
    # A client whose start-up differs (PYTHON* variables) gets a helper of its own.
    other = {**helper_env, "PYTHONWARNINGS": "default"}
    assert jhansi(["run", "-q", "ok.py"], other, tmp_path).returncode == 0
    deadline = time.monotonic() + 60
    while len(helpers(helper_env, tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(helpers(helper_env, tmp_path)) == 2


def test_garbage_on_the_socket_is_ignored(helper_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text(SCRIPTS["ok.py"])
    pid = start_helper(helper_env, tmp_path)
    [path] = Path(helper_env["JHANSI_HELPER_DIR"]).glob("*.sock")
    for garbage in (b"", b"\x00\x00\x00\x05hello", b"\xff\xff\xff\xff", b"\x00\x00"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            try:
                answer = sock.recv(16)
            except ConnectionResetError:  # closed with our bytes unread
                answer = b""
            assert answer == b""  # closed without an answer
    assert helpers(helper_env, tmp_path)[0]["pid"] == pid  # still serving
    before = served(helper_env, tmp_path)
    assert jhansi(["run", "-q", "ok.py"], helper_env, tmp_path).stdout == "hello 2\n"
    assert served(helper_env, tmp_path) == before + 1


def test_the_helper_exits_when_idle_and_when_stopped(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    idle = {**helper_env, "JHANSI_HELPER_IDLE": "1"}
    start_helper(idle, tmp_path)
    deadline = time.monotonic() + 30
    while helpers(idle, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert helpers(idle, tmp_path) == []
    pid = start_helper(helper_env, tmp_path)
    stopped = jhansi(["helper", "stop", "--json"], helper_env, tmp_path)
    assert [h["pid"] for h in json.loads(stopped.stdout)["stopped"]] == [pid]
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
    assert not list(Path(helper_env["JHANSI_HELPER_DIR"]).glob("*.sock"))


def test_the_helper_serves_first_and_loads_the_rest_while_idle(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """It serves once the warm path is loaded, then loads the new-requirements path
    (about a second) between requests, and says when it has (``loaded``)."""
    start_helper(helper_env, tmp_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = helpers(helper_env, tmp_path)
        if found and found[0]["loaded"] is True:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the helper never said it had loaded everything: {found}")
    status = jhansi(["helper", "status"], helper_env, tmp_path)
    assert "still loading" not in status.stdout
    ran = jhansi(["run", "-q", "warmup.py"], helper_env, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert helpers(helper_env, tmp_path)[0]["loaded"] is True


def wait_loaded(env: dict[str, str], cwd: Path) -> None:
    """Until the helper says it has loaded everything (and so forked its spare)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = helpers(env, cwd)
        if found and found[0]["loaded"] is True:
            return
        time.sleep(0.1)
    pytest.fail(f"the helper never said it had loaded everything: {helpers(env, cwd)}")


def test_a_spare_child_waits_for_the_next_run_and_takes_the_clients_settings(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """Once loaded, and while no run is in progress, the helper forks the next run's
    child ahead of time (the fork is off the run's path); it runs the request with the
    client's settings, a new spare waits for the next once it has ended, and stopping
    the helper ends the spare too."""
    (tmp_path / "slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(30)\n")
    pid = start_helper(helper_env, tmp_path)
    wait_loaded(helper_env, tmp_path)
    deadline = time.monotonic() + 10
    while not children_of(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    [spare] = children_of(pid)
    env = {**helper_env, "JHANSI_SANDBOX_TIMEOUT": "3"}  # the client's, not the helper's
    proc = subprocess.Popen(
        [sys.executable, "-m", "jhansi", "run", "-q", "slow.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    # The spare took the run; the next one is forked only once no run competes for the CPU.
    assert children_of(pid) == [spare]
    assert proc.wait(timeout=60) == ExitCode.TIMED_OUT
    assert end_records(helper_env, tmp_path)[-1]["result"]["status"] == "timed_out"
    deadline = time.monotonic() + 10
    while (children_of(pid) in ([], [spare])) and time.monotonic() < deadline:
        time.sleep(0.05)
    [following] = children_of(pid)
    assert following != spare
    ok = jhansi(["run", "-q", "slow.py"], {**env, "JHANSI_SANDBOX_TIMEOUT": "1"}, tmp_path)
    assert ok.returncode == ExitCode.TIMED_OUT
    assert jhansi(["ledger", "verify"], helper_env, tmp_path).returncode == 0
    deadline = time.monotonic() + 10
    while children_of(pid) in ([], [following]) and time.monotonic() < deadline:
        time.sleep(0.05)  # the second run's child (the spare before) may still tidy up
    [last] = children_of(pid)
    assert last != following
    assert jhansi(["helper", "stop"], helper_env, tmp_path).returncode == 0
    deadline = time.monotonic() + 30
    while Path(f"/proc/{last}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{last}").exists(), "the spare outlived its helper"


def test_stop_stops_only_this_jhansis_helper_unless_all(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """Another checkout, interpreter or session has a helper of its own (another key):
    here a client whose start-up differs (PYTHON* variables)."""
    ours = start_helper(helper_env, tmp_path)
    other_env = {**helper_env, "PYTHONWARNINGS": "default"}
    theirs = None
    for _ in range(10):
        assert jhansi(["run", "-q", "warmup.py"], other_env, tmp_path).returncode == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            others = [h["pid"] for h in helpers(helper_env, tmp_path) if h["pid"] != ours]
            if others:
                theirs = others[0]
                break
            time.sleep(0.1)
        if theirs is not None:
            break
    assert isinstance(theirs, int), "no second helper started"
    status = json.loads(jhansi(["helper", "status", "--json"], helper_env, tmp_path).stdout)
    assert {h["pid"]: h["own"] for h in status["helpers"]} == {ours: True, theirs: False}
    text = jhansi(["helper", "status"], helper_env, tmp_path).stdout
    assert f"pid {ours}, " in text
    assert "(this jhansi's)" in next(line for line in text.splitlines() if f"pid {ours}," in line)

    stopped = jhansi(["helper", "stop", "--json"], helper_env, tmp_path)
    document = json.loads(stopped.stdout)
    assert [h["pid"] for h in document["stopped"]] == [ours]
    assert [h["pid"] for h in document["left_running"]] == [theirs]
    deadline = time.monotonic() + 30
    while Path(f"/proc/{ours}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{ours}").exists()
    assert Path(f"/proc/{theirs}").exists()
    assert [h["pid"] for h in helpers(helper_env, tmp_path)] == [theirs]

    again = jhansi(["helper", "stop"], helper_env, tmp_path)
    assert again.stdout.splitlines() == [
        "this jhansi has no helper running",
        "1 other helper(s) left running (other checkouts, interpreters or sessions): "
        "`jhansi helper stop --all` stops them too",
    ]
    everything = jhansi(["helper", "stop", "--all"], helper_env, tmp_path)
    assert everything.stdout == "stopped 1 helper(s)\n"
    deadline = time.monotonic() + 30
    while Path(f"/proc/{theirs}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{theirs}").exists()


def test_a_helper_directory_others_can_enter_is_not_used(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    shared = Path(helper_env["JHANSI_HELPER_DIR"])
    shared.mkdir(parents=True)
    shared.chmod(0o755)
    (tmp_path / "ok.py").write_text(SCRIPTS["ok.py"])
    for _ in range(2):
        proc = jhansi(["run", "-q", "ok.py"], helper_env, tmp_path)
        assert (proc.returncode, proc.stdout) == (0, "hello 2\n")
    time.sleep(1)
    assert list(shared.iterdir()) == []


def test_a_started_helper_holds_none_of_the_callers_descriptors(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "ok.py").write_text(SCRIPTS["ok.py"])
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jhansi", "run", "-q", "ok.py"],
            cwd=tmp_path,
            env=helper_env,
            capture_output=True,
            pass_fds=(write_end,),
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        os.close(write_end)
        write_end = -1
        deadline = time.monotonic() + 30
        while not helpers(helper_env, tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert helpers(helper_env, tmp_path), "no helper started"
        ready, _, _ = select.select([read_end], [], [], 10)
        assert ready, "the helper kept the caller's pipe open"
        assert os.read(read_end, 1) == b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_on_off_and_ci() -> None:
    assert client.enabled({}) is True
    assert client.enabled({"CI": "true"}) is False
    assert client.enabled({"CI": "true", "JHANSI_HELPER": "on"}) is True
    assert client.enabled({"JHANSI_HELPER": "off"}) is False
    assert client.enabled({"CI": "false"}) is True


def test_requests_round_trip_and_garbage_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JHANSI_EXAMPLE", "a=b\nc")
    data = client.encode_request("key\nwith lines", ["run", "x y.py", "--", "é"])
    decoded = client.decode_request(data)
    assert decoded is not None
    key, cwd, umask, argv, env = decoded
    assert (key, cwd, argv) == ("key\nwith lines", str(Path.cwd()), ["run", "x y.py", "--", "é"])
    assert env["JHANSI_EXAMPLE"] == "a=b\nc"
    assert 0 <= umask <= 0o777
    for garbage in (b"", b"k\0/\0x\01", b"k\0/\x000\x005\0a", b"k\0/\x000\x000\0novalue"):
        assert client.decode_request(garbage) is None


def test_the_helper_keeps_none_of_the_callers_other_variables(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "ok.py").write_text(SCRIPTS["ok.py"])
    env = {**helper_env, "SOME_API_TOKEN": "canary-7f3a"}
    pid = start_helper(env, tmp_path)
    assert b"canary-7f3a" not in Path(f"/proc/{pid}/environ").read_bytes()
    # ... while each run still gets its own caller's variables (the timeout here).
    before = served(env, tmp_path)
    proc = jhansi(
        ["run", "--json", "-q", "ok.py"], {**env, "JHANSI_SANDBOX_TIMEOUT": "7"}, tmp_path
    )
    assert served(env, tmp_path) == before + 1
    assert "after 7 s" in json.loads(proc.stdout)["enforcement"]["timeout"]
