"""``jhansi run`` and ``jhansi sandbox`` end to end, as a subprocess, on the real backends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import backend_env, prepare_jhansi_home, require_backend, run_jhansi

COUNTER = """\
import os
path = os.path.join(os.environ["HOME"], "counter")
count = int(open(path).read()) + 1 if os.path.exists(path) else 1
with open(path, "w") as handle:
    handle.write(str(count))
print(count)
"""

RUN_BACKENDS = ["bwrap", "docker", "podman"]


class Env:
    """A project and a JHANSI_HOME that the backend's engine user can reach."""

    def __init__(self, base: Path, backend: str) -> None:
        self.backend = backend
        self.project = base / "project"
        self.project.mkdir()
        (self.project / "pyproject.toml").write_text('[project]\nname = "demo"\n')
        self.home = base / "jhansi-home"
        prepare_jhansi_home(backend, self.home)
        self.vars = {**backend_env(backend), "JHANSI_HOME": str(self.home)}

    def script(self, name: str, text: str) -> Path:
        path = self.project / name
        path.write_text(text)
        return path

    def jhansi(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_jhansi(*args, env=self.vars, cwd=self.project, input=input)


@pytest.fixture(params=RUN_BACKENDS)
def env(request: pytest.FixtureRequest, shared_dir: Path) -> Env:
    require_backend(request, request.param)
    return Env(shared_dir, request.param)


def test_named_sandbox_home_persists(env: Env) -> None:
    script = env.script("counter.py", COUNTER)
    outputs = []
    for _ in range(3):
        proc = env.jhansi("run", "-q", "--sandbox", "counting", str(script))
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.strip())
    assert outputs == ["1", "2", "3"]
    for _ in range(2):
        proc = env.jhansi("run", "-q", "--ephemeral", str(script))
        assert proc.stdout.strip() == "1", proc.stderr

    listed = json.loads(env.jhansi("sandbox", "ls", "--json").stdout)
    entry = {s["name"]: s for s in listed["sandboxes"]}["counting"]
    assert entry["runs"] == 3
    home = Path(entry["home"])
    assert (home / "counter").read_text() == "3"
    # the invoking user can read and delete what the sandbox wrote
    copy = home.parent / "copy"
    shutil.copytree(home, copy)
    shutil.rmtree(copy)
    removed = env.jhansi("sandbox", "rm", "counting")
    assert removed.returncode == 0, removed.stderr
    assert not home.exists()


@pytest.mark.bwrap
def test_sandbox_ls_shows_sizes_in_units_and_json_in_bytes(
    bwrap_path: Path, shared_dir: Path
) -> None:
    from jhansi.cli._output import human_size

    env = Env(shared_dir, "bwrap")
    script = env.script(
        "blob.py", "import os\nopen(os.path.expanduser('~/blob'), 'wb').write(b'x' * 1500000)\n"
    )
    assert env.jhansi("run", "-q", "--sandbox", "sized", str(script)).returncode == 0
    listed = json.loads(env.jhansi("sandbox", "ls", "--json").stdout)
    size = {s["name"]: s for s in listed["sandboxes"]}["sized"]["size"]
    assert isinstance(size, int)
    assert size >= 1_500_000
    table = env.jhansi("sandbox", "ls")
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if " sized " in line]
    assert f" {human_size(size)} " in row
    assert " MiB " in row


def test_default_sandbox_is_the_projects_own(env: Env) -> None:
    script = env.script("counter.py", COUNTER)
    first = json.loads(env.jhansi("run", "--json", str(script)).stdout)
    second = json.loads(env.jhansi("run", "--json", str(script)).stdout)
    assert first["sandbox"] == second["sandbox"]
    assert first["sandbox"].startswith("project-")
    assert second["stdout"]["text"] == "2\n"


def test_json_result(env: Env) -> None:
    script = env.script(
        "hello.py", "import sys\nprint('out', sys.argv[1:])\nprint('err', file=sys.stderr)\n"
    )
    proc = env.jhansi("run", "--json", str(script), "a", "--flag")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout holds exactly one JSON document
    assert doc["status"] == "succeeded"
    assert doc["exit_code"] == 0
    assert doc["stdout"] == {"text": "out ['a', '--flag']\n", "bytes": 20, "truncated": False}
    assert doc["stderr"]["text"] == "err\n"
    assert doc["backend"] == ("bwrap" if env.backend == "bwrap" else "docker")
    assert isinstance(doc["duration_ms"], int)
    assert doc["files_changed"] == []
    for key in ("run_id", "sandbox", "home", "backend_details", "enforcement", "signal"):
        assert key in doc


def test_stdin_code_and_exit_code(env: Env) -> None:
    (env.project / "helper.py").write_text("VALUE = 41\n")
    code = "import helper, sys\nprint(helper.VALUE + 1)\nsys.exit(3)\n"
    proc = env.jhansi("run", "-q", "-", input=code)
    assert proc.stdout.strip() == "42", proc.stderr
    assert proc.returncode == 3


