"""Kept walks (jhansi.sandbox.stamps): reused only while no directory has changed.

The masks decide what the sandbox may not see, so the cases below are the ways a
secret could appear in a project without a walk: a new file deep in the tree, the
same with the directory's mtime put back (as tar and rsync -t do), a file renamed
into place, a mount over a directory, a directory made listable, a masked link whose
target moves, and a kept entry that was tampered with. Real files and, for the
mount, a real tmpfs in a private mount namespace (``unshare``; root, as in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jhansi.config import DEFAULT_MASK
from jhansi.sandbox import masks, overlay, stamps
from jhansi.sandbox.interface import Overlay
from jhansi.sandbox.masks import masked_kept
from jhansi.sandbox.overlay import LayerDirs, ready_upper


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Directories made by the test count as settled at once (the real margin is 2 s)."""
    monkeypatch.setattr(stamps, "SETTLED_NS", 0)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for sub in ("src/pkg/deep/er", "docs", "data/raw"):
        (root / sub).mkdir(parents=True)
        (root / sub / "module.py").write_text("x = 1\n")
    (root / ".env").write_text("TOKEN=1\n")
    return root


def _rels(project: Path, found: list[Path]) -> list[str]:
    return sorted(p.relative_to(project).as_posix() for p in found)


def _no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("walked again")

    monkeypatch.setattr(masks, "find_masked", refuse)


