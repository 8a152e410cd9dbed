"""``sandbox diff``, ``apply`` and ``cp`` against a layer a hostile sandbox wrote.

The layer's upper directory is built here with real files, links, FIFOs, sockets and
overlay whiteouts, as a script could leave it through /work (nothing is mocked: the
kernel's overlay is what tests/security/test_cow_layer.py drives end to end; here the
upper directory is shaped directly, including after a plan was made, which no run can
time). The host-side tools must follow no link the sandbox made, read and write
nothing outside the project and the destination, and never show a masked file.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from jhansi.config import load_settings
from jhansi.errors import UsageError
from jhansi.layers import apply, copy_out, diff, parse_source, select
from jhansi.ledger.store import Ledger
from jhansi.paths import Paths
from jhansi.sandbox import overlay, overlay_plan
from jhansi.sandbox.overlay import LayerDirs, layer_dirs, save_state

CANARY = "host-canary-7f2c"
NAME = "project-demo"


class Setup:
    """A project, a directory outside it, and sandbox ``demo``'s layer over the project."""

    def __init__(self, tmp_path: Path) -> None:
        self.project = tmp_path / "project"
        (self.project / "analysis").mkdir(parents=True)
        (self.project / "data").mkdir()
        (self.project / "analysis" / "report.py").write_text("print(1)\n")
        (self.project / "data" / "file.txt").write_text("data\n")
        (self.project / "notes.txt").write_text("notes\n")
        (self.project / ".env").write_text(f"API_KEY={CANARY}\n")
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        (self.outside / "secret.txt").write_text(CANARY)
        self.paths = Paths.from_environment()
        sandbox_dir = self.paths.data / "sandboxes" / NAME
        (sandbox_dir / "home").mkdir(parents=True)
        self.dirs: LayerDirs = layer_dirs(sandbox_dir, self.project)
        self.dirs.root.mkdir(parents=True)
        self.dirs.upper.mkdir()
        save_state(self.dirs, {"version": 1, "project": str(self.project), "baselines": {}})
        self.settings = load_settings(start=self.project, strict=False)

    @property
    def upper(self) -> Path:
        """What the sandbox wrote to /work."""
        return self.dirs.upper

    def tree(self, root: Path) -> dict[str, tuple[int, bytes]]:
        """Every entry below ``root``, links not followed: mode and content or target."""
        found: dict[str, tuple[int, bytes]] = {}
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(directory) / name
                st = path.lstat()
                data = b""
                if stat.S_ISLNK(st.st_mode):
                    data = os.fsencode(str(path.readlink()))
                elif stat.S_ISREG(st.st_mode):
                    data = path.read_bytes()
                found[str(path.relative_to(root))] = (st.st_mode, data)
        return found

    def apply(self, *wanted: str) -> dict[str, tuple[str, str]]:
        """``jhansi sandbox apply demo WANTED...``: each path's result and reason."""
        ledger = Ledger.from_settings(self.settings, paths=self.paths)
        done = apply(self.settings, self.paths, NAME, wanted, ledger=ledger)
        assert not done.report.error
        return {o.path: (o.result, o.reason) for o in done.report.outcomes}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    made = Setup(tmp_path)
    monkeypatch.chdir(made.project)
    return made


def test_links_the_sandbox_made_are_never_followed(setup: Setup, tmp_path: Path) -> None:
    upper, outside = setup.upper, setup.outside
    (upper / "summary.csv").write_text("total,3\n")
    (upper / "abs-link").symlink_to(outside / "secret.txt")
    depth = len(upper.relative_to(tmp_path).parts)
    (upper / "rel-link").symlink_to("../" * depth + "outside/secret.txt")
    (upper / "data").symlink_to(outside)  # a directory swapped for a link to a host one
    (upper / "notes.txt").symlink_to(outside / "secret.txt")  # a file swapped for one
    (upper / "inner").mkdir()
    (upper / "inner" / "ok-link").symlink_to("../summary.csv")  # stays inside: fine
    (upper / "inner" / "real.txt").write_text("real\n")
    project_before, outside_before = setup.tree(setup.project), setup.tree(outside)

    found = diff(setup.settings, setup.paths, NAME)
    for rel in ("abs-link", "rel-link", "data", "notes.txt"):
        assert "outside the project" in found.refused[rel], found.refused
    assert "inner/ok-link" not in found.refused
    assert setup.tree(setup.project) == project_before  # diff writes nothing

    # cp refuses a link at PATH or on the way, and skips links below a directory.
    dest = tmp_path / "dest"
    dest.mkdir()
    for source in (f"{NAME}:abs-link", f"{NAME}:/work/data/secret.txt", f"{NAME}:/work/rel-link"):
        with pytest.raises(UsageError, match="symbolic link"):
            copy_out(setup.paths, source, dest / "x")
    assert not os.path.lexists(dest / "x")
    copied = copy_out(setup.paths, f"{NAME}:/work/inner", dest)
    assert (copied.files, copied.skipped) == (1, ("ok-link",))
    assert sorted(p.name for p in (dest / "inner").iterdir()) == ["real.txt"]

    outcomes = setup.apply()
    for rel in ("abs-link", "rel-link", "data", "notes.txt"):
        assert outcomes[rel][0] == "refused", outcomes
    assert outcomes["summary.csv"] == ("applied", "")
    assert outcomes["inner/ok-link"] == ("applied", "")
    assert (setup.project / "inner" / "ok-link").readlink() == Path("../summary.csv")
    assert (setup.project / "notes.txt").read_text() == "notes\n"
    assert (setup.project / "data").is_dir()
    assert not (setup.project / "data").is_symlink()
    for rel in ("abs-link", "rel-link"):
        assert not os.path.lexists(setup.project / rel)
    assert setup.tree(outside) == outside_before  # nothing written through data/
    _no_secret_in(setup.project)


