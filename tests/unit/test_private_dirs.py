"""The checks on directories jhansi makes or reuses in shared places, and on mount sources."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from jhansi.errors import SandboxError
from jhansi.paths import check_private_dir, ensure_private_dir
from jhansi.sandbox.bwrap.options import build_options
from jhansi.sandbox.bwrap.user import sandbox_host_user
from jhansi.sandbox.interface import ROOT_SANDBOX_HOST_UID
from jhansi.sandbox.sources import check_own, open_source


def test_made_dirs_and_their_made_parents_are_private(tmp_path: Path) -> None:
    made = ensure_private_dir(tmp_path / "a" / "b" / "run")
    for path in (tmp_path / "a", tmp_path / "a" / "b", made):
        assert path.stat().st_mode & 0o777 == 0o700
    assert ensure_private_dir(made) == made  # found again: accepted


def test_a_link_is_refused_even_to_a_private_dir(tmp_path: Path) -> None:
    real = ensure_private_dir(tmp_path / "real")
    (tmp_path / "run").symlink_to(real)
    with pytest.raises(SandboxError, match="symbolic link") as caught:
        ensure_private_dir(tmp_path / "run")
    assert "XDG_RUNTIME_DIR" in caught.value.hint


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_dir_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(mode)
    with pytest.raises(SandboxError, match=f"mode {mode:o}"):
        ensure_private_dir(tmp_path / "run")


def test_a_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    with pytest.raises(SandboxError, match=r"owned by .*uid \d+.*not uid 4242"):
        check_private_dir(tmp_path / "run", uid=4242)


def test_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(SandboxError, match="not a directory"):
        ensure_private_dir(tmp_path / "run")


def test_a_parent_another_user_owns_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another uid needs root (CI runs as root)")
    (tmp_path / "theirs").mkdir(mode=0o755)
    os.chown(tmp_path / "theirs", 65534, 65534)
    with pytest.raises(SandboxError, match="could swap"):
        ensure_private_dir(tmp_path / "theirs" / "run")


def test_a_writable_parent_must_be_sticky(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(SandboxError, match="not sticky"):
        ensure_private_dir(tmp_path / "open" / "run")
    (tmp_path / "open").chmod(0o1777)
    assert ensure_private_dir(tmp_path / "open" / "run").is_dir()


def test_sources_open_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    try:
        for name, is_dir in (("dir", True), ("file", False), ("sock", False)):
            fd, source = open_source(tmp_path / name)
            os.close(fd)
            assert source.is_dir is is_dir
            assert source.inode == (tmp_path / name).lstat().st_ino
    finally:
        listener.close()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    with pytest.raises(SandboxError, match="is a symbolic link"):
        open_source(tmp_path / "link")  # O_PATH | O_NOFOLLOW opens the link itself
    with pytest.raises(SandboxError, match="symbolic link"):
        check_own(tmp_path / "link", None)
    with pytest.raises(SandboxError, match="not a directory of uid 4242"):
        check_own(tmp_path / "dir", 4242)


def test_the_sandbox_is_never_host_root() -> None:
    root = sandbox_host_user(0, 0)
    assert (root.uid, root.drop) == (ROOT_SANDBOX_HOST_UID, True)
    assert "root" in root.reason
    user = sandbox_host_user(1234, 1234)
    assert (user.uid, user.gid, user.drop) == (1234, 1234, False)


def test_every_bind_goes_through_the_source_mapping(tmp_path: Path) -> None:
    from dataclasses import replace

    from jhansi.sandbox.interface import Mount
    from tests.unit.sandbox.test_bwrap import FEATURES, ROOT, spec

    asked: list[tuple[str, bool]] = []

    def source(path: str, own: bool) -> str:
        asked.append((path, own))
        return f"/staged/{len(asked)}"

    base = spec(tmp_path)
    home = Mount(tmp_path, "/home/sandbox", read_only=False, owned=True)
    made = replace(base, mounts=(*base.mounts[:-1], home))
    options = build_options(made, ROOT, FEATURES, lambda _d: 9, source=source)
    for bind in ("--bind", "--ro-bind"):
        for index, word in enumerate(options[:-1]):
            if word == bind:
                assert options[index + 1].startswith("/staged/"), options[index : index + 3]
    owned = [str(m.source) for m in made.mounts if m.owned]
    assert owned
    assert all((p, True) in asked for p in owned)


def test_the_dedicated_range_is_refused_when_an_account_or_range_holds_an_id(
    tmp_path: Path,
) -> None:
    from jhansi.errors import SandboxError
    from jhansi.sandbox import ownership
    from jhansi.sandbox.interface import ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN

    # The real range is free on this machine (no account, group or range holds an id)...
    ownership.check_dedicated_range(ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN)
    # ...and a range holding an account's id is refused, naming it (uid 0 is root's).
    with pytest.raises(SandboxError, match="user root"):
        ownership.check_dedicated_range(0, 10)
    # A subordinate range (a rootless engine's user) overlapping it is refused too.
    ranges = tmp_path / "subuid"
    ranges.write_text(f"someone:{ROOT_SANDBOX_ID_BASE - 10}:65536\n")
    base, span = ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN
    assert ownership._overlapping_range(base, span, ranges) == "someone"
    assert ownership._overlapping_range(base - 20, 10, ranges) is None


def test_each_sandbox_has_its_own_host_id_in_the_range() -> None:
    from jhansi.sandbox.interface import ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN, root_sandbox_id

    ids = {root_sandbox_id(f"sandbox-{n}") for n in range(200)}
    assert len(ids) == 200  # no two of these share an id
    assert all(0 <= i - ROOT_SANDBOX_ID_BASE < ROOT_SANDBOX_ID_SPAN for i in ids)
    assert root_sandbox_id("a") == root_sandbox_id("a")  # a named sandbox keeps its id


@pytest.mark.skipif(os.getuid() != 0, reason="handing a home to another uid needs root")
def test_hand_over_clears_setid_bits_and_closes_the_home(tmp_path: Path) -> None:
    from jhansi.sandbox.ownership import hand_over

    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    planted = home / "sub" / "suid"
    planted.write_text("#!/bin/sh\n")
    planted.chmod(0o6755)
    home.chmod(0o755)
    uid = os.getuid()
    hand_over(home, uid, os.getgid())  # same owner: still cleared, every run
    assert planted.stat().st_mode & 0o7777 == 0o755
    assert home.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="running a process as another uid needs root")
def test_a_process_left_with_a_sandbox_id_is_evicted_before_its_next_run(tmp_path: Path) -> None:
    # Someone ran a setuid file a sandbox had left: their process holds the sandbox's id
    # and would wait to enter its next run. No account holds the id: it is killed.
    import subprocess

    from jhansi.sandbox.interface import root_sandbox_id
    from jhansi.sandbox.ownership import hand_over

    uid = root_sandbox_id("evict-test")
    lurker = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: (os.setgid(uid), os.setuid(uid)))
    home = tmp_path / "home"
    home.mkdir()
    try:
        hand_over(home, uid, uid)
        assert lurker.wait(timeout=10) == -9
    finally:
        if lurker.poll() is None:
            lurker.kill()
