"""The --rw layer: a copy the sandbox writes, applied to the project by jhansi.

Real files in a temporary directory; the "sandbox" is the test writing into the
staging directory, as a script would through /work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jhansi.sandbox.layer import (
    Change,
    Entry,
    Layer,
    apply_changes,
    make_layer,
    plan_changes,
    protected_reason,
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "sub").mkdir(parents=True)
    (root / "keep.txt").write_text("keep\n")
    (root / "change.txt").write_text("old\n")
    (root / "gone.txt").write_text("bye\n")
    (root / "sub" / "a.py").write_text("print(1)\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o644)
    (root / "link").symlink_to("keep.txt")
    (root / "secret.pem").write_text("KEY")
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id").write_text("KEY")
    os.mkfifo(root / "fifo")
    return root


def _layer(project: Path, tmp_path: Path) -> Layer:
    return make_layer(project, tmp_path / "layer", [project / "secret.pem", project / ".ssh"])


def _apply(layer: Layer) -> dict[str, tuple[str, str]]:
    report = apply_changes(layer, plan_changes(layer))
    assert not report.error
    return {o.path: (o.result, o.reason) for o in report.outcomes}


def test_copy_keeps_symlinks_masks_and_never_hard_links(project: Path, tmp_path: Path) -> None:
    layer = _layer(project, tmp_path)
    root = layer.root
    assert (root / "keep.txt").read_text() == "keep\n"
    assert (root / "keep.txt").stat().st_ino != (project / "keep.txt").stat().st_ino
    assert (root / "keep.txt").stat().st_nlink == 1
    assert (root / "link").is_symlink()
    assert (root / "link").readlink().as_posix() == "keep.txt"
    assert (root / "secret.pem").read_bytes() == b""
    assert (root / "secret.pem").stat().st_mode & 0o777 == 0o444
    assert (root / ".ssh").is_dir()
    assert not any((root / ".ssh").iterdir())
    assert (root / ".ssh").stat().st_mode & 0o777 == 0o555
    assert not (root / "fifo").exists()
    assert "secret.pem" in layer.masked
    assert plan_changes(layer) == []  # nothing changed yet


def test_apply_add_change_delete_mkdir_symlink_mode(project: Path, tmp_path: Path) -> None:
    layer = _layer(project, tmp_path)
    root = layer.root
    (root / "out.csv").write_text("a,b\n")
    (root / "change.txt").write_text("new\n")
    (root / "gone.txt").unlink()
    (root / "new" / "deep").mkdir(parents=True)
    (root / "new" / "deep" / "f").write_text("f")
    (root / "sub" / "alias").symlink_to("../keep.txt")
    (root / "run.sh").chmod(0o4777)  # setuid and world-writable: neither is applied
    outcomes = _apply(layer)
    assert {r for r, _ in outcomes.values()} == {"applied"}, outcomes
    assert (project / "out.csv").read_text() == "a,b\n"
    assert (project / "change.txt").read_text() == "new\n"
    assert not (project / "gone.txt").exists()
    assert (project / "new" / "deep" / "f").read_text() == "f"
    assert (project / "sub" / "alias").readlink().as_posix() == "../keep.txt"
    assert (project / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (project / "keep.txt").read_text() == "keep\n"
    assert not list(project.rglob(".jhansi-apply-*"))


@pytest.mark.parametrize(
    "rel",
    [
        "jhansi.toml",
        "JHANSI.TOML",
        "sub/pyproject.toml",
        "sub/PyProject.Toml",
        "pylock.toml",
        "pylock.foo.toml",
        "sub/PYLOCK.x.TOML",
        ".jhansi/ledger",
        "sub/.JHANSI/x",
        ".python-version",
        ".tool-versions",
        ".mise.toml",
        "mise.toml",
        ".git/hooks/pre-commit",
        "sub/.Git/config",
        "uv.toml",
    ],
)
def test_protected_names_are_refused(project: Path, tmp_path: Path, rel: str) -> None:
    assert protected_reason(rel)
    layer = _layer(project, tmp_path)
    target = layer.root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("evil")
    outcomes = _apply(layer)
    assert outcomes[rel][0] == "refused"
    assert not (project / rel).exists()


def test_masked_paths_are_never_written(project: Path, tmp_path: Path) -> None:
    layer = _layer(project, tmp_path)
    (layer.root / "secret.pem").chmod(0o644)
    (layer.root / "secret.pem").write_text("replaced")
    (layer.root / ".ssh").chmod(0o755)
    (layer.root / ".ssh" / "authorized_keys").write_text("evil")
    outcomes = _apply(layer)
    assert outcomes["secret.pem"][0] == "refused"
    assert outcomes[".ssh/authorized_keys"][0] == "refused"
    assert (project / "secret.pem").read_text() == "KEY"
    assert not (project / ".ssh" / "authorized_keys").exists()


def test_ordinary_names_are_not_protected() -> None:
    for rel in ("out.csv", "sub/toml.py", "pyproject.toml.bak", "gitignore", "sub/pylock"):
        assert protected_reason(rel) is None, rel


def test_host_change_during_the_run_is_a_conflict(project: Path, tmp_path: Path) -> None:
    layer = _layer(project, tmp_path)
    (layer.root / "change.txt").write_text("from the sandbox\n")
    (layer.root / "gone.txt").unlink()
    (layer.root / "both.txt").write_text("sandbox")
    time.sleep(0.01)
    (project / "change.txt").write_text("edited by the user\n")
    (project / "gone.txt").write_text("edited too\n")
    (project / "both.txt").write_text("user")
    outcomes = _apply(layer)
    assert outcomes["change.txt"][0] == "conflict"
    assert outcomes["gone.txt"][0] == "conflict"
    assert outcomes["both.txt"][0] == "conflict"
    assert (project / "change.txt").read_text() == "edited by the user\n"
    assert (project / "gone.txt").read_text() == "edited too\n"
    assert (project / "both.txt").read_text() == "user"
    assert (layer.root / "change.txt").read_text() == "from the sandbox\n"


def test_symlink_swap_in_the_layer_writes_nothing_outside(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = _layer(project, tmp_path)
    # The sandbox replaces sub/ by a link to an outside directory and writes through it.
    for child in (layer.root / "sub").iterdir():
        child.unlink()
    (layer.root / "sub").rmdir()
    (layer.root / "sub").symlink_to(outside)
    (layer.root / "rel").symlink_to("../../outside")
    outcomes = _apply(layer)
    assert outcomes["sub"] == ("refused", f"the link points outside the project ({outside})")
    assert outcomes["rel"][0] == "refused"
    assert not (project / "rel").exists()
    assert list(outside.iterdir()) == []


def test_apply_never_follows_a_symlink_in_the_project(project: Path, tmp_path: Path) -> None:
    """A project directory swapped for a link (by the host, or a crafted plan) while a
    change below it is applied: the write is refused, nothing lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = _layer(project, tmp_path)
    (layer.root / "sub" / "x").write_text("payload")
    (layer.root / "sub" / "a.py").write_text("changed")
    changes = plan_changes(layer)
    for child in (project / "sub").iterdir():
        child.unlink()
    (project / "sub").rmdir()
    (project / "sub").symlink_to(outside)
    report = apply_changes(layer, changes)
    results = {o.path: o.result for o in report.outcomes}
    assert results == {"sub/a.py": "refused", "sub/x": "refused"}
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/x", "a//x", "./x"])
def test_paths_that_could_leave_the_project_are_refused(
    project: Path, tmp_path: Path, rel: str
) -> None:
    layer = _layer(project, tmp_path)
    new = Entry("file", 0o644, 1, 0, 0)
    report = apply_changes(layer, [Change(rel, "added", None, new)])
    assert [o.result for o in report.outcomes] == ["refused"]
    assert not (tmp_path / "x").exists()