def test_output_streams_and_tail_is_capped(env: Env) -> None:
    script = env.script(
        "loud.py", "import sys\nsys.stdout.write('x' * 5000 + 'END')\nsys.stderr.write('e')\n"
    )
    proc = env.jhansi("run", "--json", "--output-limit", "1000", str(script))
    doc = json.loads(proc.stdout)
    assert doc["stdout"]["bytes"] == 5003
    assert doc["stdout"]["truncated"] is True
    assert doc["stdout"]["text"].endswith("END")
    assert len(doc["stdout"]["text"]) == 1000
    plain = env.jhansi("run", "-q", str(script))
    assert plain.stdout == "x" * 5000 + "END"  # the terminal gets everything, live
    assert plain.stderr == "e"


def test_files_changed_are_reported(env: Env) -> None:
    script = env.script(
        "writer.py",
        "import os\nopen(os.path.expanduser('~/a.txt'), 'w').write('a')\n"
        "open('/work/out.txt', 'w').write('b')\n",
    )
    mode = env.project.stat().st_mode
    proc = env.jhansi("run", "--json", "--rw", "--ephemeral", str(script))
    assert proc.returncode == 0, proc.stderr
    changes = {
        (c["area"], c["path"], c["change"]) for c in json.loads(proc.stdout)["files_changed"]
    }
    assert changes == {("/home/sandbox", "a.txt", "added"), ("/work", "out.txt", "added")}
    assert (env.project / "out.txt").read_text() == "b"  # applied when the run ended
    assert env.project.stat().st_mode == mode  # never opened up for the container's user


def test_writes_to_work_land_in_the_layer_not_the_project(env: Env) -> None:
    script = env.script("w.py", "open('/work/out.txt', 'w').write('b')\n")
    proc = env.jhansi("run", "--json", str(script))
    doc = json.loads(proc.stdout)
    assert not (env.project / "out.txt").exists()  # never the project, on any backend
    if env.backend == "podman":
        # No copy-on-write mount through Podman's API: read-only, and the user is told.
        assert proc.returncode == 1
        assert "read-only here (no copy-on-write layer: Podman" in proc.stderr
        assert doc["layer"] is None
        assert doc["enforcement"]["work"].startswith("read-only bind of the project")
        plain = env.jhansi("run", str(script))
        assert "--rw" in plain.stderr.splitlines()[-1]
        assert "$HOME" in plain.stderr.splitlines()[-1]
        return
    assert proc.returncode == 0, proc.stderr
    assert (Path(doc["layer"]) / "out.txt").read_text() == "b"
    assert doc["enforcement"]["work"].startswith("copy-on-write")
    # The rest of the system stays read-only, and the hint says where writes go.
    script = env.script("etc.py", "open('/etc/out.txt', 'w').write('b')\n")
    proc = env.jhansi("run", str(script))
    assert proc.returncode == 1
    assert "/work is writable" in proc.stderr


def test_shell_reads_commands_from_stdin(env: Env) -> None:
    script = env.script("counter.py", COUNTER)
    assert env.jhansi("run", "-q", "--sandbox", "dbg", str(script)).returncode == 0
    proc = env.jhansi(
        "sandbox",
        "shell",
        "dbg",
        input="import os\nprint(open(os.path.expanduser('~/counter')).read())\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_prune_removes_old_sandboxes(env: Env) -> None:
    script = env.script("counter.py", COUNTER)
    assert env.jhansi("run", "-q", "--sandbox", "old", str(script)).returncode == 0
    meta = env.home / "data" / "sandboxes" / "old" / "meta.json"
    data = json.loads(meta.read_text())
    data["last_used"] = "2020-01-01T00:00:00.000000Z"
    meta.write_text(json.dumps(data))
    assert env.jhansi("run", "-q", "--sandbox", "fresh", str(script)).returncode == 0
    proc = env.jhansi("sandbox", "prune", "--older-than", "30d", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["removed"] == ["old"]
    names = {
        s["name"] for s in json.loads(env.jhansi("sandbox", "ls", "--json").stdout)["sandboxes"]
    }
    assert names == {"fresh"}


# -- errors: each a documented exit code and two lines --------------------------------


def _two_lines(stderr: str) -> list[str]:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("jhansi:")]
    assert len(lines) == 2, stderr
    assert lines[0].startswith("error: ")
    assert lines[1].startswith("hint: ")
    return lines


@pytest.mark.bwrap
def test_timeout_exit_code(bwrap_path: Path, shared_dir: Path) -> None:
    # shared_dir: the sandbox's host uid (1000 when root runs the tests) reads it.
    script = shared_dir / "slow.py"
    script.write_text("import time\ntime.sleep(30)\n")
    proc = run_jhansi("run", "--backend", "bwrap", "--timeout", "1", str(script))
    assert proc.returncode == 124
    assert "timed out after 1 s" in _two_lines(proc.stderr)[0]


@pytest.mark.docker
def test_memory_kill_exit_code(docker_engine: object, shared_dir: Path) -> None:
    script = shared_dir / "hog.py"
    script.write_text("blocks = [bytearray(b'x') * (1 << 20) for _ in range(400)]\n")
    proc = run_jhansi("run", "--memory", "64m", str(script), env=backend_env("docker"))
    assert proc.returncode == 137, proc.stderr
    first, hint = _two_lines(proc.stderr)
    assert "memory limit (64m)" in first
    assert "--memory" in hint


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("syntax", "syntax error"),
        ("binary", "not UTF-8"),
    ],
)
def test_bad_input_exit_6(tmp_path: Path, setup: str, fragment: str) -> None:
    target = tmp_path / "x.py"
    if setup == "directory":
        target = tmp_path
    elif setup == "syntax":
        target.write_text("def f(:\n")
    elif setup == "binary":
        target.write_bytes(b"print('\xff')\n")
    proc = run_jhansi("run", "--backend", "bwrap", str(target))
    assert proc.returncode == 6, proc.stderr
    assert fragment in _two_lines(proc.stderr)[0]
    assert "Traceback" not in proc.stderr


