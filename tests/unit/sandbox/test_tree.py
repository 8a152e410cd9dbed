"""Trees a sandbox wrote, whatever their shape: walked and removed without recursion."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jhansi.sandbox.ownership import hand_over
from jhansi.sandbox.tree import MAX_DEPTH, TooDeep, remove_tree, walk
from jhansi.sandbox.workspace import _dir_size


def _nest(root: Path, depth: int) -> None:
    """``d/d/d/...`` ``depth`` levels deep, as a script could make it (one level at a
    time: the whole path is longer than the kernel accepts in one call)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open("f", "w", opener=lambda p, flags: os.open(p, flags, 0o600, dir_fd=fd)) as f:
        f.write("deep")
    os.close(fd)


def test_a_tree_thousands_deep_is_removed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _nest(home, 3000)
    (home / "locked").mkdir()
    (home / "locked" / "x").write_text("x")
    (home / "locked").chmod(0o000)  # the sandbox took away its own access
    (home / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("keep")
    remove_tree(home)
    assert not home.exists()
    assert (tmp_path / "outside" / "keep").read_text() == "keep"  # the link was not followed


def test_walks_stop_with_an_error_past_their_depth(tmp_path: Path) -> None:
    _nest(tmp_path, MAX_DEPTH + 20)
    with pytest.raises(TooDeep):
        list(walk(tmp_path))
    assert _dir_size(tmp_path) >= 0  # sandbox ls: a partial size, not a crash


def test_hand_over_of_a_deep_home_is_a_clear_error(tmp_path: Path) -> None:
    from jhansi.errors import SandboxError

    _nest(tmp_path, MAX_DEPTH + 20)
    if os.getuid() != 0:
        pytest.skip("handing a directory to another uid needs root (CI runs as root)")
    with pytest.raises(SandboxError, match="nest"):
        hand_over(tmp_path, 2_000_000_000, 2_000_000_000)


def test_walk_lists_parents_before_children_and_never_follows_links(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "a" / "up").symlink_to("..")
    seen = [rel for rel, _ in walk(tmp_path)]
    assert seen.index("a") < seen.index("a/b") < seen.index("a/b/f")
    assert "a/up" in seen
    assert not any(rel.startswith("a/up/") for rel in seen)