def test_an_unchanged_tree_is_not_walked_again(
    project: Path, tmp_path: Path, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "walks" / "masks.json"
    first = _rels(project, masked_kept(project, DEFAULT_MASK, cache))
    assert first == [".env"]
    _no_walk(monkeypatch)
    assert _rels(project, masked_kept(project, DEFAULT_MASK, cache)) == first


@pytest.mark.parametrize("how", ["create", "rename", "mtime-put-back", "mkdir"])
def test_a_secret_added_anywhere_is_masked_next_run(
    project: Path, tmp_path: Path, settled: None, how: str
) -> None:
    cache = tmp_path / "walks" / "masks.json"
    masked_kept(project, DEFAULT_MASK, cache)
    deep = project / "src" / "pkg" / "deep" / "er"
    before = deep.stat()
    time.sleep(0.02)  # past a tick of the kernel's coarse clock
    if how == "create":
        (deep / "id_rsa").write_text("key\n")
        expected = "src/pkg/deep/er/id_rsa"
    elif how == "rename":
        (deep / "notes.tmp").write_text("TOKEN=2\n")
        (deep / "notes.tmp").replace(deep / ".env")
        expected = "src/pkg/deep/er/.env"
    elif how == "mtime-put-back":
        (deep / "credentials.json").write_text("{}\n")
        os.utime(deep, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert deep.stat().st_mtime_ns == before.st_mtime_ns
        expected = "src/pkg/deep/er/credentials.json"
    else:
        (deep / "more").mkdir()
        (deep / "more" / ".env").write_text("TOKEN=3\n")
        expected = "src/pkg/deep/er/more/.env"
    found = _rels(project, masked_kept(project, DEFAULT_MASK, cache))
    assert expected in found


def test_a_changed_mode_changes_the_stamp(project: Path, tmp_path: Path, settled: None) -> None:
    """A directory made listable (or closed) has a new ctime: the kept walk is stale."""
    cache = tmp_path / "walks" / "masks.json"
    masked_kept(project, DEFAULT_MASK, cache)
    found = stamps.load(cache, json.loads(cache.read_text())["key"])
    assert found is not None
    assert stamps.unchanged(str(project), found[0][0])
    time.sleep(0.02)
    (project / "data" / "raw").chmod(0o700)
    assert not stamps.unchanged(str(project), found[0][0])


def test_a_recently_changed_directory_keeps_nothing(project: Path, tmp_path: Path) -> None:
    """Two changes within one tick of the coarse clock leave one ctime: a walk that
    stamped a directory changed just before it is not kept."""
    cache = tmp_path / "walks" / "masks.json"
    masked_kept(project, DEFAULT_MASK, cache)  # the test's files are seconds old at most
    assert not cache.exists()


def test_a_masked_link_is_never_kept(project: Path, tmp_path: Path, settled: None) -> None:
    (project / "config").mkdir()
    (project / "config" / "prod.env").write_text("TOKEN=4\n")
    (project / "docs" / ".env").symlink_to("../config/prod.env")
    cache = tmp_path / "walks" / "masks.json"
    assert "config/prod.env" in _rels(project, masked_kept(project, DEFAULT_MASK, cache))
    assert not cache.exists()


def test_a_tampered_or_foreign_entry_is_ignored(
    project: Path, tmp_path: Path, settled: None
) -> None:
    cache = tmp_path / "walks" / "masks.json"
    masked_kept(project, DEFAULT_MASK, cache)
    entry = json.loads(cache.read_text())
    entry["answer"] = []  # as if nothing were masked
    entry["stamps"] = [[["", 0, 0, 0]]]
    cache.write_text(json.dumps(entry))
    assert _rels(project, masked_kept(project, DEFAULT_MASK, cache)) == [".env"]
    cache.write_bytes(b"\xff not json")
    assert _rels(project, masked_kept(project, DEFAULT_MASK, cache)) == [".env"]
    # another project's, or other patterns', entry is not this one's
    other = tmp_path / "other"
    shutil.copytree(project, other)
    (other / ".env").unlink()
    assert masked_kept(other, DEFAULT_MASK, cache) == []
    found = _rels(project, masked_kept(project, (*DEFAULT_MASK, "*.py"), cache))
    assert "src/pkg/deep/er/module.py" in found


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root")
def test_a_mount_over_a_directory_is_seen(project: Path, tmp_path: Path) -> None:
    """A tmpfs holding a secret, mounted over a kept directory (in a private mount
    namespace, so nothing on the host changes)."""
    cache = tmp_path / "walks" / "masks.json"
    code = f"""
import os, subprocess, sys
from pathlib import Path
from jhansi.config import DEFAULT_MASK
from jhansi.sandbox import stamps
from jhansi.sandbox.masks import masked_kept
stamps.SETTLED_NS = 0
project, cache = Path({str(project)!r}), Path({str(cache)!r})
masked_kept(project, DEFAULT_MASK, cache)
assert cache.exists()
target = project / "docs"
subprocess.run(["mount", "-t", "tmpfs", "none", str(target)], check=True)
(target / "secrets.yaml").write_text("k: v\\n")
found = [p.relative_to(project).as_posix() for p in masked_kept(project, DEFAULT_MASK, cache)]
print(sorted(found))
"""
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    # walked again: the mount point is hidden whole (secrets.yaml with it)
    assert proc.stdout.splitlines() == ["['.env', 'docs']"]


def test_twins_are_made_once_and_again_when_a_directory_opens(
    tmp_path: Path, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox is not the project's owner: a kept walk makes nothing new until a
    directory changes (here one becomes readable to others)."""

    project = tmp_path / "project"
    (project / "a" / "b").mkdir(parents=True)
    (project / "closed").mkdir(mode=0o700)
    for d in (project, project / "a", project / "a" / "b"):
        d.chmod(0o755)
    (project / "closed").chmod(0o700)
    root = tmp_path / "layer"
    dirs = LayerDirs(root, project)
    for d in (root, dirs.upper, dirs.work):
        d.mkdir(parents=True, exist_ok=True)
    overlay.save_state(dirs, {"version": 1, "project": str(project), "masked": []})
    stranger = os.getuid() + 12345
    view = Overlay((project,), dirs.upper, dirs.work, "user")
    ready_upper(view, project, stranger, stranger)
    assert (dirs.upper / "a" / "b").is_dir()
    assert not (dirs.upper / "closed").exists()
    calls: list[int] = []
    real = overlay.open_directories

    def counted(*args: object, **kwargs: object) -> list[str]:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(overlay, "open_directories", counted)
    ready_upper(view, project, stranger, stranger)
    assert calls == []
    time.sleep(0.02)
    (project / "closed").chmod(0o755)
    ready_upper(view, project, stranger, stranger)
    assert calls == [1]
    assert (dirs.upper / "closed").is_dir()


# -- what a stamp cannot see: such walks are never kept --------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root (mounts)"
)


def _in_private_mounts(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as root in a private mount namespace: its mounts end with it."""
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


@needs_root
@pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="needs /dev/fuse")
def test_a_file_system_whose_ctime_is_not_a_change_time_is_walked_each_run(
    tmp_path: Path,
) -> None:
    """On a FUSE view that reports the mtime as ctime (as sshfs does), a secret added with
    the directory's mtime put back (tar, rsync -t) leaves every stamp as it was: such a
    walk must not be kept, however settled its directories look."""
    backing, view = tmp_path / "backing", tmp_path / "view"
    (backing / "src").mkdir(parents=True)
    view.mkdir()
    for d in (backing / "src", backing):
        os.utime(d, (time.time() - 3600, time.time() - 3600))
    cache = tmp_path / "walks" / "masks.json"
    code = f"""
import os
from pathlib import Path
from jhansi.config import DEFAULT_MASK
from jhansi.sandbox.masks import masked_kept
from tests.fuse_server import mount_view
backing, view, cache = Path({str(backing)!r}), Path({str(view)!r}), Path({str(cache)!r})
mount_view(str(backing), str(view))
assert masked_kept(view, DEFAULT_MASK, cache) == []
print("kept" if cache.exists() else "not kept")
before = os.stat(backing / "src")
(backing / "src" / ".env").write_text("TOKEN=5\\n")
os.utime(backing / "src", ns=(before.st_atime_ns, before.st_mtime_ns))
assert os.stat(view / "src").st_ctime_ns == before.st_mtime_ns
print(sorted(p.relative_to(view).as_posix() for p in masked_kept(view, DEFAULT_MASK, cache)))
"""
    proc = _in_private_mounts(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["not kept", "['src/.env']"]


def test_a_walk_of_a_missing_project_is_not_kept(tmp_path: Path, settled: None) -> None:
    """A project that could not be looked at gives a walk with no stamp at all: kept, it
    would be reused (nothing to find changed) once the project is there, secrets and all."""
    project = tmp_path / "project"
    cache = tmp_path / "walks" / "masks.json"
    assert masked_kept(project, DEFAULT_MASK, cache) == []
    assert not cache.exists()
    project.mkdir()
    (project / ".env").write_text("TOKEN=6\n")
    assert _rels(project, masked_kept(project, DEFAULT_MASK, cache)) == [".env"]


def test_a_walk_that_could_not_list_a_directory_is_not_kept(
    project: Path, tmp_path: Path, settled: None
) -> None:
    """What the walk could not look at (here a directory whose path is longer than the
    kernel takes) is not in its stamps, and may hold secrets the next run could see:
    such a walk is not kept. (A directory it may not list is hidden whole instead.)"""
    fd = os.open(project / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):  # 20 levels of 250 bytes: past PATH_MAX (4096)
            os.mkdir("d" * 250, dir_fd=fd)
            child = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    cache = tmp_path / "walks" / "masks.json"
    assert _rels(project, masked_kept(project, DEFAULT_MASK, cache)) == [".env"]
    assert not cache.exists()


def test_an_older_walk_is_not_reused_by_another_matcher(
    project: Path, tmp_path: Path, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same patterns matched by another jhansi (a fixed matcher, after an upgrade)
    may mask more: a walk kept by the older one is not its answer."""
    cache = tmp_path / "walks" / "masks.json"
    assert _rels(project, masked_kept(project, DEFAULT_MASK, cache)) == [".env"]
    assert cache.exists()
    real = masks.compile_patterns

    def newer(patterns: tuple[str, ...]) -> masks.Matcher:
        return real((*patterns, "module.py"))  # as if the new matcher also hid these

    monkeypatch.setattr(masks, "compile_patterns", newer)
    # what the new masks.py's BLAKE3 would be (the one read is this process's)
    monkeypatch.setattr(stamps, "code_identity", lambda source: f"newer {source}")
    found = _rels(project, masked_kept(project, DEFAULT_MASK, cache))
    assert "src/pkg/deep/er/module.py" in found


@needs_root
def test_what_a_mount_in_the_project_covers_is_hidden(project: Path, tmp_path: Path) -> None:
    """An overlay's lower layer shows no mount below it: /work shows what is *under* a
    mount in the project, which no walk (that sees the mount) can list. So a mount point
    is hidden whole, here over a directory that holds a secret beneath it."""
    (project / "docs" / ".env").write_text("TOKEN=7\n")
    cache = tmp_path / "walks" / "masks.json"
    code = f"""
import subprocess
from pathlib import Path
from jhansi.config import DEFAULT_MASK
from jhansi.sandbox import stamps
from jhansi.sandbox.masks import masked_kept
stamps.SETTLED_NS = 0
project, cache = Path({str(project)!r}), Path({str(cache)!r})
subprocess.run(["mount", "-t", "tmpfs", "none", str(project / "docs")], check=True)
(project / "docs" / "readme.txt").write_text("hello\\n")
for _ in range(2):  # walked, then as kept
    found = masked_kept(project, DEFAULT_MASK, cache)
    print(sorted(p.relative_to(project).as_posix() for p in found))
"""
    proc = _in_private_mounts(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['.env', 'docs']"] * 2
    assert cache.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="twins are given to another uid by root")
def test_a_twin_closes_with_its_directory(tmp_path: Path, settled: None) -> None:
    """A twin made while a directory was open to the sandbox is its merged directory's
    owner and mode: once the project closes the directory (chmod 700), the twin must
    close with it, or the sandbox goes on listing and reading what is in it (as it did
    on rootful docker, whose overlay looks up the lower layer as root)."""
    project = tmp_path / "project"
    (project / "priv").mkdir(parents=True)
    (project / "priv" / "notes.txt").write_text("private\n")
    for d in (project, project / "priv"):
        d.chmod(0o755)
    root = tmp_path / "layer"
    dirs = LayerDirs(root, project)
    for d in (root, dirs.upper, dirs.work):
        d.mkdir(parents=True, exist_ok=True)
    overlay.save_state(dirs, {"version": 1, "project": str(project), "masked": []})
    stranger = os.getuid() + 12345
    view = Overlay((project,), dirs.upper, dirs.work, "user")
    twin = dirs.upper / "priv"

    def owner_and_mode() -> tuple[int, int]:
        st = twin.lstat()
        return st.st_uid, stat.S_IMODE(st.st_mode)

    ready_upper(view, project, stranger, stranger)
    assert owner_and_mode() == (stranger, 0o755)
    time.sleep(0.02)
    (project / "priv").chmod(0o700)
    ready_upper(view, project, stranger, stranger)
    assert owner_and_mode() == (os.getuid(), 0o700)  # as the project's: closed to it
    time.sleep(0.02)
    (project / "priv").chmod(0o755)
    ready_upper(view, project, stranger, stranger)
    assert owner_and_mode() == (stranger, 0o755)  # open again, and writable