def test_engine_not_running_exit_4(tmp_path: Path) -> None:
    script = tmp_path / "ok.py"
    script.write_text("print(1)\n")
    proc = run_jhansi(
        "run",
        "--backend",
        "docker",
        str(script),
        env={"DOCKER_HOST": f"unix://{tmp_path}/gone.sock"},
    )
    assert proc.returncode == 4
    first, hint = _two_lines(proc.stderr)
    assert "no container engine" in first
    assert "systemctl" in hint


def test_json_error_document(tmp_path: Path) -> None:
    proc = run_jhansi("run", "--json", str(tmp_path / "nope.py"))
    assert proc.returncode == 6
    doc = json.loads(proc.stdout)
    assert doc["status"] == "error"
    assert doc["error"]["exit_code"] == 6


def _recorded_scripts(env: Env) -> list[str]:
    proc = env.jhansi("ledger", "log", "--json")
    assert proc.returncode == 0, proc.stderr
    return [run["script"] for run in json.loads(proc.stdout)["runs"]]


@pytest.mark.bwrap
def test_debug_after_run_is_debug_before_it(bwrap_path: Path, shared_dir: Path) -> None:
    env = Env(shared_dir, "bwrap")
    env.script("ok.py", "print('ran')\n")
    after = env.jhansi("run", "--debug", "-q", "ok.py")
    before = env.jhansi("--debug", "run", "-q", "ok.py")
    assert (after.returncode, after.stdout) == (0, "ran\n"), after.stderr
    assert (before.returncode, before.stdout) == (0, "ran\n"), before.stderr
    # Debug shows the traceback of a refusal, after the command as before it.
    missing = env.jhansi("run", "--debug", "missing.py")
    assert missing.returncode == 6
    assert "Traceback (most recent call last)" in missing.stderr
    assert "jhansi.errors.InputError: no such file" in missing.stderr
    assert _recorded_scripts(env) == ["ok.py", "ok.py", "missing.py"]


@pytest.mark.bwrap
def test_unknown_options_are_usage_and_a_dashed_name_follows_double_dash(
    bwrap_path: Path, shared_dir: Path
) -> None:
    env = Env(shared_dir, "bwrap")
    for argv in (["--frobnicate", "ok.py"], ["--version", "ok.py"], ["-x"]):
        proc = env.jhansi("run", *argv)
        assert proc.returncode == 2, proc.stderr
        assert "No such option" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (env.home / "data" / "ledger").exists()  # none of them was recorded
    env.script("--debug", "import sys\nprint('named --debug', sys.argv[1:])\n")
    proc = env.jhansi("run", "-q", "--", "--debug", "--json")
    assert (proc.returncode, proc.stdout) == (0, "named --debug ['--json']\n"), proc.stderr
    assert _recorded_scripts(env) == ["--debug"]


@pytest.mark.bwrap
def test_runs_in_one_sandbox_wait_for_each_other(bwrap_path: Path, shared_dir: Path) -> None:
    env = Env(shared_dir, "bwrap")
    script = env.script(
        "slow.py",
        "import os, time\nopen(os.path.expanduser('~/log'), 'a').write('start\\n')\n"
        "time.sleep(2)\nopen(os.path.expanduser('~/log'), 'a').write('end\\n')\n",
    )
    argv = [sys.executable, "-m", "jhansi", "run", "--sandbox", "shared", str(script)]
    environ = {**os.environ, **env.vars}
    first = subprocess.Popen(argv, env=environ, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    second = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)
    first_err = first.communicate(timeout=60)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second.stderr
    assert "is in use by pid" in second.stderr
    log = (env.home / "data" / "sandboxes" / "shared" / "home" / "log").read_text()
    assert log == "start\nend\nstart\nend\n"  # serialized, never interleaved
