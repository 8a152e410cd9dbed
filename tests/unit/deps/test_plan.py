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