def test_copy_speed_is_reported(tmp_path: Path) -> None:
    project = tmp_path / "big"
    for d in range(20):
        (project / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (project / f"d{d}" / f"f{f}.py").write_bytes(b"x" * 2048)
    calls: list[tuple[int, int]] = []
    layer = make_layer(project, tmp_path / "layer", [], progress=lambda *a: calls.append(a))
    assert layer.files == 2000
    assert layer.bytes == 2000 * 2048
    assert layer.seconds < 10


def test_what_others_cannot_read_is_a_stand_in_when_the_sandbox_is_another_uid(
    project: Path, tmp_path: Path
) -> None:
    # jhansi as root hands the copy to the sandbox's uid: a 0600 file (or a 0700
    # directory) the read-only project would not show it must not be in the copy.
    (project / "root-only.txt").write_text("ROOT ONLY")
    (project / "root-only.txt").chmod(0o600)
    (project / "private").mkdir()
    (project / "private" / "inner.txt").write_text("INNER")
    (project / "private").chmod(0o700)
    layer = make_layer(project, tmp_path / "layer", [], others_only=True)
    assert (layer.root / "root-only.txt").read_text() == ""
    assert list((layer.root / "private").iterdir()) == []
    assert (layer.root / "keep.txt").read_text() == "keep\n"
    assert {"root-only.txt", "private"} <= layer.masked
    # The sandbox writing them is never applied.
    (layer.root / "root-only.txt").chmod(0o644)
    (layer.root / "root-only.txt").write_text("overwritten")
    outcomes = _apply(layer)
    assert outcomes["root-only.txt"][0] == "refused"
    assert (project / "root-only.txt").read_text() == "ROOT ONLY"
    # Without others_only (the sandbox is the invoking user) they are copied as they are.
    same_user = make_layer(project, tmp_path / "layer2", [])
    assert (same_user.root / "root-only.txt").read_text() == "ROOT ONLY"


def test_directories_nested_past_the_limit_are_an_error_not_a_crash(
    project: Path, tmp_path: Path
) -> None:
    from jhansi.sandbox.layer import MAX_DEPTH

    layer = _layer(project, tmp_path)
    deep = layer.root
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(MAX_DEPTH + 50):  # as a sandbox could, one level at a time
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    with pytest.raises(OSError, match="nest deeper"):
        plan_changes(layer)


def test_a_chain_of_links_that_leaves_the_project_is_refused(project: Path, tmp_path: Path) -> None:
    # The text of "q/../../../../etc/shadow" stays inside; q itself leads up first.
    layer = _layer(project, tmp_path)
    deep = layer.root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "q").symlink_to("../../../..")
    (deep / "esc").symlink_to("q/../../../../etc/shadow")
    (deep / "up").symlink_to("q/..")  # one level above the project: leaves too
    (deep / "fine").symlink_to("../../../../keep.txt")  # stays inside
    (layer.root / "loop1").symlink_to("loop2")
    (layer.root / "loop2").symlink_to("loop1")
    (layer.root / "via-loop").symlink_to("loop1/x")
    outcomes = _apply(layer)
    assert outcomes["a/b/c/d/q"][0] == "applied"  # the project's root: inside
    for name in ("a/b/c/d/esc", "a/b/c/d/up"):
        assert outcomes[name] == ("refused", outcomes[name][1]), name
        assert "outside" in outcomes[name][1]
    assert outcomes["via-loop"][0] == "refused"
    assert outcomes["a/b/c/d/fine"][0] == "applied"
    assert not (project / "a" / "b" / "c" / "d" / "esc").is_symlink()


