"""Every script in examples/ runs the way the README shows, with the output it promises.

The examples are copied into a fresh checkout-like project (a ``pyproject.toml``
at its root, the scripts under ``examples/``) and run from there with the
README's own command lines, so that the locks they write stay out of the
repository. A new example without a case here fails :func:`test_every_example_is_exercised`.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from tests.conftest import backend_env, require_backend, run_jhansi

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
README = (ROOT / "README.md").read_text()

EXERCISED = {"hello.py", "deps_detected.py", "pep723.py", "unresolved.py", "counter.py"}


def test_every_example_is_exercised() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == EXERCISED


class Checkout:
    """A copy of the examples in a project, and ``jhansi`` run from its root."""

    def __init__(self, base: Path, backend: str) -> None:
        self.root = base / "checkout"
        self.root.mkdir()
        (self.root / "pyproject.toml").write_text('[project]\nname = "jhansi-examples"\n')
        shutil.copytree(EXAMPLES, self.root / "examples", ignore=shutil.ignore_patterns("pylock.*"))
        self.env = backend_env(backend)

    def jhansi(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run one README command line (``jhansi ...``) from the checkout's root."""
        words = command.split()
        assert words[0] == "jhansi", command
        return run_jhansi(*words[1:], env=self.env, cwd=self.root)


def in_readme(command: str) -> str:
    """``command`` as the README shows it (after ``$ `` or ``$ uv run ``)."""
    pattern = rf"\$ (?:pip install uv && )?(?:uv run )?{re.escape(command)}(?:\s|$)"
    assert re.search(pattern, README), f"the README does not show `{command}`"
    return command


@pytest.fixture
def checkout(request: pytest.FixtureRequest, tmp_path: Path) -> Checkout:
    require_backend(request, "bwrap")
    return Checkout(tmp_path, "bwrap")


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_hello(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    require_backend(request, backend)
    proc = Checkout(tmp_path, backend).jhansi(in_readme("jhansi run examples/hello.py"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"Hello from Python 3\.\d+\.\d+ in a jhansi sandbox\.", lines[0]), lines
    assert lines[1] == "user id: 1000, home: /home/sandbox, working directory: /work"
    assert lines[2] == "network interfaces: lo"
    assert len(lines) == 3
    summary = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"jhansi: succeeded \(exit 0\) in \d+\.\d\d s · sandbox checkout-[0-9a-f]{{8}} · "
        rf"{'docker' if backend == 'docker' else 'bwrap'} · 0 files changed",
        summary,
    ), summary


@pytest.mark.bwrap
@pytest.mark.network
def test_deps_detected(checkout: Checkout) -> None:
    deps = checkout.jhansi(in_readme("jhansi deps examples/deps_detected.py"))
    assert deps.returncode == 0, deps.stderr
    for requirement in ("numpy", "requests", "pyyaml"):
        assert requirement in deps.stdout

    locked = checkout.jhansi(in_readme("jhansi lock examples/deps_detected.py"))
    assert locked.returncode == 0, locked.stderr
    lock_file = checkout.root / "examples" / "pylock.deps_detected.toml"
    # `deps` locked already, as a run would: `lock` finds it up to date
    first, *packages = locked.stdout.splitlines()
    assert re.fullmatch(rf"{re.escape(str(lock_file))}: up to date, \d+ packages", first), first
    assert {"numpy", "requests", "pyyaml"} <= {line.split()[0] for line in packages}
    assert 'name = "numpy"' in lock_file.read_text()

    ran = checkout.jhansi(in_readme("jhansi run examples/deps_detected.py"))
    assert ran.returncode == 0, ran.stderr
    samples = [3, 1, 4, 1, 5, 9, 2, 6]
    assert ran.stdout.splitlines() == [
        f"mean {statistics.fmean(samples):.3f}, std {statistics.pstdev(samples):.3f}",
        "would call https://example.org/api?n=8 (no network in the sandbox)",
    ]


@pytest.mark.bwrap
@pytest.mark.network
def test_pep723(checkout: Checkout) -> None:
    proc = checkout.jhansi("jhansi run examples/pep723.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "declared: true\nby: PEP 723\n"
    assert (checkout.root / "examples" / "pylock.pep723.toml").is_file()


@pytest.mark.bwrap
def test_unresolved_is_refused(checkout: Checkout) -> None:
    proc = checkout.jhansi("jhansi run examples/unresolved.py")
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == ""  # nothing ran
    assert "cannot tell which package provides quantumflux_helpers (line 7)" in proc.stderr
    assert "# dependencies" in proc.stderr


@pytest.mark.bwrap
def test_counter_persists_in_a_named_sandbox(checkout: Checkout) -> None:
    named = in_readme("jhansi run -q --sandbox demo examples/counter.py")
    assert [checkout.jhansi(named).stdout for _ in range(2)] == ["1\n", "2\n"]
    ephemeral = in_readme("jhansi run -q --ephemeral examples/counter.py")
    assert [checkout.jhansi(ephemeral).stdout for _ in range(2)] == ["1\n", "1\n"]
    assert checkout.jhansi(named).stdout == "3\n"
