"""``sandbox diff``, ``apply`` and ``cp`` end to end, on bubblewrap and rootful Docker.

A script writes where it stands (a CSV beside itself, a chart in a subdirectory, a
model in its home); the project is untouched until ``apply`` copies chosen changes in;
``cp`` gets a file out of the layer or the home; a file made on the host since the
sandbox wrote its own is a conflict.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from jhansi.errors import ExitCode
from tests.conftest import backend_env, prepare_jhansi_home, require_backend, run_jhansi

WRITER = """\
import os
from pathlib import Path

print(sorted(os.listdir("analysis")))
open("summary.csv", "w").write("total,3\\n")
Path(__file__).parent.joinpath("chart.png").write_bytes(b"\\x89PNG fake")
open(os.path.expanduser("~/model.joblib"), "wb").write(b"model")
"""


class Project:
    """A project and a JHANSI_HOME for one backend."""

    def __init__(self, base: Path, backend: str) -> None:
        self.root = base / "project"
        (self.root / "analysis").mkdir(parents=True)
        (self.root / "pyproject.toml").write_text('[project]\nname = "demo"\n')
        (self.root / "analysis" / "report.py").write_text(WRITER)
        for path in (self.root, *self.root.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        home = base / "jhansi-home"
        prepare_jhansi_home(backend, home)
        self.env = {**backend_env(backend), "JHANSI_HOME": str(home)}

    def jhansi(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_jhansi(*args, env=self.env, cwd=self.root, timeout=300)


@pytest.fixture(params=["bwrap", "docker"])
def project(request: pytest.FixtureRequest, shared_dir: Path) -> Project:
    require_backend(request, request.param)
    return Project(shared_dir, request.param)


def test_diff_apply_and_cp(project: Project, shared_dir: Path) -> None:
    root = project.root
    run = project.jhansi("run", "analysis/report.py")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['report.py']"
    summary = next(line for line in run.stderr.splitlines() if "files changed" in line)
    assert "3 files changed: ~/model.joblib, /work/analysis/chart.png, /work/summary.csv" in (
        summary
    )
    assert "jhansi sandbox apply" in run.stderr.splitlines()[-1]
    assert sorted(p.name for p in root.iterdir()) == ["analysis", "pyproject.toml"]

    # A second run reads its own writes on top of the project as it is now.
    (root / "analysis" / "notes.txt").write_text("from the host")
    again = project.jhansi("run", "-q", "analysis/report.py")
    assert again.stdout.strip() == "['chart.png', 'notes.txt', 'report.py']", again.stderr

    diff = project.jhansi("sandbox", "diff")
    assert diff.returncode == 0, diff.stderr
    lines = diff.stdout.splitlines()
    assert "A analysis/chart.png" in lines
    assert "A summary.csv" in lines
    assert "+total,3" in lines  # a small text file gets its line diff
    document = json.loads(project.jhansi("sandbox", "diff", "--json").stdout)
    assert {c["path"] for c in document["changes"]} == {"analysis/chart.png", "summary.csv"}

    # Only what is named is applied, and recorded.
    applied = project.jhansi("sandbox", "apply", "summary.csv")
    assert applied.returncode == 0, applied.stderr
    assert (root / "summary.csv").read_text() == "total,3\n"
    assert not (root / "analysis" / "chart.png").exists()
    unknown = project.jhansi("sandbox", "apply", "nothing.txt")
    assert unknown.returncode == ExitCode.USAGE
    assert "not changed in the sandbox's layer" in unknown.stderr

    # Made on the host since the sandbox made its own: a conflict, the layer keeps it.
    (root / "analysis" / "chart.png").write_bytes(b"host's chart")
    conflict = project.jhansi("sandbox", "apply", "--json")
    assert conflict.returncode == 1, conflict.stderr
    doc = json.loads(conflict.stdout)
    assert doc["status"] == "partial"
    assert [c["path"] for c in doc["conflicts"]] == ["analysis/chart.png"]
    assert (root / "analysis" / "chart.png").read_bytes() == b"host's chart"

    # cp gets it anyway (and the model from the home); never over a file without --force.
    out = shared_dir / "out"
    out.mkdir()
    got = project.jhansi("sandbox", "cp", ":/work/analysis/chart.png", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "chart.png").read_bytes() == b"\x89PNG fake"
    twice = project.jhansi("sandbox", "cp", ":/work/analysis/chart.png", str(out))
    assert twice.returncode == ExitCode.USAGE
    assert "--force" in twice.stderr
    forced = project.jhansi("sandbox", "cp", "--force", ":analysis/chart.png", str(out))
    assert forced.returncode == 0, forced.stderr
    model = project.jhansi("sandbox", "cp", ":~/model.joblib", str(out / "m.joblib"))
    assert model.returncode == 0, model.stderr
    assert (out / "m.joblib").read_bytes() == b"model"
    assert oct((out / "m.joblib").stat().st_mode & 0o7777) in ("0o644", "0o600")
    missing = project.jhansi("sandbox", "cp", ":/work/pyproject.toml", str(out))
    assert missing.returncode == ExitCode.USAGE
    assert "the project's own file" in missing.stderr


@pytest.mark.bwrap
def test_a_project_that_is_a_link(bwrap_path: Path, shared_dir: Path) -> None:
    del bwrap_path
    project = Project(shared_dir, "bwrap")
    link = shared_dir / "link-to-project"
    link.symlink_to(project.root)
    proc = run_jhansi(
        "run",
        "-q",
        "--project",
        str(link),
        str(link / "analysis" / "report.py"),
        env=project.env,
        cwd=shared_dir,
    )
    assert proc.returncode == 0, proc.stderr
    applied = run_jhansi(
        "sandbox", "apply", "--project", str(link), env=project.env, cwd=shared_dir
    )
    assert applied.returncode == 0, applied.stderr
    # Applied into the directory the link led to; the link itself is left alone.
    assert (project.root / "summary.csv").read_text() == "total,3\n"
    assert link.is_symlink()


@pytest.mark.bwrap
def test_data_inside_the_project_means_a_read_only_work(bwrap_path: Path, shared_dir: Path) -> None:
    del bwrap_path
    project = Project(shared_dir, "bwrap")
    env = {**project.env, "JHANSI_HOME": str(project.root / ".jhansi-home")}
    proc = run_jhansi("run", "analysis/report.py", env=env, cwd=project.root)
    assert proc.returncode == 1
    assert "read-only here (no copy-on-write layer: jhansi's data directory" in proc.stderr
    assert "inside the project" in proc.stderr
    assert not (project.root / "summary.csv").exists()
    assert not os.path.lexists(project.root / "analysis" / "chart.png")


RESHAPER = """\
import os, shutil

