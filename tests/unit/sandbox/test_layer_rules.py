"""What ``sandbox diff/apply`` (and ``--rw``) let a hostile layer do to the project, by class.

Each class of attack on bringing a layer out, with variants, on a layer's upper
directory shaped here directly (real files, whiteouts, overlay attributes; nothing
mocked: tests/security/test_layer_apply_attacks.py drives the same through real runs):

* masks come from the layer's own project and from the run, wherever the command starts;
* deleting a tree deletes only what the sandbox saw there;
* an overlay attribute the kernel did not honour is no marker;
* no link applied leads outside the project, whatever is applied later;
* a name or link target reaches the terminal as one inert line;
* nothing is applied that the host runs by itself (``python -m jhansi``'s imports ...);
* a project file the sandbox could not read is never replaced, nor shown.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from jhansi.layers import diff
from jhansi.ledger.read import one_line
from jhansi.sandbox import overlay, overlay_plan
from jhansi.sandbox.layer import (
    Layer,
    apply_changes,
    link_refusal,
    make_layer,
    plan_changes,
    protected_reason,
)
from jhansi.sandbox.overlay import load_state, save_state
from tests.unit.sandbox.test_overlay_out import CANARY, NAME, Setup, _cli

ESC_TARGET = "/etc/\x1b]0;owned\x07\x1b[2J\njhansi: all clear\n"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    made = Setup(tmp_path)
    monkeypatch.chdir(made.project)
    return made


def _state(setup: Setup, **fields: object) -> None:
    state = load_state(setup.dirs.state)
    state.update(fields)
    save_state(setup.dirs, state)


# -- 1. masks: the layer's project's, and the run's ------------------------------------------


def test_the_layers_own_project_masks_hold_from_anywhere(
    setup: Setup,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (setup.project / "jhansi.toml").write_text('[sandbox]\nmask = ["private/*"]\n')
    (setup.project / "private").mkdir()
    (setup.project / "private" / "token.txt").write_text(CANARY + "\n")
    (setup.upper / "private").mkdir()
    (setup.upper / "private" / "token.txt").write_text("TOKEN=attacker\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no project here: the caller's settings have no such mask
    for args in (("sandbox", "diff", NAME), ("sandbox", "diff", NAME, "--json")):
        code, out, err = _cli(capsys, *args)
        assert code == 0, err
        assert CANARY not in out + err
    code, out, err = _cli(capsys, "sandbox", "apply", NAME, "--json")
    assert code == 1, err
    refused = {r["path"]: r["reason"] for r in json.loads(out)["refused"]}
    assert "masked" in refused["private/token.txt"]
    assert (setup.project / "private" / "token.txt").read_text() == CANARY + "\n"


def test_what_the_run_masked_stays_masked_after_the_configuration_changes(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    # The run masked notes.txt (recorded in the layer's state); the project's
    # configuration no longer says so (the script cannot write it, but the user may).
    _state(setup, masked=["notes.txt", "data"])
    (setup.project / "notes.txt").write_text(CANARY + "\n")
    (setup.upper / "notes.txt").write_text("replaced\n")
    (setup.upper / "data").mkdir()
    (setup.upper / "data" / "file.txt").write_text("replaced\n")
    found = diff(setup.settings, setup.paths, NAME)
    assert found.hides("notes.txt")
    assert found.hides("data/file.txt")
    code, out, _ = _cli(capsys, "sandbox", "diff", NAME)
    assert code == 0
    assert CANARY not in out
    outcomes = setup.apply()
    assert outcomes["notes.txt"][0] == outcomes["data/file.txt"][0] == "refused"
    assert (setup.project / "notes.txt").read_text() == CANARY + "\n"
    assert (setup.project / "data" / "file.txt").read_text() == "data\n"


# -- 2. a deleted tree deletes what the sandbox saw -------------------------------------------


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, 0)


@pytest.mark.parametrize("how", ["whiteout", "file", "opaque"])
def test_deleting_a_tree_keeps_what_the_user_made_or_changed_since(setup: Setup, how: str) -> None:
    project = setup.project
    (project / "src" / "pkg").mkdir(parents=True)
    (project / "src" / "main.py").write_text("v1\n")
    (project / "src" / "pkg" / "util.py").write_text("util\n")
    (project / "src" / "old.txt").write_text("old\n")
    _state(setup, xattr="user")
    if how == "whiteout":  # rm -r src
        _whiteout(setup.upper / "src")
    elif how == "file":  # rm -r src; a file in its place
        (setup.upper / "src").write_text("a file now\n")
    else:  # rm -r src; mkdir src (opaque: nothing of the project's shows below it)
        (setup.upper / "src").mkdir()
        os.setxattr(setup.upper / "src", "user.overlay.opaque", b"y")
        (setup.upper / "src" / "fresh.txt").write_text("fresh\n")
    overlay.note_baselines(setup.dirs, ["src"])  # the run's end
    # After the run, the user keeps working on the host.
    (project / "src" / "main.py").write_text("v1\nthe user's work\n")
    (project / "src" / "pkg" / "new.py").write_text("new\n")
    outcomes = setup.apply()
    assert outcomes["src/main.py"][0] == "conflict", outcomes
    assert outcomes["src/pkg/new.py"][0] == "conflict", outcomes
    assert outcomes["src/old.txt"][0] == "applied", outcomes  # what the sandbox saw, unchanged
    assert (project / "src" / "main.py").read_text() == "v1\nthe user's work\n"
    assert (project / "src" / "pkg" / "new.py").read_text() == "new\n"
    assert not (project / "src" / "old.txt").exists()
    assert not (project / "src" / "pkg" / "util.py").exists()
    assert (project / "src" / "pkg").is_dir()  # not empty: the user's new.py is in it


def test_without_notes_nothing_below_a_deleted_directory_is_deleted(setup: Setup) -> None:
    # A layer whose run could not note the tree (an older layer, a failed note): what
    # is below is not known to be what the sandbox deleted.
    _whiteout(setup.upper / "analysis")
    found = overlay_plan.plan(setup.dirs)
    conflicts = {i.change.path: i.conflict for i in found.items if i.conflict}
    assert "analysis/report.py" in conflicts
    outcomes = setup.apply()
    assert outcomes["analysis/report.py"][0] == "conflict"
    assert (setup.project / "analysis" / "report.py").read_text() == "print(1)\n"


# -- 3. only the namespace the mount used ----------------------------------------------------


def test_a_marker_in_the_other_namespace_deletes_nothing(setup: Setup) -> None:
    _state(setup, xattr="trusted")  # Docker's overlay: the kernel reads trusted.*
    (setup.upper / "analysis").mkdir()
    os.setxattr(setup.upper / "analysis", "user.overlay.opaque", b"y")  # a script's own
    (setup.upper / "analysis" / "extra.txt").write_text("x")
    found = overlay_plan.plan(setup.dirs)
    assert [(i.change.path, i.change.action) for i in found.items] == [
        ("analysis/extra.txt", "added")
    ]
    assert not overlay.shadows(setup.dirs, "analysis/report.py")
    setup.apply()
    assert (setup.project / "analysis" / "report.py").read_text() == "print(1)\n"


def test_an_unknown_namespace_marks_nothing_opaque(setup: Setup) -> None:
    (setup.upper / "analysis").mkdir()
    os.setxattr(setup.upper / "analysis", "user.overlay.opaque", b"y")
    assert overlay_plan.plan(setup.dirs).items == []  # the state records no namespace


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* attributes need root (CI runs as root)")
def test_converting_a_layer_makes_no_forged_marker_real(setup: Setup) -> None:
    upper = setup.upper
    (upper / "forged").mkdir()
    os.setxattr(upper / "forged", "user.overlay.opaque", b"y")  # set under Docker
    (upper / "real").mkdir()
    os.setxattr(upper / "real", "trusted.overlay.opaque", b"y")  # the kernel's
    overlay.convert_opaque(upper, "trusted", "user")  # next mounted by bwrap
    assert "user.overlay.opaque" not in os.listxattr(upper / "forged")
    assert os.getxattr(upper / "real", "user.overlay.opaque") == b"y"
    # And back: a trusted marker the user one does not confirm is dropped too.
    os.setxattr(upper / "forged", "trusted.overlay.opaque", b"y")
    overlay.convert_opaque(upper, "user", "trusted")
    assert "trusted.overlay.opaque" not in os.listxattr(upper / "forged")
    assert os.getxattr(upper / "real", "trusted.overlay.opaque") == b"y"


# -- 4. links ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "target", "ok"),
    [
        ("a", "b/c", True),
        ("sub/a", "../b", True),
        ("s/t/a", "../../b/./c/", True),
        ("sub/a", "..", True),  # the project's root
        ("a", "..", False),
        ("a", "/etc/passwd", False),
        ("sub/a", "../../etc", False),
        ("d", "s0/s1/../../..", False),  # '..' after a name: not lexical in the kernel
        ("x", "d/../../etc/passwd", False),
        ("x", "d/..", False),
        ("x", "loop/x", False),  # through a link
        ("x", "out/etc", False),  # through the project's own link
        ("x", "out", False),  # to a link: wherever it leads
    ],
)
def test_links_are_judged_by_their_text_and_pass_no_link(
    tmp_path: Path, link: str, target: str, ok: bool
) -> None:
    layer, project = tmp_path / "layer", tmp_path / "project"
    for tree in (layer, project):
        (tree / "sub").mkdir(parents=True)
    (layer / "loop").symlink_to("loop")
    (project / "out").symlink_to("/")
    why = link_refusal((layer, project), link, target)
    assert (why is None) == ok, why
    if why is not None:
        assert "outside the project" in why


def test_no_sequence_of_applies_builds_an_outward_link(setup: Setup) -> None:
    # Apply 1: d is a deep link, x goes up through it (inside while d is that link).
    deep = "/".join(f"s{i}" for i in range(6))
    (setup.upper / "d").symlink_to(deep)
    (setup.upper / "x").symlink_to("d/" + "../" * 6 + "etc/passwd")
    (setup.upper / "y").symlink_to("d")  # to a link that is applied in the same apply
    first = setup.apply()
    assert first["d"][0] == "applied"
    assert first["x"][0] == first["y"][0] == "refused", first
    # Apply 2 (applied links leave the layer): d becomes a directory, z a link into it.
    (setup.upper / "d").mkdir()
    (setup.upper / "d" / "f").write_text("f")
    (setup.upper / "z").symlink_to("d/f")
    second = setup.apply()
    assert second["d"][0] == second["z"][0] == "applied", second
    # Apply 3: d a link again, up and out: refused, so z still leads to d/f.
    (setup.upper / "d").symlink_to("../..")
    assert setup.apply()["d"][0] == "refused"
    for path in setup.project.rglob("*"):
        if path.is_symlink():
            resolved = Path(os.path.realpath(path))
            assert resolved.is_relative_to(setup.project.resolve()), (path, resolved)


def test_rw_judges_links_the_same(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "d").mkdir(parents=True)
    layer: Layer = make_layer(project, tmp_path / "layer", [])
    (layer.root / "d").rmdir()
    (layer.root / "d").symlink_to("a/b/c")
    (layer.root / "x").symlink_to("d/../../etc/passwd")
    (layer.root / "y").symlink_to("d/f")
    outcomes = {o.path: o.result for o in apply_changes(layer, plan_changes(layer)).outcomes}
    assert outcomes == {"d": "applied", "x": "refused", "y": "refused"}


# -- 5. one inert line ------------------------------------------------------------------------


def test_one_line_leaves_no_control_character() -> None:
    shown = one_line("a\nb\r\tc\x1b[2J\x07\x9b\u202e\u2028d")
    assert "\n" not in shown
    assert "\t" not in shown
    assert all(ch.isprintable() for ch in shown), shown


def test_names_and_targets_reach_the_terminal_inert(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = "jhansi: every change was checked"
    (setup.upper / "lnk").symlink_to(ESC_TARGET)
    (setup.upper / f"harmless.txt\n{forged}").write_text("x")
    (setup.upper / f"t\x1b[31m.txt\n{forged}").write_text("x")
    # --json keeps the exact names and target (JSON escapes them).
    code, out, _ = _cli(capsys, "sandbox", "diff", NAME, "--json")
    assert code == 0
    changes = {c["path"]: c for c in json.loads(out)["changes"]}
    assert f"harmless.txt\n{forged}" in changes
    assert ESC_TARGET in changes["lnk"]["refused"]
    outputs = [
        _cli(capsys, "sandbox", "diff", NAME),
        _cli(capsys, "sandbox", "apply", NAME),
    ]
    for _, out, err in outputs:
        for stream in (out, err):
            assert "\x1b" not in stream, stream
            assert "\x07" not in stream, stream
            assert not any(line.startswith(forged) for line in stream.splitlines()), stream


def test_console_warnings_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from jhansi.cli._reporter import ConsoleReporter

    ConsoleReporter().warning(f"--rw: not applied: lnk (points to {ESC_TARGET})")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "\x1b" not in err
    assert "\x07" not in err


# -- 6. nothing the host runs by itself --------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        "jhansi/__main__.py",
        "jhansi/ci/precommit.py",
        "jhansi/__init__.py",
        "jhansi.py",
        "JHANSI.PY",
        "json.py",  # the standard library: imported by python -m jhansi
        "typer/__init__.py",  # installed beside jhansi
        "rich.cpython-312-x86_64-linux-gnu.so",
        "pip/__main__.py",
        "__pycache__/analysis.cpython-312.pyc",
        "sub/__pycache__/x.pyc",
        "analysis.pyc",
        ".pre-commit-config.yaml",
        ".envrc",
        ".github/workflows/ci.yml",
        ".gitlab-ci.yml",
        ".vscode/tasks.json",
        ".devcontainer/devcontainer.json",
    ],
)
def test_what_the_host_runs_by_itself_is_never_applied(setup: Setup, rel: str) -> None:
    assert protected_reason(rel), rel
    target = setup.upper / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("open('/tmp/owned', 'w')\n")
    assert setup.apply()[rel][0] == "refused"
    assert not (setup.project / rel).exists()


def test_a_top_level_link_named_like_a_module_is_refused(setup: Setup) -> None:
    (setup.upper / "pkg").mkdir()
    (setup.upper / "pkg" / "__init__.py").write_text("")
    (setup.upper / "jhansi").symlink_to("pkg")
    outcomes = setup.apply()
    assert outcomes["jhansi"][0] == "refused"
    assert outcomes["pkg/__init__.py"][0] == "applied"


@pytest.mark.parametrize(
    ("rel", "kind"),
    [
        ("csv", "dir"),  # a directory named like a module imports nothing by itself
        ("csv/out.csv", "file"),  # nor does a data file in it
        ("json/result.json", "file"),
        ("src/json.py", "file"),  # not at the top: not on sys.path
        ("analysis.py", "file"),
        ("Makefile", "file"),  # run when you run make: review it (README)
        ("conftest.py", "file"),
    ],
)
def test_ordinary_project_files_are_not_protected(rel: str, kind: str) -> None:
    assert protected_reason(rel, kind) is None  # type: ignore[arg-type]


def test_rw_refuses_the_same(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    layer = make_layer(project, tmp_path / "layer", [])
    (layer.root / "jhansi").mkdir()
    (layer.root / "jhansi" / "__main__.py").write_text("evil\n")
    (layer.root / ".pre-commit-config.yaml").write_text("repos: []\n")
    outcomes = {o.path: o.result for o in apply_changes(layer, plan_changes(layer)).outcomes}
    assert outcomes["jhansi/__main__.py"] == outcomes[".pre-commit-config.yaml"] == "refused"
    assert not (project / "jhansi" / "__main__.py").exists()


# -- 7. what the sandbox could not read ---------------------------------------------------------


def _sandbox_is_another_user(setup: Setup) -> None:
    """The upper directory is handed to the sandbox's host uid (as a real run does)."""
    os.chown(setup.upper, 65534, 65534)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing the layer to another uid needs root")