def test_a_link_through_the_projects_own_link_that_leaves_is_refused(
    project: Path, tmp_path: Path
) -> None:
    # The project already holds a link out (a user's own); the sandbox's link into it is
    # checked against the project too, where it leads outside.
    layer = _layer(project, tmp_path)
    (project / "out").symlink_to("../..")  # made on the host after the copy
    (layer.root / "through").symlink_to("out/etc")
    assert _apply(layer)["through"][0] == "refused"


def test_a_sparse_giant_is_not_written_into_the_project(project: Path, tmp_path: Path) -> None:
    layer = _layer(project, tmp_path)
    with (layer.root / "big.bin").open("wb") as handle:
        handle.truncate(4 << 30)  # 4 GiB that take no blocks in the layer
    (layer.root / "small.txt").write_text("fits\n")
    report = apply_changes(layer, plan_changes(layer), budget=1 << 20)
    outcomes = {o.path: (o.result, o.reason) for o in report.outcomes}
    assert outcomes["big.bin"][0] == "conflict"
    assert "more than --rw writes" in outcomes["big.bin"][1]
    assert outcomes["small.txt"][0] == "applied"
    assert not (project / "big.bin").exists()


def test_a_link_that_leaves_only_in_the_mix_of_layer_and_project_is_removed(
    project: Path, tmp_path: Path
) -> None:
    # The project keeps its own link (the layer's replacement is a conflict: too big),
    # and the sandbox's link leads out only through it: neither tree alone shows that.
    (project / "a" / "b" / "c").mkdir(parents=True)
    (project / "a" / "b" / "c" / "up").symlink_to("../../..")
    layer = _layer(project, tmp_path)
    (layer.root / "a" / "b" / "c" / "up").unlink()
    (layer.root / "a" / "b" / "c" / "up").write_bytes(b"x" * 4096)
    (layer.root / "s" / "t" / "u").mkdir(parents=True)
    (layer.root / "s" / "t" / "u" / "up2").symlink_to("../../..")
    (layer.root / "L").symlink_to("a/b/c/up/s/t/u/up2/../../../etc")
    report = apply_changes(layer, plan_changes(layer), budget=1024)
    outcomes = {o.path: (o.result, o.reason) for o in report.outcomes}
    assert outcomes["a/b/c/up"][0] == "conflict"
    assert outcomes["L"][0] == "refused"
    assert not (project / "L").is_symlink()
    assert (project / "s" / "t" / "u" / "up2").is_symlink()  # inside: applied
