"""Planning: every import classified, with evidence; nothing guessed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jhansi.deps.plan import plan, unresolved_error
from jhansi.deps.target import Target
from jhansi.errors import DependencyError, ExitCode

TARGET = Target("3.11.7", "cpython", "x86_64", "glibc", "2.36", frozenset(sys.stdlib_module_names))


def _plan(source: str, tmp_path: Path, **kwargs: object) -> object:
    return plan(source, where="s.py", target=TARGET, local_roots=(tmp_path,), **kwargs)  # type: ignore[arg-type]


def test_detected_imports_become_requirements(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("")
    result = plan(
        "import os\nimport helpers\nimport yaml\nfrom google.cloud import storage\n"
        "try:\n    import ujson\nexcept ImportError:\n    pass\n",
        where="s.py",
        target=TARGET,
        local_roots=(tmp_path,),
    )
    kinds = {d.name: d.kind for d in result.imports}
    assert kinds == {
        "os": "stdlib",
        "helpers": "local",
        "yaml": "requirement",
        "google.cloud": "requirement",
        "ujson": "optional",
    }
    names = {r.name for r in result.requirements}
    assert names == {"pyyaml", "google-cloud-storage"}
    yaml = next(r for r in result.requirements if r.name == "pyyaml")
    assert yaml.source == "map"
    assert "rank" in yaml.evidence
    assert yaml.imports == ("yaml",)
    assert result.mode == "detected"


def test_unknown_import_is_unresolved_never_guessed(tmp_path: Path) -> None:
    result = plan(
        "import quantumflux_helpers\n", where="s.py", target=TARGET, local_roots=(tmp_path,)
    )
    assert [d.name for d in result.unresolved] == ["quantumflux_helpers"]
    assert result.requirements == ()
    error = unresolved_error(result, "s.py")
    assert isinstance(error, DependencyError)
    assert error.exit_code == ExitCode.DEPENDENCIES
    assert "quantumflux_helpers (line 1)" in error.message
    assert "# dependencies" in error.hint
    assert "--with" in error.hint


def test_with_declares_a_same_named_package(tmp_path: Path) -> None:
    result = plan(
        "import quantumflux_helpers\n",
        where="s.py",
        target=TARGET,
        local_roots=(tmp_path,),
        with_requirements=("quantumflux-helpers==1.0",),
    )
    assert result.unresolved == ()
    assert result.requirements[0].source == "with"


def test_pep723_block_is_authoritative(tmp_path: Path) -> None:
    source = (
        '# /// script\n# dependencies = ["PyYAML==6.0.2"]\n# ///\n'
        "import yaml\nimport foo_from_elsewhere\n"
    )
    result = plan(source, where="s.py", target=TARGET, local_roots=(tmp_path,))
    assert result.mode == "pep723"
    assert [r.spec for r in result.requirements] == ["PyYAML==6.0.2"]
    kinds = {d.name: d.kind for d in result.imports}
    assert kinds == {"yaml": "requirement", "foo_from_elsewhere": "undeclared"}
    assert result.unresolved == ()


def test_requires_python_names_both_versions(tmp_path: Path) -> None:
    source = '# /// script\n# requires-python = ">=3.13"\n# ///\nprint(1)\n'
    with pytest.raises(DependencyError) as caught:
        plan(source, where="s.py", target=TARGET, local_roots=(tmp_path,))
    assert ">=3.13" in caught.value.message
    assert "3.11.7" in caught.value.message


def test_requirements_file_replaces_detection(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned\nrequests==2.32.3  # http\n\nPyYAML\n")
    result = plan(
        "import numpy\n",
        where="s.py",
        target=TARGET,
        local_roots=(tmp_path,),
        requirements_file=req,
    )
    assert [r.spec for r in result.requirements] == ["requests==2.32.3", "PyYAML"]
    assert result.mode == "requirements"


def test_requirements_file_may_not_carry_index_options(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("--extra-index-url https://evil.example/simple\nrequests\n")
    with pytest.raises(Exception, match="options such as --extra-index-url"):
        plan(
            "import requests\n",
            where="s.py",
            target=TARGET,
            local_roots=(tmp_path,),
            requirements_file=req,
        )


def test_pyproject_as_requirements(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["rich>=13"]\n')
    result = plan(
        "import rich\n",
        where="s.py",
        target=TARGET,
        local_roots=(tmp_path,),
        requirements_file=pyproject,
    )
    assert [r.spec for r in result.requirements] == ["rich>=13"]


def _names(result: object) -> list[tuple[str, str]]:
    return [(r.name, r.source) for r in result.requirements]  # type: ignore[attr-defined]


def test_an_opencv_script_gets_the_headless_build(tmp_path: Path) -> None:
    result = _plan("import cv2\nimport numpy as np\n", tmp_path)
    assert ("opencv-python-headless", "map") in _names(result)
    assert "opencv-python" not in {name for name, _ in _names(result)}


@pytest.mark.parametrize(
    "declared", ["opencv-python-headless", "opencv-python", "opencv-contrib-python>=4.10"]
)
def test_a_declared_build_replaces_the_mapped_one(tmp_path: Path, declared: str) -> None:
    # The issue: `--with opencv-python-headless` used to add it beside the mapped
    # opencv-python, and two builds of cv2 break each other.
    result = _plan("import cv2\n", tmp_path, with_requirements=(declared,))
    [requirement] = result.requirements  # type: ignore[attr-defined]
    assert (requirement.spec, requirement.source) == (declared, "with")
    assert requirement.imports == ("cv2",)
    [decision] = result.imports  # type: ignore[attr-defined]
    assert (decision.kind, decision.requirement) == ("requirement", declared)
    assert decision.evidence.startswith("declared (with); ")
    assert requirement.name not in decision.alternatives


def test_a_declared_provider_under_another_name_wins_in_a_pep723_block(tmp_path: Path) -> None:
    # Before: opencv-python was the map's answer, so the headless build's `cv2` was
    # reported as an import the block leaves out.
    source = '# /// script\n# dependencies = ["opencv-python-headless"]\n# ///\nimport cv2\n'
    result = _plan(source, tmp_path)
    assert {d.name: d.kind for d in result.imports} == {"cv2": "requirement"}  # type: ignore[attr-defined]
    assert _names(result) == [("opencv-python-headless", "pep723")]


def test_two_declared_builds_of_one_module_are_refused(tmp_path: Path) -> None:
    source = '# /// script\n# dependencies = ["opencv-python"]\n# ///\nimport cv2\n'
    with pytest.raises(DependencyError) as caught:
        _plan(source, tmp_path, with_requirements=("opencv-python-headless",))
    error = caught.value
    assert error.exit_code == ExitCode.DEPENDENCIES
    assert error.message == (
        "s.py: opencv-python (the PEP 723 block) and opencv-python-headless (--with) both "
        "install the module cv2, and a run may have only one of them; nothing was run"
    )
    assert error.hint == (
        "Keep opencv-python-headless, the build a sandbox can load, and remove opencv-python "
        "from the PEP 723 block."
    )
    assert len(error.diagnostics().splitlines()) == 2


def test_declared_conflicts_are_refused_without_an_import_and_without_a_preference(
    tmp_path: Path,
) -> None:
    with pytest.raises(DependencyError) as caught:
        _plan("print(1)\n", tmp_path, with_requirements=("psycopg2", "psycopg2-binary==2.9.10"))
    assert "psycopg2 (--with) and psycopg2-binary (--with) both install the module psycopg2" in (
        caught.value.message
    )
    assert caught.value.hint.startswith("Keep one of them and remove the other from --with (")


def test_a_requirements_file_and_with_conflict_too(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("onnxruntime-gpu\n")
    with pytest.raises(DependencyError, match=r"onnxruntime-gpu \(--requirements\) and "):
        _plan(
            "import onnxruntime\n",
            tmp_path,
            requirements_file=req,
            with_requirements=("onnxruntime",),
        )


def test_related_distributions_that_share_a_name_are_not_refused(tmp_path: Path) -> None:
    # mlflow depends on mlflow-skinny and both install `mlflow`: not an [exclusive] group.
    result = _plan("import mlflow\n", tmp_path, with_requirements=("mlflow", "mlflow-skinny"))
    assert [name for name, _ in _names(result)] == ["mlflow", "mlflow-skinny"]
    # Both declared: the map's own answer among them is the one the import is tied to.
    assert result.imports[0].requirement == "mlflow-skinny"  # type: ignore[attr-defined]