@pytest.mark.parametrize("how", ["replaced", "deleted", "below a closed directory"])
def test_a_file_the_sandbox_could_not_read_is_never_written_nor_shown(
    setup: Setup, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    _sandbox_is_another_user(setup)
    rel = "root-only.txt"
    if how == "below a closed directory":
        (setup.project / "closed").mkdir(mode=0o700)
        (setup.project / "closed").chmod(0o700)
        rel = "closed/token.txt"
    secret = setup.project / rel
    secret.write_text(CANARY + "\n")
    secret.chmod(0o600 if how != "below a closed directory" else 0o644)
    parent = setup.upper / rel.rpartition("/")[0] if "/" in rel else setup.upper
    parent.mkdir(exist_ok=True)
    if how == "deleted":
        _whiteout(setup.upper / rel)
    else:
        (setup.upper / rel).write_text("attacker's\n")
    for args in (("sandbox", "diff", NAME), ("sandbox", "diff", NAME, "--json")):
        code, out, err = _cli(capsys, *args)
        assert code == 0, err
        assert CANARY not in out + err
    found = diff(setup.settings, setup.paths, NAME)
    assert "not readable by its user" in found.refused[rel]
    assert setup.apply()[rel][0] == "refused"
    assert secret.read_text() == CANARY + "\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="handing the layer to another uid needs root")
def test_a_file_the_sandbox_could_read_is_applied_as_before(setup: Setup) -> None:
    _sandbox_is_another_user(setup)
    (setup.project / "notes.txt").chmod(0o644)
    (setup.upper / "notes.txt").write_text("new notes\n")
    assert setup.apply()["notes.txt"][0] == "applied"
    assert (setup.project / "notes.txt").read_text() == "new notes\n"


def test_the_runs_summary_names_changed_files_on_one_line() -> None:
    from types import SimpleNamespace
    from typing import cast

    from jhansi.cli._execute import _changed_names
    from jhansi.runner import RunResult
    from jhansi.sandbox.changes import FileChange

    change = FileChange("/work", "a.txt\njhansi: all clear\x1b[2J", "added", 1, None)
    # Only files_changed is read: a stand-in for the rest of a run's result.
    shown = _changed_names(cast("RunResult", SimpleNamespace(files_changed=(change,))))
    assert shown == ": /work/a.txt\\njhansi: all clear\\x1b[2J"
