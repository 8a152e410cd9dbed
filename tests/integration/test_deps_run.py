"""Dependencies end to end through the CLI: the real package index, uv, and the real backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import (
    absent,
    backend_env,
    prepare_jhansi_home,
    require_backend,
    run_jhansi,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

MAPPED = """\
import cv2
import sklearn
from PIL import Image
import yaml
from bs4 import BeautifulSoup
from dateutil import parser
import jwt
from dotenv import load_dotenv
"""


@pytest.fixture
def project(shared_dir: Path) -> Path:
    root = shared_dir / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    return root


def _uv_calls(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if "uv call:" in line)


@pytest.mark.network
def test_imports_map_to_the_real_packages(project: Path, bwrap_path: Path) -> None:
    script = project / "ai.py"
    script.write_text(MAPPED)
    proc = run_jhansi("deps", "--json", "--backend", "bwrap", str(script), cwd=project)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    mapped = {d["import"]: d["requirement"] for d in doc["imports"]}
    assert mapped == {
        "cv2": "opencv-python-headless",
        "sklearn": "scikit-learn",
        "PIL": "pillow",
        "yaml": "pyyaml",
        "bs4": "beautifulsoup4",
        "dateutil": "python-dateutil",
        "jwt": "pyjwt",
        "dotenv": "python-dotenv",
    }
    assert all(d["evidence"] for d in doc["imports"])
    assert doc["unresolved"] == []
    assert {p["name"] for p in doc["locked"]} >= {
        "opencv-python-headless",
        "scikit-learn",
        "pillow",
    }
    assert doc["python"].startswith("3.")
    assert {r["name"] for r in doc["requirements"]} >= {"pyyaml", "pyjwt"}


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_made_up_import_is_refused_before_any_sandbox(
    request: pytest.FixtureRequest, backend: str, project: Path, shared_dir: Path
) -> None:
    require_backend(request, backend)
    home = shared_dir / "jhansi-home"
    env = {**backend_env(backend), "JHANSI_HOME": str(home)}
    script = project / "unresolved.py"
    shutil.copy(EXAMPLES / "unresolved.py", script)
    proc = run_jhansi("run", str(script), env=env, cwd=project)
    assert proc.returncode == 7, proc.stderr
    assert "quantumflux_helpers" in proc.stderr
    assert "# dependencies" in proc.stderr
    assert not (home / "data" / "sandboxes").exists()  # no sandbox was even prepared
    deps = run_jhansi("deps", "--json", str(script), env=env, cwd=project)
    assert deps.returncode == 7
    assert json.loads(deps.stdout)["unresolved"][0]["import"] == "quantumflux_helpers"


@pytest.mark.network
@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_third_party_script_runs_and_the_second_run_makes_no_uv_call(
    request: pytest.FixtureRequest, backend: str, project: Path, shared_dir: Path
) -> None:
    require_backend(request, backend)
    home = shared_dir / "jhansi-home"
    prepare_jhansi_home(backend, home)
    env = {**backend_env(backend), "JHANSI_HOME": str(home)}
    script = project / "deps_detected.py"
    shutil.copy(EXAMPLES / "deps_detected.py", script)
    first = run_jhansi("--debug", "run", "--json", str(script), env=env, cwd=project)
    assert first.returncode == 0, first.stderr[-3000:]
    doc = json.loads(first.stdout)
    assert "mean 3.875" in doc["stdout"]["text"]
    assert _uv_calls(first.stderr) >= 1
    lock = project / "pylock.deps_detected.toml"
    assert lock.is_file()
    deps = doc["dependencies"]
    assert deps["lock_file"] == str(lock)
    assert {p["name"] for p in deps["locked"]} >= {"numpy", "requests", "pyyaml"}
    second = run_jhansi("--debug", "run", "--json", str(script), env=env, cwd=project)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _uv_calls(second.stderr) == 0, second.stderr
    again = json.loads(second.stdout)["dependencies"]
    assert again["lock_reused"] is True
    assert again["environment_reused"] is True
    assert again["environment"] == deps["environment"]

    # New code (what an agent sends) that needs what the first script needed: the only
    # per-script work is its scan; the lock, verdict and environment are reused, and the
    # lock is written where the user expects it, with no uv call.
    new = project / "agent_new.py"
    new.write_text("import yaml, requests\nimport numpy\nprint(numpy.arange(4).sum())\n")
    third = run_jhansi("--debug", "run", "--json", str(new), env=env, cwd=project)
    assert third.returncode == 0, third.stderr[-3000:]
    assert _uv_calls(third.stderr) == 0, third.stderr
    doc = json.loads(third.stdout)
    assert doc["stdout"]["text"] == "6\n"
    fresh = doc["dependencies"]
    assert [d["lines"] for d in fresh["imports"] if d["import"] == "numpy"] == [[2]]
    assert fresh["lock_file"] == str(project / "pylock.agent_new.toml")
    assert (project / "pylock.agent_new.toml").read_bytes() == lock.read_bytes()
    assert fresh["lock_reused"] is True
    assert fresh["environment"] == deps["environment"]
    assert fresh["environment_reused"] is True
    # The same from stdin: no lock beside anything, none per snippet, no uv call.
    code = "import numpy, yaml, requests\nprint(numpy.arange(5).sum())\n"
    piped = run_jhansi("--debug", "run", "--json", "-", env=env, cwd=project, input=code)
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert _uv_calls(piped.stderr) == 0, piped.stderr
    assert json.loads(piped.stdout)["stdout"]["text"] == "10\n"
    # Past the decision's day (its entries gone), a new script still gets the lock
    # resolved before for the same inputs: the policy is asked again, uv is not.
    shutil.rmtree(home / "cache" / "warm")
    newer = project / "agent_newer.py"
    newer.write_text("import requests\nimport yaml\nimport numpy as n\nprint(n.ones(3).sum())\n")
    fourth = run_jhansi("--debug", "run", "--json", str(newer), env=env, cwd=project)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert _uv_calls(fourth.stderr) == 0, fourth.stderr
    assert (project / "pylock.agent_newer.toml").read_bytes() == lock.read_bytes()


@pytest.mark.network
def test_frozen_with_a_stale_lock_names_the_fix(project: Path, bwrap_path: Path) -> None:
    script = project / "s.py"
    script.write_text("import yaml\nprint(yaml.__version__)\n")
    assert run_jhansi("lock", "--backend", "bwrap", str(script), cwd=project).returncode == 0
    script.write_text("import yaml\nimport requests\nprint(yaml.__version__)\n")
    proc = run_jhansi("run", "--backend", "bwrap", "--frozen", str(script), cwd=project)
    assert proc.returncode == 7, proc.stderr
    assert f"jhansi lock {script}" in proc.stderr
    missing = project / "t.py"
    missing.write_text("import yaml\n")
    proc = run_jhansi("run", "--backend", "bwrap", "--frozen", str(missing), cwd=project)
    assert proc.returncode == 7
    assert f"jhansi lock {missing}" in proc.stderr


def test_requires_python_names_both_versions(project: Path, bwrap_path: Path) -> None:
    script = project / "new.py"
    script.write_text('# /// script\n# requires-python = ">=3.99"\n# ///\nprint(1)\n')
    proc = run_jhansi("run", "--backend", "bwrap", str(script), cwd=project)
    assert proc.returncode == 7, proc.stderr
    assert ">=3.99" in proc.stderr
    assert "Python 3." in proc.stderr


def test_tool_uv_in_a_script_is_refused(project: Path, bwrap_path: Path) -> None:
    script = project / "evil.py"
    script.write_text(
        "# /// script\n"
        '# dependencies = ["requests"]\n'
        "# [tool.uv]\n"
        '# index-url = "https://evil.example/simple"\n'
        "# ///\nimport requests\n"
    )
    proc = run_jhansi("run", "--backend", "bwrap", str(script), cwd=project)
    assert proc.returncode == 6, proc.stderr
    assert "[tool.uv]" in proc.stderr
    assert "untrusted" in proc.stderr


@pytest.mark.network
def test_pep723_example_runs(project: Path, bwrap_path: Path) -> None:
    script = project / "pep723.py"
    shutil.copy(EXAMPLES / "pep723.py", script)
    proc = run_jhansi("run", "-q", "--backend", "bwrap", str(script), cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "declared: true\nby: PEP 723\n"


def _backend(request: pytest.FixtureRequest, backend: str, shared_dir: Path) -> dict[str, str]:
    """The settings that select ``backend``, with a JHANSI_HOME its engine can reach."""
    require_backend(request, backend)
    home = shared_dir / "jhansi-home"
    prepare_jhansi_home(backend, home)
    return {**backend_env(backend), "JHANSI_HOME": str(home)}


OPENCV = """\
import cv2
import numpy as np

ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), dtype=np.uint8))
print("cv2", cv2.__version__, ok, png.size > 0)
"""


@pytest.mark.network
@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_cv2_with_no_flags_gets_only_the_headless_build_and_loads(
    request: pytest.FixtureRequest, backend: str, project: Path, shared_dir: Path
) -> None:
    # The issue: `import cv2` mapped to opencv-python, whose cv2 needs libxcb.so.1,
    # which neither a bwrap sandbox nor a slim image has. A sandbox gets the headless build.
    env = _backend(request, backend, shared_dir)
    script = project / "vision.py"
    script.write_text(OPENCV)
    proc = run_jhansi("run", "--json", str(script), env=env, cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["backend"] == backend
    assert doc["stdout"]["text"].startswith("cv2 ")
    assert doc["stdout"]["text"].endswith(" True True\n")
    locked = {p["name"] for p in doc["dependencies"]["locked"]}
    assert {name for name in locked if name.startswith("opencv")} == {"opencv-python-headless"}
    [cv2] = [d for d in doc["dependencies"]["imports"] if d["import"] == "cv2"]
    assert cv2["requirement"] == "opencv-python-headless"


@pytest.mark.network
def test_a_declared_opencv_build_is_the_only_one_locked_and_cv2_loads(
    project: Path, bwrap_path: Path
) -> None:
    # The issue: `--with opencv-python-headless` added the headless build beside the
    # mapped GUI one, and two builds of cv2 in one environment break each other.
    script = project / "vision.py"
    script.write_text(OPENCV)
    proc = run_jhansi(
        "run",
        "--json",
        "--backend",
        "bwrap",
        "--with",
        "opencv-python-headless",
        str(script),
        cwd=project,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["stdout"]["text"].startswith("cv2 ")
    assert doc["stdout"]["text"].endswith(" True True\n")
    locked = {p["name"] for p in doc["dependencies"]["locked"]}
    assert {name for name in locked if name.startswith("opencv")} == {"opencv-python-headless"}
    [cv2] = [d for d in doc["dependencies"]["imports"] if d["import"] == "cv2"]
    assert cv2["requirement"] == "opencv-python-headless"
    assert cv2["evidence"].startswith("declared (with); ")


@pytest.mark.network
def test_a_declared_gui_build_that_cannot_load_is_told_the_headless_one(
    request: pytest.FixtureRequest, project: Path, shared_dir: Path
) -> None:
    # Declared, opencv-python is what the run gets; the test image (Debian 12, no X11)
    # has no libxcb.so.1 for its cv2, and jhansi names the build to declare instead.
    # Docker only: this host has the X11 libraries a bwrap sandbox would see.
    env = _backend(request, "docker", shared_dir)
    script = project / "vision.py"
    script.write_text(OPENCV)
    proc = run_jhansi("run", "--json", "--with", "opencv-python", str(script), env=env, cwd=project)
    assert proc.returncode == 1, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert "cannot open shared object file" in doc["stderr"]["text"]
    locked = {p["name"] for p in doc["dependencies"]["locked"]}
    assert {name for name in locked if name.startswith("opencv")} == {"opencv-python"}
    found = doc["missing_dependency"]
    assert found["requirement"] == "opencv-python-headless"
    assert found["replaces"] == "opencv-python"
    assert f"jhansi: warning: {found['hint']}\n" in proc.stderr
    assert "declare opencv-python-headless in its place" in found["hint"]


CHART = """\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

