"""PEP 723 blocks, read as untrusted input."""

from __future__ import annotations

import pytest

from jhansi.deps.pep723 import check_requirement, read_metadata
from jhansi.errors import ExitCode, InputError


def block(body: str) -> str:
    lines = "\n".join(f"# {line}" if line else "#" for line in body.splitlines())
    return f"# /// script\n{lines}\n# ///\nimport requests\n"


def test_dependencies_and_requires_python() -> None:
    meta = read_metadata(
        "#!/usr/bin/env python\n"
        + block('requires-python = ">=3.11"\ndependencies = ["requests==2.32.3", "PyYAML>=6"]'),
        "s.py",
    )
    assert meta is not None
    assert meta.dependencies == ("requests==2.32.3", "PyYAML>=6")
    assert meta.requires_python == ">=3.11"
    assert meta.line == 2


def test_no_block() -> None:
    assert read_metadata("import os\n# /// other\n# x = 1\n# ///\n", "s.py") is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('dependencies = ["x"]\n[tool.uv]\nindex-url = "https://evil.example/simple"', "[tool.uv]"),
        ('[tool.uv.sources]\nrequests = { url = "https://evil.example/r.whl" }', "[tool.uv]"),
        ('[tool.jhansi.sandbox]\nbackend = "bwrap"', "[tool.jhansi]"),
        ('dependencies = ["requests @ https://evil.example/requests.whl"]', "direct reference"),
        ('dependencies = ["git+https://evil.example/x.git"]', "not a valid requirement"),
        ('dependencies = "requests"', "must be a list of strings"),
        ("dependencies = [1, 2]", "must be a list of strings"),
        ('requires-python = ">=3.11"\nindex-url = "x"', "unknown key(s) index-url"),
        ('requires-python = "three"', "not a version specifier"),
        ('dependencies = ["x"', "not valid TOML"),
    ],
)
def test_hostile_blocks_are_refused(body: str, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        read_metadata(block(body), "s.py")
    assert fragment in caught.value.message
    assert (
        caught.value.message.startswith("s.py:1: PEP 723 block refused")
        or "s.py:1" in caught.value.message
    )
    assert caught.value.exit_code == ExitCode.INPUT
    assert caught.value.hint


def test_two_blocks_are_refused() -> None:
    source = block('dependencies = ["a"]') + block('dependencies = ["b"]')
    with pytest.raises(InputError, match="more than one"):
        read_metadata(source, "s.py")


def test_deeply_nested_toml_is_refused_not_a_crash() -> None:
    source = "# /// script\n# dependencies = " + "[" * 100_000 + "\n# ///\n"
    with pytest.raises(InputError, match=r"nests too deeply|not valid TOML"):
        read_metadata(source, "s.py")


@pytest.mark.parametrize("escape", ["\\u0000", "\\u001b", "\\u007f", "\\u0085"])
def test_control_characters_in_a_requirement_are_refused(escape: str) -> None:
    # TOML refuses raw control characters; its escapes let them into the string.
    source = (
        f"# /// script\n# dependencies = [\"requests; python_version > '3.8{escape}'\"]\n# ///\n"
    )
    with pytest.raises(InputError, match="control character"):
        read_metadata(source, "s.py")


def test_an_overlong_requirement_is_refused() -> None:
    with pytest.raises(InputError, match="characters"):
        check_requirement("a" + ">=1" * 1000, "s.py")
