"""What the helper's spare child and the runs it serves hold, and what they leave.

Written as an outsider's attacks on the spare; each asserts the property that must
hold. Everything is real: a real helper, its real spare, real bwrap runs, the real
``/proc`` of the processes under test.
"""

from __future__ import annotations

# ruff: noqa: F811 (helper_env is a fixture imported from test_helper)
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_helper import (  # noqa: F401 (helper_env is a fixture)
    children_of,
    helper_env,
    jhansi,
    start_helper,
    wait_loaded,
)

_O_CLOEXEC = 0o2000000
MARK = "ghp_AttackMarker_0123456789abcdef"


def _spare(pid: int) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        kids = children_of(pid)
        if len(kids) == 1:
            time.sleep(0.3)  # let it close what it inherited
            return kids[0]
        time.sleep(0.05)
    raise AssertionError(f"no single spare under helper {pid}: {children_of(pid)}")


def _fds(pid: int) -> dict[int, tuple[str, int]]:
    found = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(entry.readlink())
            flags = next(
                int(line.split()[1], 8)
                for line in Path(f"/proc/{pid}/fdinfo/{entry.name}").read_text().splitlines()
                if line.startswith("flags:")
            )
        except (OSError, StopIteration):
            continue
        found[int(entry.name)] = (target, flags)
    return found


def _wait_started(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"


def test_a_spares_run_child_holds_no_inheritable_socket(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """The client's connection comes to the spare through ``SCM_RIGHTS``: received
    close-on-exec (``MSG_CMSG_CLOEXEC``), as an accepted socket is, so that no exec
    passes on the connection the client trusts for the run's exit status."""
    (tmp_path / "slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(5)\n")
    pid = start_helper(helper_env, tmp_path)
    wait_loaded(helper_env, tmp_path)
    spare = _spare(pid)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jhansi", "run", "-q", "slow.py"],
        cwd=tmp_path,
        env=helper_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_started(proc)
        assert spare in children_of(pid), "the run did not go to the spare"
        leaky = {
            fd: target
            for fd, (target, flags) in _fds(spare).items()
            if fd > 2 and target.startswith("socket:") and not flags & _O_CLOEXEC
        }
        assert not leaky, f"inheritable sockets in the spare's run child: {leaky}"
    finally:
        proc.wait(timeout=60)


def test_a_spare_holds_nothing_of_the_previous_clients_environment(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """The helper decodes no request and zeroes the bytes it received, so the spare
    forked after a run (and the next client's run, which it becomes) holds nothing of
    the previous client's environment: no token the caller has stays in the helper."""
    (tmp_path / "hello.py").write_text("print('hi')\n")
    pid = start_helper(helper_env, tmp_path)
    wait_loaded(helper_env, tmp_path)
    old = _spare(pid)
    done = jhansi(["run", "-q", "hello.py"], {**helper_env, "MY_API_TOKEN": MARK}, tmp_path)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and children_of(pid) in ([], [old]):
        time.sleep(0.05)
    spare = _spare(pid)
    assert spare != old
    assert _occurrences(spare, MARK.encode()) == 0, "the previous client's token is in the spare"


def _occurrences(pid: int, needle: bytes) -> int:
    hits = 0
    with Path(f"/proc/{pid}/maps").open() as maps, Path(f"/proc/{pid}/mem").open("rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("r"):
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(low)
                hits += mem.read(high - low).count(needle)
            except (OSError, OverflowError, ValueError):
                continue
    return hits


def test_a_forked_run_child_holds_no_other_runs_pidfd(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """While a run is in progress the next request is forked from the helper; that
    child closes the helper's pidfds of the other runs."""
    (tmp_path / "slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(4)\n")
    pid = start_helper(helper_env, tmp_path)  # nothing is written to tmp_path after this
    wait_loaded(helper_env, tmp_path)
    first_child = _spare(pid)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jhansi", "run", "-q", "slow.py"],
            cwd=tmp_path,
            env=helper_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(children_of(pid)) < 2:
            time.sleep(0.05)
        [second_child] = [c for c in children_of(pid) if c != first_child]
        time.sleep(0.3)
        pidfds = [fd for fd, (target, _) in _fds(second_child).items() if "pidfd" in target]
        assert not pidfds, f"the second run's child holds pidfds of other runs: {pidfds}"
    finally:
        for proc in procs:
            proc.wait(timeout=60)


HOSTILE = """
import os, signal, threading, time
def hide():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import ctypes
    ctypes.CDLL(None).prctl(15, b"COMM", 0, 0, 0)  # PR_SET_NAME (/proc is read-only)
hide()
if os.fork() == 0:  # a double-forking daemon that ignores signals and keeps writing
    os.setsid()
    if os.fork() == 0:
        hide()
        while True:
            with open(os.path.expanduser("~/late.txt"), "a") as f:
                f.write("x")
    os._exit(0)
for _ in range(20):
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
n = 0
try:
    while True:
        if os.fork() == 0:
            hide(); time.sleep(60); os._exit(0)
        n += 1
except OSError:
    pass
print("forks", n, flush=True)
"""


def test_a_hostile_run_from_the_spare_stays_in_its_cgroup_and_leaves_nothing(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """The join through ``tasks`` puts bwrap and everything below it (threads,
    forks, a setsid daemon ignoring signals) in the run's cgroup; pids.max holds;
    nothing of the sandbox is alive once the client has its answer; the ledger verifies."""
    comm = f"jhatk{time.monotonic_ns() % 10**9}"
    (tmp_path / "hostile.py").write_text(HOSTILE.replace("COMM", comm))
    pid = start_helper(helper_env, tmp_path)
    wait_loaded(helper_env, tmp_path)
    _spare(pid)
    done = jhansi(["run", "--pids", "48", "hostile.py"], helper_env, tmp_path)
    assert done.returncode == 0, done.stderr
    forks = int(done.stdout.split()[-1])
    assert 0 < forks < 48 - 20  # the 20 threads and the daemon count against pids.max
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == comm:
                left.append(entry.name)
        except OSError:
            continue
    assert not left, f"sandbox processes alive after the answer: {left}"
    assert jhansi(["ledger", "verify"], helper_env, tmp_path).returncode == 0