def _no_secret_in(project: Path) -> None:
    """No file of the project but its own .env holds the host's secret."""
    for path in project.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != ".env":
            assert CANARY not in path.read_text(errors="replace"), path


def test_nothing_is_written_through_a_link_in_the_project(setup: Setup) -> None:
    # The user's own link out of the project; the sandbox made a directory there.
    (setup.project / "out").symlink_to(setup.outside)
    (setup.upper / "out").mkdir()
    (setup.upper / "out" / "planted.txt").write_text("planted")
    outside_before = setup.tree(setup.outside)
    outcomes = setup.apply("out/planted.txt")  # without the directory change above it
    assert outcomes == {
        "out/planted.txt": (
            "refused",
            "a directory on its path is a symlink (or not a directory) in the project; "
            "not followed",
        )
    }
    assert setup.tree(setup.outside) == outside_before
    assert (setup.project / "out").is_symlink()


def test_the_layer_swapped_after_the_plan_is_not_followed(setup: Setup) -> None:
    (setup.upper / "summary.csv").write_text("total,3\n")
    (setup.upper / "out").mkdir()
    (setup.upper / "out" / "model.bin").write_bytes(b"model")
    found = overlay_plan.plan(setup.dirs)
    assert [i.change.path for i in found.items] == ["out", "out/model.bin", "summary.csv"]
    # Between the plan and the copy (a run cannot, `apply` holds the sandbox; a stale
    # plan must still be safe): the file and the directory become links to the host.
    (setup.upper / "summary.csv").unlink()
    (setup.upper / "summary.csv").symlink_to(setup.outside / "secret.txt")
    (setup.upper / "out" / "model.bin").unlink()
    (setup.upper / "out").rmdir()
    (setup.upper / "out").symlink_to(setup.outside)
    (setup.outside / "model.bin").write_bytes(b"host's")
    report = overlay_plan.apply(setup.dirs, found, found.changes, ())
    results = {o.path: o.result for o in report.outcomes}
    assert results["summary.csv"] != "applied"
    assert results["out/model.bin"] != "applied"
    assert not os.path.lexists(setup.project / "summary.csv")
    assert not os.path.lexists(setup.project / "out" / "model.bin")
    _no_secret_in(setup.project)


def test_a_file_replaced_by_a_directory_and_a_directory_by_a_file(setup: Setup) -> None:
    (setup.project / "table.csv").write_text("a,b\n")
    (setup.upper / "table.csv").mkdir()  # the sandbox removed the file, made a directory
    (setup.upper / "table.csv" / "part-0.csv").write_text("a,b\n1,2\n")
    (setup.upper / "data").write_text("now a file\n")  # and a directory became a file
    overlay.note_baselines(setup.dirs, ["table.csv", "table.csv/part-0.csv", "data"])  # run's end
    found = diff(setup.settings, setup.paths, NAME)
    assert [(i.change.path, i.change.action) for i in found.items] == [
        ("data/file.txt", "deleted"),
        ("data", "modified"),
        ("table.csv", "modified"),
        ("table.csv/part-0.csv", "added"),
    ]
    outcomes = setup.apply()
    assert {r for r, _ in outcomes.values()} == {"applied"}, outcomes
    assert (setup.project / "table.csv" / "part-0.csv").read_text() == "a,b\n1,2\n"
    assert (setup.project / "data").read_text() == "now a file\n"
    assert overlay_plan.plan(setup.dirs).items == []  # the project now holds what the layer did


