"""``jhansi.run(...)`` end to end on bubblewrap: real sandboxes, the real ledger, no CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import jhansi
from jhansi.config import load_settings
from jhansi.errors import ConfigError, DependencyError, ExitCode, InputError
from jhansi.ledger.layout import resolve_directory
from jhansi.ledger.read import iter_records
from jhansi.paths import Paths
from jhansi.report import Stream
from tests.conftest import require_backend

pytestmark = pytest.mark.bwrap

COUNTER = """\
import os
path = os.path.join(os.environ["HOME"], "count")
count = int(open(path).read()) + 1 if os.path.exists(path) else 1
open(path, "w").write(str(count))
print(count)
"""


class Collecting:
    """A reporter that keeps what it is told (a real implementation of the protocol)."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.warnings: list[str] = []
        self.chunks: list[tuple[Stream, bytes]] = []

    def step(self, name: str, detail: str = "") -> None:
        self.steps.append(name)

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def progress(self, task: str, done: int, total: int | None) -> None:
        pass

    def output(self, stream: Stream, data: bytes) -> None:
        self.chunks.append((stream, data))


@pytest.fixture
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    require_backend(request, "bwrap")
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "api-demo"\n')
    return root


def _records(kind: str) -> list[dict[str, Any]]:
    """The bodies of this test's ledger's records of ``kind``."""
    paths = Paths.from_environment()
    directory = resolve_directory(load_settings(paths=paths), paths)
    return [dict(r.body) for r in iter_records(directory) if r.kind == kind]


def test_code_runs_and_is_recorded(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    reporter = Collecting()
    result = jhansi.run(
        code="import os, sys\nprint('hi', os.environ['MODE'])\nprint('oops', file=sys.stderr)\n",
        sandbox="api",
        env={"MODE": "test"},
        backend="bwrap",
        reporter=reporter,
    )
    assert isinstance(result, jhansi.RunResult)
    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.stdout.data == b"hi test\n"
    assert result.stderr.data == b"oops\n"
    assert result.sandbox == "api"
    assert result.script == "<stdin>"
    assert result.backend.backend == "bwrap"
    assert result.project == str(project)
    # the reporter saw the steps and the live output; nothing was printed
    assert "sandbox" in reporter.steps
    assert (b"".join(d for s, d in reporter.chunks if s == "stdout")) == b"hi test\n"
    # the result is the ledger's: its exec.end record carries the same run id
    ends = _records("exec.end")
    assert [end["run_id"] for end in ends] == [result.run_id]
    assert result.record is not None
    assert len(result.record) == 64


def test_script_with_args_and_a_persistent_sandbox(project: Path) -> None:
    script = project / "echo.py"
    script.write_text("import sys\nprint(' '.join(sys.argv[1:]))\n")
    echoed = jhansi.run(script, args=["one", "two words"], backend="bwrap", ephemeral=True)
    assert echoed.stdout.data == b"one two words\n"
    assert echoed.ephemeral is True

    counter = project / "counter.py"
    counter.write_text(COUNTER)
    counts = [
        jhansi.run(str(counter), sandbox="persist", backend="bwrap").stdout.data for _ in range(2)
    ]
    assert counts == [b"1\n", b"2\n"]
    second = jhansi.run(counter, sandbox="persist", backend="bwrap")
    assert [(c.path, c.change) for c in second.files_changed] == [("count", "modified")]


def test_a_failing_script_is_a_result_not_an_exception(project: Path) -> None:
    result = jhansi.run(
        code="import sys\nsys.exit(3)\n", backend="bwrap", project=project, sandbox="api"
    )
    assert result.status == "failed"
    assert result.exit_code == 3
    timed_out = jhansi.run(
        code="import time\ntime.sleep(30)\n", backend="bwrap", timeout=1, sandbox="api"
    )
    assert timed_out.status == "timed_out"


def test_refusals_raise_and_are_recorded(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    with pytest.raises(DependencyError) as unresolved:
        jhansi.run(code="import quantumflux_helpers\n", backend="bwrap", sandbox="api")
    assert unresolved.value.exit_code == ExitCode.DEPENDENCIES
    assert "quantumflux_helpers" in unresolved.value.message
    assert isinstance(unresolved.value, jhansi.JhansiError)

    with pytest.raises(InputError, match="syntax error"):
        jhansi.run(code="print('unclosed'\n", backend="bwrap")
    with pytest.raises(InputError, match="no such file"):
        jhansi.run(project / "missing.py", backend="bwrap")
    with pytest.raises(ConfigError, match="JHANSI_TEST_MISSING_KEY"):
        jhansi.run(
            code="print(1)",
            backend="bwrap",
            secrets=["JHANSI_TEST_MISSING_KEY@api.example.com"],
        )

    denied = _records("exec.denied")
    kinds = [d["reason"]["kind"] for d in denied]
    assert kinds == ["DependencyError", "InputError", "InputError", "ConfigError"]
    # a secret without a value is refused before any sandbox starts: nothing ran
    assert _records("exec.start") == []


@pytest.mark.network
def test_requirements_are_locked_and_installed(project: Path) -> None:
    result = jhansi.run(
        code="import yaml\nprint(yaml.safe_dump({'a': 1}), end='')\n",
        requirements=["pyyaml>=6"],
        backend="bwrap",
        project=project,
        sandbox="api",
    )
    assert result.status == "succeeded", result.stderr.data
    assert result.stdout.data == b"a: 1\n"
    assert result.dependencies is not None
    assert result.dependencies.lock is not None
    assert [p.name for p in result.dependencies.lock.packages] == ["pyyaml"]