os.remove("table.csv")
os.mkdir("table.csv")  # a file made a directory
open("table.csv/part-0.csv", "w").write("a,b\\n1,2\\n")
shutil.rmtree("out")  # a directory emptied and made again (opaque in the layer)
os.makedirs("out")
open("out/new.txt", "w").write("new")
shutil.rmtree("old")  # a directory made a file
open("old", "w").write("now a file")
"""


def test_reshaped_paths_are_applied_as_the_sandbox_saw_them(project: Project) -> None:
    root = project.root
    (root / "table.csv").write_text("a,b\n")
    for rel in ("out/kept.txt", "out/stale.txt", "old/a.txt"):
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_text(rel)
    (root / "reshape.py").write_text(RESHAPER)
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    run = project.jhansi("run", "-q", "reshape.py")
    assert run.returncode == 0, run.stderr
    assert (root / "table.csv").read_text() == "a,b\n"  # untouched until applied

    document = json.loads(project.jhansi("sandbox", "diff", "--json").stdout)
    changes = {(c["path"], c["change"]) for c in document["changes"]}
    assert changes == {
        ("table.csv", "modified"),
        ("table.csv/part-0.csv", "added"),
        ("out/kept.txt", "deleted"),
        ("out/stale.txt", "deleted"),
        ("out/new.txt", "added"),
        ("old/a.txt", "deleted"),
        ("old", "modified"),
    }, document

    applied = project.jhansi("sandbox", "apply")
    assert applied.returncode == 0, applied.stderr
    assert (root / "table.csv" / "part-0.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in (root / "out").iterdir()) == ["new.txt"]
    assert (root / "old").read_text() == "now a file"
    after = json.loads(project.jhansi("sandbox", "diff", "--json").stdout)
    assert after["changes"] == []  # the project holds what the layer did

    # The next run sees the project as it now is, through what is left of the layer.
    (root / "look.py").write_text(
        "import os\nprint(sorted(os.listdir('out')), os.listdir('table.csv'))\n"
    )
    (root / "look.py").chmod(0o644)
    look = project.jhansi("run", "-q", "look.py")
    assert look.stdout.strip() == "['new.txt'] ['part-0.csv']", look.stderr
