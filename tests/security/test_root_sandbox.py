"""bwrap when root runs jhansi: the sandbox is never host root, and its sources cannot be swapped.

CI runs as root; these cases are about exactly that, so under
``JHANSI_REQUIRE_ENGINES=1`` a non-root run fails loudly instead of skipping.
Everything goes through ``jhansi run`` on the real bwrap backend.
"""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jhansi.sandbox.interface import root_sandbox_id
from tests.conftest import absent, backend_env, run_jhansi

SECRET = "jhansi-root-only-5c1e"  # noqa: S105 (a canary, not a password)


@pytest.fixture(autouse=True)
def as_root(bwrap_path: Path) -> None:
    if os.geteuid() != 0:
        absent("these cases need jhansi to run as root (CI does)")


@pytest.fixture
def project(shared_dir: Path) -> Path:
    directory = shared_dir / "project"
    directory.mkdir()
    return directory


def _env(home: Path) -> dict[str, str]:
    return {**backend_env("bwrap"), "JHANSI_HOME": str(home)}


@pytest.fixture
def root_only_file() -> Iterator[Path]:
    """A root-owned 0600 file in a fresh directory inside a read-only bind (the interpreter's
    prefix, else /usr/local/share): what the sandbox must not read."""
    candidates = [Path(sysconfig.get_paths()["data"]) / "share", Path("/usr/local/share")]
    base = next(p for p in candidates if p.is_dir())
    directory = Path(tempfile.mkdtemp(prefix="jhansi-test-", dir=base))
    directory.chmod(0o755)
    secret = directory / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    try:
        yield secret
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_root_only_file_in_a_read_only_bind_cannot_be_read(
    project: Path, root_only_file: Path, tmp_path: Path
) -> None:
    # bwrap binds the prefix of the interpreter jhansi runs (this one) and /usr.
    (project / "peek.py").write_text(
        "import sys\n"
        f"path = {str(root_only_file)!r}\n"
        "try:\n"
        "    data = open(path).read()\n"
        "except PermissionError:\n"
        "    print('denied'); sys.exit(0)\n"
        "except FileNotFoundError:\n"
        "    print('not bound'); sys.exit(3)\n"
        "print('READ', data); sys.exit(77)\n"
    )
    proc = run_jhansi(
        "run", "--ephemeral", str(project / "peek.py"), env=_env(tmp_path / "jh"), cwd=project
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "denied" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def _host_uids(pid_file: Path, deadline: float) -> list[str]:
    """The Uid: line the host's /proc shows for the sandbox's process (``pid_file`` is
    written by the script with its host pid, found by a unique marker in its cmdline)."""
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                status = (entry / "status").read_text()
            except OSError:
                continue
            if str(pid_file).encode() in cmdline and b"sleeper" in cmdline:
                line = next(x for x in status.splitlines() if x.startswith("Uid:"))
                return line.split()[1:]
        time.sleep(0.1)
    return []


def test_the_sandbox_is_a_host_uid_no_account_holds_and_its_home_stays_root_deletable(
    project: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker-for-the-sleeper"
    (project / "sleeper.py").write_text(
        "import os, subprocess, sys, time\n"
        "print(open('/proc/self/uid_map').read().split())\n"
        "os.makedirs(os.path.expanduser('~/private'), mode=0o700)\n"
        "with open(os.path.expanduser('~/private/f.txt'), 'w') as f:\n"
        "    f.write('x')\n"
        "os.chmod(os.path.expanduser('~/private/f.txt'), 0o600)\n"
        # A child whose command line the host can find: its host uid is the sandbox's.
        "subprocess.run([sys.executable, '-c', 'import time; time.sleep(3)',"
        f" {str(marker)!r}, 'sleeper'], check=True)\n"
    )
    found: list[list[str]] = []
    watcher = threading.Thread(
        target=lambda: found.append(_host_uids(marker, time.monotonic() + 60)), daemon=True
    )
    watcher.start()
    home = tmp_path / "jh"
    proc = run_jhansi(
        "run",
        "--json",
        "--sandbox",
        "rootcheck",
        str(project / "sleeper.py"),
        env=_env(home),
        cwd=project,
    )
    watcher.join(70)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    own_id = root_sandbox_id("rootcheck")  # this sandbox's own, no other's
    # Every uid of the sandbox's process (real, effective, saved, fs) is the dedicated id,
    # which no account holds (1000 is often a person's: its processes could trace ours).
    assert found, "the watcher never ran"
    import pwd

    with pytest.raises(KeyError):
        pwd.getpwuid(own_id)
    assert found[0] == [str(own_id)] * 4, found
    # The run's result says so, and why.
    doc = json.loads(proc.stdout)
    assert doc["enforcement"]["user"].startswith(f"host uid {own_id}")
    assert "root" in doc["enforcement"]["user"]
    sandbox_home = home / "data" / "sandboxes" / "rootcheck" / "home"
    st = sandbox_home.stat()
    assert (st.st_uid, st.st_gid) == (own_id, own_id)
    assert (sandbox_home / "private" / "f.txt").stat().st_uid == own_id
    assert (sandbox_home / "private" / "f.txt").read_text() == "x"  # root reads it
    removed = run_jhansi("sandbox", "rm", "rootcheck", env=_env(home))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not sandbox_home.exists()


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="jhansi-root-only-"))  # 0700, root
    (directory / "secret.txt").write_text(SECRET)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _snapshot(directory: Path) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for path in [directory, *directory.rglob("*")]:
        st = path.lstat()
        out[str(path)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("how", ["nobody", "world-writable", "symlink"])
@pytest.mark.parametrize("where", ["jhansi-home", "tmp"])
def test_a_planted_runtime_dir_is_refused(
    how: str, where: str, project: Path, tmp_path: Path, root_only_dir: Path
) -> None:
    home = tmp_path / "jh"
    env = _env(home)
    if where == "jhansi-home":
        runtime = home / "run"
        home.mkdir()
    else:
        # No JHANSI_HOME nor XDG_RUNTIME_DIR: run files go to <tmp>/jhansi-<uid>. A private
        # TMPDIR stands in for /tmp so that the test does not touch the machine's own.
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        tmp.chmod(0o1777)
        runtime = tmp / f"jhansi-{os.getuid()}"
        env = {
            **backend_env("bwrap"),
            "JHANSI_HOME": "",
            "TMPDIR": str(tmp),
            "XDG_RUNTIME_DIR": "",
            "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
            "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        }
    if how == "symlink":
        runtime.symlink_to(root_only_dir)
    else:
        runtime.mkdir()
        if how == "nobody":
            os.chown(runtime, 65534, 65534)
        else:
            runtime.chmod(0o777)
    before = _snapshot(root_only_dir)
    (project / "s.py").write_text("import os; print('RAN', os.listdir(os.path.expanduser('~')))\n")
    ephemeral = run_jhansi("run", "--ephemeral", str(project / "s.py"), env=env, cwd=project)
    stdin = run_jhansi("run", "-", env=env, cwd=project, input="print('RAN')\n")
    for proc in (ephemeral, stdin):
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert "RAN" not in proc.stdout
        assert f"jhansi will not use {runtime}" in proc.stderr, proc.stderr
        assert "hint:" in proc.stderr
        assert "JHANSI_HOME" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert _snapshot(root_only_dir) == before
    assert (root_only_dir / "secret.txt").read_text() == SECRET