plt.plot([1, 2])
plt.savefig("/home/sandbox/chart.png")
"""


@pytest.mark.network
@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_a_matplotlib_run_leaves_stderr_to_the_script(
    request: pytest.FixtureRequest, backend: str, project: Path, shared_dir: Path
) -> None:
    # A fresh (ephemeral) home has no font cache, so matplotlib lists the system's fonts
    # with fc-list: under bwrap the host's, which printed "Fontconfig error: Cannot load
    # default config file" into every run's stderr while /etc/fonts was not in the sandbox.
    if backend == "bwrap" and shutil.which("fc-list") is None:
        absent("fontconfig is not installed, so fc-list cannot print its error (provision.sh)")
    env = _backend(request, backend, shared_dir)
    script = project / "chart.py"
    script.write_text(CHART)
    proc = run_jhansi("run", "--json", "--ephemeral", str(script), env=env, cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["backend"] == backend
    assert doc["stderr"] == {"text": "", "bytes": 0, "truncated": False}
    assert "chart.png" in {change["path"] for change in doc["files_changed"]}


USERS = """\
from pydantic import BaseModel, EmailStr


class User(BaseModel):
    name: str
    email: EmailStr


print(User(name="Ada", email="ada@example.com").email)
"""


@pytest.mark.network
@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_pydantic_email_without_its_extra_is_told_the_with_that_fixes_it(
    request: pytest.FixtureRequest, backend: str, project: Path, shared_dir: Path
) -> None:
    # `import pydantic` locks pydantic alone; EmailStr needs email-validator, and the
    # run's ImportError says so. jhansi names the --with, and that --with works.
    env = _backend(request, backend, shared_dir)
    script = project / "users.py"
    script.write_text(USERS)
    proc = run_jhansi("run", "--json", str(script), env=env, cwd=project)
    assert proc.returncode == 1, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["backend"] == backend
    assert doc["status"] == "failed"
    assert "email-validator is not installed" in doc["stderr"]["text"]
    locked = {p["name"] for p in doc["dependencies"]["locked"]}
    assert "pydantic" in locked
    assert "email-validator" not in locked
    hint = (
        "the script needs email-validator (pydantic[email]); add it with "
        "--with 'pydantic[email]' or a PEP 723 line"
    )
    assert doc["missing_dependency"] == {
        "distribution": "email-validator",
        "requirement": "pydantic[email]",
        "hint": hint,
    }
    assert f"jhansi: warning: {hint}\n" in proc.stderr
    fixed = run_jhansi(
        "run", "--json", "--with", "pydantic[email]", str(script), env=env, cwd=project
    )
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    again = json.loads(fixed.stdout)
    assert again["stdout"]["text"] == "ada@example.com\n"
    assert again["missing_dependency"] is None
    assert "email-validator" in {p["name"] for p in again["dependencies"]["locked"]}
