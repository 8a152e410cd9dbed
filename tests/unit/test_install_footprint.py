"""What the README's quick start installs: jhansi's own dependencies, no development tools.

``uv run --no-dev jhansi`` (the quick start) installs the lock's packages outside the
``dev`` group; this reads that set from ``uv export`` on the committed lock (offline)
and checks that none of the test, lint or schema-validation tools is in it, and that
nothing under ``jhansi/`` imports one (jsonschema stays: the MCP SDK needs it to run).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = {"pytest", "mypy", "ruff", "hypothesis", "pre-commit", "lxml"}


def _exported(*flags: str) -> set[str]:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH; the project's tests run through uv")
    proc = subprocess.run(
        [uv, "export", "--frozen", "--no-hashes", "--no-emit-project", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in proc.stdout.splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==", line)
        if match:
            names.add(re.sub(r"[-_.]+", "-", match[1]).lower())
    return names


def test_the_quick_start_installs_no_development_tool() -> None:
    runtime = _exported("--no-dev")
    everything = _exported()
    assert everything >= DEV_ONLY, DEV_ONLY - everything  # the names are real lock entries
    assert not DEV_ONLY & runtime, sorted(DEV_ONLY & runtime)
    assert len(runtime) < len(everything)


def test_jhansi_imports_no_development_tool() -> None:
    modules = {name.replace("-", "_") for name in DEV_ONLY} | {"cyclonedx.validation"}
    for path in sorted((ROOT / "jhansi").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [node.module]
            else:
                continue
            for name in imported:
                top = name.split(".")[0]
                hit = top in modules or name.startswith("cyclonedx.validation")
                assert not hit, f"{path.relative_to(ROOT)} imports {name}"