def test_special_files_are_never_opened_applied_or_copied(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upper = setup.upper
    (upper / "out").mkdir()
    (upper / "out" / "result.txt").write_text("ok\n")
    os.mkfifo(upper / "fifo")
    os.mkfifo(upper / "out" / "fifo")
    monkeypatch.chdir(upper / "out")  # a socket's path must be short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
    monkeypatch.chdir(setup.project)
    os.mknod(upper / "notes.txt", stat.S_IFCHR, 0)  # a whiteout: the sandbox deleted it
    os.mknod(upper / "never.txt", stat.S_IFCHR, 0)  # a whiteout over nothing: no change
    if os.geteuid() == 0:  # only root makes a real device (a sandbox never can)
        os.mknod(upper / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))

    found = diff(setup.settings, setup.paths, NAME)
    assert [(i.change.path, i.change.action) for i in found.items] == [
        ("notes.txt", "deleted"),
        ("out", "added"),
        ("out/result.txt", "added"),
    ]
    assert found.plan.skipped == (4 if os.geteuid() == 0 else 3)
    dest = tmp_path / "dest"
    dest.mkdir()
    for source in (f"{NAME}:fifo", f"{NAME}:/work/out/sock", f"{NAME}:null"):
        if source.endswith(":null") and os.geteuid() != 0:
            continue
        with pytest.raises(UsageError, match="not a regular file or directory"):
            copy_out(setup.paths, source, dest / "x")  # never opened: no FIFO blocks it
    with pytest.raises(UsageError, match=r"the sandbox deleted notes\.txt"):
        copy_out(setup.paths, f"{NAME}:notes.txt", dest / "x")
    copied = copy_out(setup.paths, f"{NAME}:/work/out", dest)
    assert sorted(copied.skipped) == ["fifo", "sock"]
    assert sorted(p.name for p in (dest / "out").iterdir()) == ["result.txt"]
    outcomes = setup.apply()
    assert set(outcomes) == {"notes.txt", "out", "out/result.txt"}
    assert sorted(p.name for p in setup.project.iterdir()) == [".env", "analysis", "data", "out"]
    assert [p.name for p in (setup.project / "out").iterdir()] == ["result.txt"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/etc/passwd", "not below /work"),
        ("/", "not below /work"),
        ("../outside/secret.txt", "'..' is not allowed"),
        ("/work/../outside", "'..' is not allowed"),
        ("analysis/../../outside", "'..' is not allowed"),
    ],
)
def test_apply_takes_only_paths_below_work(setup: Setup, text: str, why: str) -> None:
    (setup.upper / "summary.csv").write_text("total,3\n")
    found = overlay_plan.plan(setup.dirs)
    with pytest.raises(UsageError, match=why):
        select(found, (text,))


def test_apply_paths_name_the_layer_as_the_sandbox_saw_it(setup: Setup) -> None:
    (setup.upper / "summary.csv").write_text("total,3\n")
    (setup.upper / "out").mkdir()
    (setup.upper / "out" / "a.txt").write_text("a")
    found = overlay_plan.plan(setup.dirs)
    everything = [i.change.path for i in found.items]
    for text in ("/work", "/work/", ".", "./"):
        assert [i.change.path for i in select(found, (text,))] == everything
    assert [i.change.path for i in select(found, ("/work/out",))] == ["out", "out/a.txt"]
    assert [i.change.path for i in select(found, ("./summary.csv",))] == ["summary.csv"]
    with pytest.raises(UsageError, match="not changed in the sandbox's layer"):
        select(found, ("analysis",))


@pytest.mark.parametrize(
    "source",
    [":/etc/passwd", ":../outside", ":/work/../../etc/passwd", ":~/../layers", "demo:/proc/1"],
)
def test_cp_takes_only_paths_below_work_and_home(source: str) -> None:
    with pytest.raises(UsageError):
        parse_source(source)


def test_cp_never_writes_through_dest_links(setup: Setup, tmp_path: Path) -> None:
    (setup.upper / "summary.csv").write_text("total,3\n")
    (setup.upper / "summary.csv").chmod(0o4755)  # setuid from the sandbox: dropped
    dest = tmp_path / "dest.csv"
    dest.symlink_to(setup.outside / "secret.txt")
    with pytest.raises(UsageError, match="exists"):
        copy_out(setup.paths, f"{NAME}:summary.csv", dest)
    copy_out(setup.paths, f"{NAME}:summary.csv", dest, force=True)
    assert not dest.is_symlink()  # the link is replaced, never written through
    assert dest.read_text() == "total,3\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert (setup.outside / "secret.txt").read_text() == CANARY


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``jhansi ARGS`` in-process, as the console script runs it."""
    from jhansi.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_diff_never_shows_a_masked_file(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    (setup.upper / ".env").write_text("API_KEY=mine\n")
    (setup.upper / "notes.txt").write_text("notes\nmore\n")
    for args in (("sandbox", "diff", NAME), ("sandbox", "diff", NAME, "--json")):
        code, out, err = _cli(capsys, *args)
        assert code == 0, err
        assert CANARY not in out + err
        assert "+more" in out  # an ordinary file still gets its line diff
    document = json.loads(_cli(capsys, "sandbox", "diff", NAME, "--json")[1])
    env = next(c for c in document["changes"] if c["path"] == ".env")
    assert "masked" in env["refused"]
    assert "diff" not in env


def test_cp_of_a_tree_nested_too_deep_stops_with_a_message(setup: Setup, tmp_path: Path) -> None:
    deep = setup.upper / "deep"
    (deep / "/".join(["d"] * 300)).mkdir(parents=True)
    with pytest.raises(UsageError, match=r"copying stopped after 0 files: .*deeper than"):
        copy_out(setup.paths, f"{NAME}:/work/deep", tmp_path / "dest")
