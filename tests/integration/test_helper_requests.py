"""The helper's requests: a slow one holds up no other run, and none stays behind.

Written as an outsider's attacks; each asserts the property that must hold. Real: a
real helper, a real client socket, real bwrap runs, the real ``/proc`` of the helper.
"""

from __future__ import annotations

# ruff: noqa: F811 (helper_env is a fixture imported from test_helper)
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_helper import (  # noqa: F401 (helper_env is a fixture)
    helper_env,
    jhansi,
    start_helper,
    wait_loaded,
)


def _socket_path(env: dict[str, str]) -> str:
    found = list(Path(env["JHANSI_HELPER_DIR"]).glob("*.sock"))
    assert len(found) == 1, found
    return str(found[0])


def test_a_slow_request_does_not_stall_every_other_run(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """A process that sends a request's length and then a byte every 3 s (it never
    ends its request) holds up only the child reading it: the helper hands each
    connection on unread, and the next `jhansi run` is served meanwhile."""
    (tmp_path / "ok.py").write_text("print('ok')\n")
    start_helper(helper_env, tmp_path)
    wait_loaded(helper_env, tmp_path)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(_socket_path(helper_env))
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
    slow.sendmsg([(1 << 20).to_bytes(4, "big")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    stop = time.monotonic() + 40
    run = subprocess.Popen(
        [sys.executable, "-m", "jhansi", "run", "-q", "ok.py"],
        cwd=tmp_path,
        env=helper_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        while time.monotonic() < stop and run.poll() is None:
            try:
                slow.send(b"x")
            except OSError:
                break
            time.sleep(3)
        finished = run.poll() is not None
        assert finished, "`jhansi run` hung for 40 s behind one slow request to the helper"
    finally:
        slow.close()
        if run.poll() is None:
            run.kill()
        run.wait(timeout=60)


MARK = "ghp_ForkedPathMarker_0123456789abcdef"


def test_the_helper_keeps_nothing_of_a_request_it_forked_for(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    """While a run is in progress there is no spare: the next request is forked for
    from the helper itself. Its environment (a token) must not stay in the helper,
    nor in the spare forked after both runs end."""
    from tests.integration.test_helper import children_of
    from tests.integration.test_helper_spare_boundary import _occurrences

    (tmp_path / "slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(3)\n")
    (tmp_path / "ok.py").write_text("print('ok')\n")
    pid = start_helper(helper_env, tmp_path)
    wait_loaded(helper_env, tmp_path)
    slow = subprocess.Popen(
        [sys.executable, "-m", "jhansi", "run", "-q", "slow.py"],
        cwd=tmp_path,
        env=helper_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert slow.stdout is not None
    assert slow.stdout.readline() == b"started\n"
    done = jhansi(["run", "-q", "ok.py"], {**helper_env, "MY_API_TOKEN": MARK}, tmp_path)
    assert done.returncode == 0, done.stderr
    slow.wait(timeout=60)
    time.sleep(2)
    assert _occurrences(pid, MARK.encode()) == 0, "the helper holds the client's token"
    for child in children_of(pid):
        assert _occurrences(child, MARK.encode()) == 0, "the next spare holds the token"
