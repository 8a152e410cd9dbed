"""How the docker backend sizes gVisor's host pids and reads how a container ended.

Pure functions: the end-to-end proofs (a fork bomb contained on gVisor, a killed
runtime reported as such) are in tests/security/test_escapes.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import jhansi.sandbox.entry
from jhansi.sandbox.docker.container import (
    GVISOR_PIDS_BASE,
    GVISOR_PIDS_PER_TASK,
    host_pids_limit,
)
from jhansi.sandbox.docker.outcome import (
    RUNTIME_ENDED,
    EndMarkerFilter,
    ScriptEnd,
    interpret_exit,
    with_end_marker,
)
from jhansi.sandbox.interface import PYTHON, ExecStatus

TOKEN = "0123abcd"  # noqa: S105 (a run's end-marker token, not a secret)
MARK = b"\0jhansi-end:0123abcd:"


# -- the host pids cgroup --------------------------------------------------------------------


def test_runc_gets_the_sandboxs_own_pids_limit() -> None:
    assert host_pids_limit(256, "runc") == 256


@pytest.mark.parametrize("pids", [1, 64, 256, 4096])
def test_gvisor_gets_host_pids_in_proportion_to_the_sandboxs(pids: int) -> None:
    limit = host_pids_limit(pids, "runsc")
    assert limit == GVISOR_PIDS_BASE + GVISOR_PIDS_PER_TASK * pids
    # Above the 6.3 host pids per task measured at a fork bomb's peak (plus ~45 idle)...
    assert limit > 45 + 6.3 * pids
    # ...and finite: the host stays protected.
    assert limit < 10 * pids + 1000


def test_the_limit_grows_with_the_sandboxs_limit() -> None:
    assert host_pids_limit(512, "runsc") > host_pids_limit(256, "runsc") > 768


# -- asking the bootstrap for its end marker -------------------------------------------------


def test_the_marker_is_asked_of_the_bootstrap_only() -> None:
    entry = (PYTHON, "-I", "-S", "/opt/jhansi/entry.py", "--path", "/x", "--", "s.py", "a")
    assert with_end_marker(entry, TOKEN) == [
        PYTHON,
        "-I",
        "-S",
        "/opt/jhansi/entry.py",
        "--end-marker",
        TOKEN,
        "--path",
        "/x",
        "--",
        "s.py",
        "a",
    ]
    # The interpreter probe, or a script that happens to be called entry.py, is not it.
    assert with_end_marker((PYTHON, "-I", "-S", "-c", "print(1)"), TOKEN) is None
    assert with_end_marker((PYTHON, "script.py", "/x/entry.py"), TOKEN) is None
    assert with_end_marker(("sh", "/opt/jhansi/entry.py"), TOKEN) is None


# -- taking the marker out of stderr ---------------------------------------------------------


def _through(chunks: list[bytes]) -> tuple[bytes, ScriptEnd | None]:
    marker = EndMarkerFilter(TOKEN)
    out = b"".join(marker.feed(chunk) for chunk in chunks) + marker.flush()
    return out, marker.end


def test_the_marker_is_found_and_removed_however_the_stream_is_split() -> None:
    stream = b"Traceback...\nboom\n" + MARK + b"exit:3\0"
    for size in (1, 2, 5, 7, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        out, end = _through(chunks)
        assert out == b"Traceback...\nboom\n"
        assert end == ScriptEnd("exit", 3)


def test_output_after_the_marker_and_signals_are_kept() -> None:
    out, end = _through([b"a", MARK + b"signal:9\0", b"late child output\n"])
    assert out == b"alate child output\n"
    assert end == ScriptEnd("signal", 9)


def test_what_only_looks_like_a_marker_is_passed_on() -> None:
    wrong_token = b"\0jhansi-end:ffff:exit:1\0"
    garbage = MARK + b"exit:x\0"
    unended = MARK + b"exit:1" + b"9" * 40
    cut = MARK[:8]
    for stream in (wrong_token, garbage, unended, cut, b"\0\0\0"):
        out, end = _through([stream])
        assert out == stream
        assert end is None


def test_the_last_marker_wins() -> None:
    out, end = _through([MARK + b"exit:0\0", b"x", MARK + b"exit:2\0"])
    assert out == b"x"
    assert end == ScriptEnd("exit", 2)


# -- what the exit means ---------------------------------------------------------------------


def test_the_scripts_own_end_is_its_status() -> None:
    ok = interpret_exit(
        0, end=ScriptEnd("exit", 0), expected_end=True, oom_killed=False, runtime="runsc"
    )
    assert ok.status is ExecStatus.SUCCEEDED
    two = interpret_exit(
        2, end=ScriptEnd("exit", 2), expected_end=True, oom_killed=False, runtime="runsc"
    )
    assert (two.status, two.exit_code, two.signal) == (ExecStatus.FAILED, 2, None)
    killed = interpret_exit(
        137, end=ScriptEnd("signal", 9), expected_end=True, oom_killed=False, runtime="runc"
    )
    assert (killed.status, killed.signal) == (ExecStatus.FAILED, 9)


def test_gvisor_ending_the_sandbox_is_an_engine_error_not_exit_2() -> None:
    outcome = interpret_exit(2, end=None, expected_end=True, oom_killed=False, runtime="runsc")
    assert outcome.status is ExecStatus.ENGINE_ERROR
    assert outcome.exit_code is None
    assert outcome.error.startswith(f"the gVisor runtime (runsc) {RUNTIME_ENDED}")
    assert "pids limit" in outcome.error


@pytest.mark.parametrize(("runtime", "name"), [("runsc", "gVisor runtime"), ("runc", "runc")])
def test_a_container_killed_from_outside_is_an_engine_error(runtime: str, name: str) -> None:
    outcome = interpret_exit(137, end=None, expected_end=True, oom_killed=False, runtime=runtime)
    assert outcome.status is ExecStatus.ENGINE_ERROR
    assert name in outcome.error
    assert "signal 9" in outcome.error
    # Even an exit status the script could have chosen is not passed off as the script's.
    zero = interpret_exit(0, end=None, expected_end=True, oom_killed=False, runtime=runtime)
    assert zero.status is ExecStatus.ENGINE_ERROR


def test_the_memory_cgroup_is_still_the_memory_limit() -> None:
    outcome = interpret_exit(137, end=None, expected_end=True, oom_killed=True, runtime="runsc")
    assert (outcome.status, outcome.signal) == (ExecStatus.KILLED_OOM, 9)


def test_without_a_marker_asked_for_the_code_is_the_commands() -> None:
    outcome = interpret_exit(2, end=None, expected_end=False, oom_killed=False, runtime="runsc")
    assert (outcome.status, outcome.exit_code) == (ExecStatus.FAILED, 2)


# -- the bootstrap's side (a real interpreter, no sandbox) -----------------------------------

ENTRY = Path(jhansi.sandbox.entry.__file__)


@pytest.mark.parametrize(
    ("code", "expected", "status"),
    [
        ("import sys; print('hi'); sys.exit(3)", b"exit:3", 3),
        ("raise ValueError('x')", b"exit:1", 1),
        ("import os; os._exit(5)", b"exit:5", 5),
        ("import os; os.execv('/bin/sh', ['sh', '-c', 'exit 6'])", b"exit:6", 6),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", b"signal:9", 137),
        # A script that ends its own process group does not end its supervisor.
        ("import os, signal; os.killpg(0, signal.SIGTERM)", b"signal:15", 143),
    ],
)
def test_the_bootstrap_reports_every_way_a_script_ends(
    tmp_path: Path, code: str, expected: bytes, status: int
) -> None:
    script = tmp_path / "s.py"
    script.write_text(code + "\n")
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(ENTRY), "--end-marker", TOKEN, "--", str(script)],
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        start_new_session=True,
    )
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.endswith(MARK + expected + b"\0"), proc.stderr
    marker = EndMarkerFilter(TOKEN)
    assert MARK not in marker.feed(proc.stderr) + marker.flush()
    assert marker.end is not None
