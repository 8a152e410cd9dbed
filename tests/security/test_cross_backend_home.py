"""One sandbox, every backend: runs alternate engines and each sees and writes the same home.

Rootful Docker and bwrap as root run the sandbox as one dedicated host uid, rootless Podman
driven by root as one of its user's subordinate uids; the home is handed to
whichever runs next. Each run writes what a script would (a 0700 directory, a
0600 file) and reads what every earlier run wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import backend_env, prepare_jhansi_home, require_backend, run_jhansi

ORDER = ("docker", "bwrap", "podman", "bwrap")

SCRIPT = """\
import json, os, sys
home = os.path.expanduser("~")
step = sys.argv[1]
seen = {}
for name in sorted(os.listdir(home)):
    with open(os.path.join(home, name, "note.txt")) as f:
        seen[name] = f.read()
os.makedirs(os.path.join(home, step), mode=0o700)
path = os.path.join(home, step, "note.txt")
with open(path, "w") as f:
    f.write("written by " + step)
os.chmod(path, 0o600)
print(json.dumps(seen))
"""


def test_runs_on_alternating_backends_share_one_home(
    request: pytest.FixtureRequest, shared_dir: Path
) -> None:
    for name in set(ORDER):
        require_backend(request, name)
    home = shared_dir / "jhansi-home"
    home.mkdir()
    prepare_jhansi_home("podman", home)  # the engine's user must reach the home
    project = shared_dir / "project"
    project.mkdir()
    project.chmod(0o755)
    script = project / "step.py"
    script.write_text(SCRIPT)
    script.chmod(0o644)
    written: list[str] = []
    for index, backend in enumerate(ORDER):
        step = f"{index}-{backend}"
        env = {**backend_env(backend), "JHANSI_HOME": str(home)}
        proc = run_jhansi(
            "run", "-q", "--sandbox", "shared", str(script), step, env=env, cwd=project
        )
        assert proc.returncode == 0, f"{step}: {proc.stdout}{proc.stderr}"
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert seen == {s: f"written by {s}" for s in written}, step
        written.append(step)
        if backend == "docker":
            # Straight after a Docker run: an interactive bwrap shell reads its file.
            shell = run_jhansi(
                "sandbox",
                "shell",
                "shared",
                "--backend",
                "bwrap",
                env={**backend_env("bwrap"), "JHANSI_HOME": str(home)},
                cwd=project,
                input=f"print(open('/home/sandbox/{step}/note.txt').read())\n",
            )
            assert shell.returncode == 0, shell.stdout + shell.stderr
            assert f"written by {step}" in shell.stdout
    # And the invoking user (root) reads and deletes what the sandboxes wrote.
    sandbox_home = home / "data" / "sandboxes" / "shared" / "home"
    for step in written:
        assert (sandbox_home / step / "note.txt").read_text() == f"written by {step}"
    removed = run_jhansi("sandbox", "rm", "shared", env={"JHANSI_HOME": str(home)})
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not sandbox_home.exists()
