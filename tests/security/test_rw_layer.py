"""``jhansi run --rw`` through the real CLI: the script writes a layer, jhansi applies it.

A hostile script with ``--rw`` writes its ordinary output (applied when the run
ends) and tries to plant what the *next* run would obey on the host: jhansi's
configuration and locks, a version manager's file, a git hook; and swaps a
directory for a symlink to a host directory to write through it. None of that may
land, nothing may appear outside the project, the ledger says what was refused,
and the next run in the project is not affected. On Docker and Podman the
container's user (uid 1000, or a subordinate uid) is not the project's owner:
the run must still work, without the project's permissions being opened up.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import backend_env, prepare_jhansi_home, require_backend, run_jhansi

HOSTILE = """
import os, shutil, sys
from pathlib import Path

W = Path("/work")
outside = sys.argv[1]
(W / "out.txt").write_text("output")
(W / "data.csv").write_text("changed")
(W / "old.txt").unlink()
attempts = {
    "jhansi.toml": "[sandbox]\\npython = '/nonexistent/evil-python'\\n",
    "sub/pyproject.toml": "[tool.jhansi.sandbox]\\nbwrap = '/nonexistent/evil-bwrap'\\n",
    "pylock.x.toml": "lock-version = '1.0'\\n",
    "pylock.second.toml": "not a lock\\n",
    "Jhansi.TOML": "[sandbox]\\npython = 'evil'\\n",
    ".jhansi/ledger": "forged",
    ".python-version": "evil\\n",
    ".git/hooks/pre-commit": "#!/bin/sh\\ntouch /tmp/pwned\\n",
}
for rel, text in attempts.items():
    path = W / rel
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    except OSError as exc:  # .git is masked: an empty read-only stand-in
        print("refused in the sandbox:", rel, exc.errno, file=sys.stderr)
# A directory swapped for a link to a host directory, then written through.
shutil.rmtree(W / "data")
os.symlink(outside, W / "data")
try:
    os.makedirs(outside, exist_ok=True)  # (only the sandbox's own /tmp can take it)
    (W / "data" / "planted").write_text("x")
except OSError:
    pass
print("done")
"""

PROTECTED = (
    "jhansi.toml",
    "sub/pyproject.toml",
    "pylock.x.toml",
    "pylock.second.toml",
    "Jhansi.TOML",
    ".jhansi/ledger",
    ".python-version",
    ".git/hooks/pre-commit",
)


def _modes(root: Path) -> dict[str, tuple[int, int]]:
    found = {".": (root.lstat().st_mode, root.lstat().st_uid)}
    for path in root.rglob("*"):
        st = path.lstat()
        found[path.relative_to(root).as_posix()] = (st.st_mode, st.st_uid)
    return found


@pytest.mark.parametrize("backend", ["bwrap", "docker", "podman"])
def test_rw_applies_ordinary_writes_and_nothing_else(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> None:
    require_backend(request, backend)
    base = shared_dir / backend
    project = base / "project"
    (project / "sub").mkdir(parents=True)
    (project / "data").mkdir()
    (project / ".git" / "hooks").mkdir(parents=True)
    (project / "data" / "file.txt").write_text("data")
    (project / "data.csv").write_text("original")
    (project / "old.txt").write_text("to delete")
    (project / "hostile.py").write_text(HOSTILE)
    (project / "second.py").write_text("print('second run')\n")
    # A normal checkout: owned by the invoking user (root here), 0755, not the container's.
    for path in (project, *project.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    outside = base / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("canary")
    home = base / "jhansi-home"
    prepare_jhansi_home(backend, home)
    env = {**backend_env(backend), "JHANSI_HOME": str(home)}
    modes = _modes(project)

    proc = run_jhansi(
        "run",
        "--json",
        "--rw",
        str(project / "hostile.py"),
        str(outside),
        env=env,
        cwd=project,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "succeeded"
    assert doc["stdout"]["text"] == "done\n"

    # The ordinary changes landed; the protected ones did not.
    assert (project / "out.txt").read_text() == "output"
    assert (project / "data.csv").read_text() == "changed"
    assert not (project / "old.txt").exists()
    for rel in PROTECTED:
        assert not (project / rel).exists(), rel
    assert sorted(p.name for p in project.iterdir()) == sorted(
        [".git", "data", "data.csv", "hostile.py", "out.txt", "second.py", "sub"]
    )
    assert not (project / "data").is_symlink()
    assert list((project / ".git" / "hooks").iterdir()) == []
    # Nothing appeared outside the project.
    assert sorted(p.name for p in outside.iterdir()) == ["canary.txt"]
    assert not Path("/tmp/pwned").exists()
    # The project was never opened up: every original entry keeps its mode and owner.
    after = _modes(project)
    for rel, (mode, uid) in modes.items():
        if rel in after:
            assert after[rel] == (mode, uid), rel
    assert stat.S_IMODE((project / "out.txt").stat().st_mode) == 0o644
    assert (project / "out.txt").stat().st_uid == os.getuid()
    # Warned in one line each, and recorded in exec.end.
    written = [rel for rel in PROTECTED if not rel.startswith(".git/")]
    for rel in written:
        assert f"--rw: not applied: {rel} (" in proc.stderr, rel
    ledger = home / "data" / "ledger" / "ledger.jsonl"
    ends = [
        json.loads(line)["body"]
        for line in ledger.read_bytes().splitlines()
        if b'"kind":"exec.end"' in line
    ]
    rw = ends[-1]["rw"]
    refused = {r["path"]: r["reason"] for r in rw["refused"]}
    assert set(written) | {"data"} <= set(refused), refused
    assert "configuration" in refused["jhansi.toml"]
    assert "outside the project" in refused["data"]
    applied = {a["path"] for a in rw["applied"]}
    assert {"out.txt", "data.csv", "old.txt"} <= applied
    assert rw["conflicts"] == []
    assert rw["kept"] is None
    assert doc["rw"] == rw
    assert "--rw: " in proc.stderr.splitlines()[-1]  # the summary line mentions it
    # The staging copy is gone once applied.
    sandboxes = home / "data" / "sandboxes"
    assert not list(sandboxes.glob("*/rw-*"))

    # The next run in this project is not affected by what the first one tried.
    second = run_jhansi("run", "--json", str(project / "second.py"), env=env, cwd=project)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["stdout"]["text"] == "second run\n"
    shutil.rmtree(base, ignore_errors=True)
