"""The pre-commit hooks through the real ``pre-commit`` tool, in a temporary git repository.

Faithful to how users get them: the hooks come from ``.pre-commit-hooks.yaml``
of a repository at a commit (``repo:`` + ``rev:``), and pre-commit builds their
environment itself (a virtualenv, ``pip install`` of that repository from the
package index: about a minute, once per module). The repository is a snapshot
of this working tree (tracked and untracked, not ignored files) committed in a
temporary directory, so that what is tested is what is checked out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADVISORIES = ROOT / "tests" / "fixtures" / "advisory-database"
PRE_COMMIT = Path(sys.executable).parent / "pre-commit"

pytestmark = pytest.mark.network

GIT_ENV = {
    "GIT_AUTHOR_NAME": "jhansi tests",
    "GIT_AUTHOR_EMAIL": "tests@jhansi.invalid",
    "GIT_COMMITTER_NAME": "jhansi tests",
    "GIT_COMMITTER_EMAIL": "tests@jhansi.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


@pytest.fixture(scope="module")
def hooks_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """This working tree, committed as it is, in a repository of its own."""
    snapshot = tmp_path_factory.mktemp("jhansi-snapshot")
    files = _git(ROOT, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, snapshot / name)
    _git(snapshot, "init", "-q")
    _git(snapshot, "add", "-A")
    _git(snapshot, "commit", "-q", "-m", "snapshot")
    return snapshot, _git(snapshot, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pre-commit's cache, shared by this module's tests (one hook environment)."""
    return tmp_path_factory.mktemp("pre-commit-home")


class Project:
    """A git repository using jhansi's hooks."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def git(self, *args: str) -> str:
        return _git(self.root, *args)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    def pre_commit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(PRE_COMMIT), *args)


@pytest.fixture
def project(
    tmp_path: Path, hooks_repo: tuple[Path, str], pre_commit_home: Path, bwrap_path: Path
) -> Project:
    repo, rev = hooks_repo
    root = tmp_path / "project"
    root.mkdir()
    _git(root, "init", "-q")
    (root / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {repo}\n    rev: {rev}\n    hooks:\n"
        "      - id: jhansi-lock\n      - id: jhansi-check\n"
    )
    (root / "jhansi.toml").write_text(
        f'[sandbox]\nbackend = "bwrap"\n[policy]\nadvisory_db = "{ADVISORIES}"\n'
    )
    # Hooks run on the developer's machine, with their trust store: the advisory data a
    # project file chooses needs `jhansi trust` once (same JHANSI_HOME as the hooks').
    from jhansi.trust import trust

    trust(root / "jhansi.toml")
    env = {
        **os.environ,
        **GIT_ENV,
        "PRE_COMMIT_HOME": str(pre_commit_home),
        "JHANSI_SANDBOX_BACKEND": "bwrap",
    }
    env.pop("VIRTUAL_ENV", None)
    # The hooks' own interpreter and jhansi, not the test venv's.
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent
    )
    project = Project(root, env)
    project.git("add", ".")
    project.git("commit", "-q", "-m", "config")
    install = project.pre_commit("install")
    assert install.returncode == 0, install.stdout + install.stderr
    return project


SIX = """\
# /// script
# dependencies = ["six==1.16.0"]
# ///
import six

print(six.__version__)
"""

STDLIB = """\
# /// script
# dependencies = []
# ///
import json

print(json.dumps({"ok": True}))
"""

NOT_A_SCRIPT = """\
import notarealpackage_jhansi_test  # would be refused as unresolved if it were checked
"""


def test_missing_lock_then_lock_hook_then_commit(project: Project) -> None:
    project.write("tool.py", SIX)
    project.git("add", "tool.py")
    checked = project.pre_commit("run", "jhansi-check", "--files", "tool.py")
    assert checked.returncode != 0, checked.stdout + checked.stderr
    output = checked.stdout + checked.stderr
    assert "jhansi lock tool.py" in output

    committed = project.run("git", "commit", "-m", "add tool")
    output = committed.stdout + committed.stderr
    assert committed.returncode != 0, output
    assert "created" in output
    assert "pylock.tool.toml" in output
    assert (project.root / "pylock.tool.toml").is_file()
    assert "six" in (project.root / "pylock.tool.toml").read_text()

    project.git("add", "pylock.tool.toml")
    committed = project.run("git", "commit", "-m", "add tool")
    assert committed.returncode == 0, committed.stdout + committed.stderr
    assert "pylock.tool.toml" in project.git("show", "--name-only", "HEAD")


def test_the_lock_hook_says_an_error_once(project: Project) -> None:
    project.write("broken.py", "# /// script\n# dependencies = []\n# ///\nx = (\n")
    project.git("add", "broken.py")
    ran = project.pre_commit("run", "jhansi-lock", "--files", "broken.py")
    output = ran.stdout + ran.stderr
    assert ran.returncode != 0, output
    assert output.count("syntax error") == 1, output
    assert "broken.py: error: broken.py:4:5: syntax error" in output
    assert output.count("hint: Fix the script") == 1, output


def test_stdlib_only_script_passes(project: Project) -> None:
    project.write("std.py", STDLIB)
    project.git("add", "std.py")
    ran = project.pre_commit("run", "--files", "std.py")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert not list(project.root.glob("pylock.*.toml"))


def test_file_without_a_script_block_is_not_checked(project: Project) -> None:
    project.write("module.py", NOT_A_SCRIPT)
    project.git("add", "module.py")
    ran = project.pre_commit("run", "--files", "module.py")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # ...whereas jhansi itself refuses it, so passing means it was not looked at.
    direct = project.run(sys.executable, "-m", "jhansi", "check", "--frozen", "module.py")
    assert direct.returncode == 7, direct.stdout + direct.stderr
