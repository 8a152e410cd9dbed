"""The README's configuration reference and exit codes match the code.

The reference is generated from :data:`jhansi.config.SCHEMA` by
``scripts/gen-config-reference.py``; a key added to the schema (documented or not)
makes this test fail until the README is regenerated, and an undocumented key
cannot be generated at all.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from jhansi.config import NAMED_SECTIONS, SCHEMA, Option
from jhansi.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """scripts/gen-config-reference.py, imported (its name is not a module name)."""
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "scripts" / "gen-config-reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_reference_is_what_the_generator_writes(generator: ModuleType) -> None:
    readme = README.read_text(encoding="utf-8")
    assert generator.render(readme) == readme, (
        "README.md's configuration reference is stale: "
        "run `uv run python scripts/gen-config-reference.py`"
    )


def test_every_key_has_a_row_with_its_doc(generator: ModuleType) -> None:
    text = generator.reference()
    for section, options in SCHEMA.items():
        block = text.split(f"#### `[{section}]`", 1)[1].split("####", 1)[0]
        for key, option in options.items():
            row = next((line for line in block.splitlines() if line.startswith(f"| `{key}` |")), "")
            assert row, f"[{section}] {key} has no row"
            assert " ".join(option.doc.split()).replace("*", "\\*") in row
    for section in NAMED_SECTIONS:
        assert f"#### `[{section}.NAME]`" in text


def test_a_new_key_makes_the_readme_stale(
    generator: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = README.read_text(encoding="utf-8")
    monkeypatch.setitem(
        SCHEMA["sandbox"], "new_key", Option(str, "x", "a string", "A key added later.")
    )
    assert "`new_key`" in generator.reference()
    assert generator.render(readme) != readme


def test_a_key_without_docs_cannot_be_generated(
    generator: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SCHEMA["ledger"], "undocumented", Option(str, None, "a string", " "))
    with pytest.raises(SystemExit, match=r"\[ledger\] undocumented has no doc"):
        generator.reference()


def test_check_mode_fails_on_a_stale_readme(
    generator: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(README.read_text(encoding="utf-8").replace("`JHANSI_SANDBOX_MEMORY`", "`X`"))
    monkeypatch.setattr(generator, "README", stale)
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == README.read_text(encoding="utf-8")


def test_exit_code_table_matches_exit_code_enum() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    codes = {int(m[1]) for m in re.finditer(r"^\| (\d+) \| .+ \|$", section, re.MULTILINE)}
    assert codes == {int(code) for code in ExitCode}
