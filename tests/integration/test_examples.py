"""Every script in examples/ runs the way the README shows, with the output it promises.

The examples are copied into a fresh checkout-like project (a ``pyproject.toml``
at its root, the scripts under ``examples/``) and run from there with the
README's own command lines, so that the locks they write stay out of the
repository. A new example without a case here fails :func:`test_every_example_is_exercised`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jhansi.sandbox.interface import ROOT_SANDBOX_ID_BASE, ROOT_SANDBOX_ID_SPAN
from tests.conftest import backend_env, require_backend, run_jhansi

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
README = (ROOT / "README.md").read_text()

EXERCISED = {
    "hello.py",
    "deps_detected.py",
    "pep723.py",
    "unresolved.py",
    "counter.py",
    "summary.py",
    "vulnerable.py",
    "secret_api/demo.py",
    "secret_api/call.py",  # run by demo.py
}


def test_every_example_is_exercised() -> None:
    assert {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py")} == EXERCISED


class Checkout:
    """A copy of the examples in a project, and ``jhansi`` run from its root."""

    def __init__(self, base: Path, backend: str) -> None:
        self.root = base / "checkout"
        self.root.mkdir()
        (self.root / "pyproject.toml").write_text('[project]\nname = "jhansi-examples"\n')
        shutil.copytree(EXAMPLES, self.root / "examples", ignore=shutil.ignore_patterns("pylock.*"))
        self.env = backend_env(backend)

    def python(self, command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run one README command line (``python ...``) from the checkout's root."""
        words = command.split()
        assert words[0] == "python", command
        return subprocess.run(
            [sys.executable, *words[1:]],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env, **env},
            cwd=self.root,
            timeout=300,
            check=False,
        )

    def jhansi(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run one README command line (``jhansi ...``) from the checkout's root."""
        words = command.split()
        assert words[0] == "jhansi", command
        return run_jhansi(*words[1:], env=self.env, cwd=self.root)


def in_readme(command: str) -> str:
    """``command`` as the README shows it (after ``$ `` or ``$ uv run ``)."""
    pattern = rf"\$ (?:pip install uv && )?(?:uv run (?:--no-dev )?)?{re.escape(command)}(?:\s|$)"
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
    # uid 1000 inside; rootful Docker driven by root has no user namespace, so there
    # the sandbox is its own host id (never root, never a host account's).
    uid = int(lines[1].split(",")[0].removeprefix("user id: "))
    if backend == "docker" and os.getuid() == 0:
        assert 0 <= uid - ROOT_SANDBOX_ID_BASE < ROOT_SANDBOX_ID_SPAN, lines
    else:
        assert uid == 1000, lines
    assert lines[1].endswith(", home: /home/sandbox, working directory: /work"), lines
    assert lines[2] == "network interfaces: lo"
    assert len(lines) == 3
    summary = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"jhansi: succeeded \(exit 0\) in \d+\.\d\d s · sandbox checkout-[0-9a-f]{{8}} · "
        rf"{'docker' if backend == 'docker' else 'bwrap'} · 0 files changed",
        summary,
    ), summary


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_summary_stays_in_the_layer_until_applied(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    require_backend(request, backend)
    checkout = Checkout(tmp_path, backend)
    proc = checkout.jhansi(in_readme("jhansi run examples/summary.py"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Saved summary to summary.csv\n"
    assert "1 file changed: /work/summary.csv" in proc.stderr
    assert not (checkout.root / "summary.csv").exists()
    diff = checkout.jhansi(in_readme("jhansi sandbox diff"))
    assert diff.returncode == 0, diff.stderr
    assert "A summary.csv" in diff.stdout
    assert "+North,4040,1346.7" in diff.stdout.splitlines()
    copied = checkout.jhansi(in_readme("jhansi sandbox cp :/work/summary.csv summary-copy.csv"))
    assert copied.returncode == 0, copied.stderr
    applied = checkout.jhansi(in_readme("jhansi sandbox apply summary.csv"))
    assert applied.returncode == 0, applied.stderr
    made = (checkout.root / "summary.csv").read_bytes()
    assert made == (checkout.root / "summary-copy.csv").read_bytes()
    assert made.startswith(b"region,total,mean\r\nNorth,4040,1346.7\r\n")


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


@pytest.mark.bwrap
@pytest.mark.network
def test_vulnerable_pin_is_refused(checkout: Checkout) -> None:
    fixtures = ROOT / "tests" / "fixtures" / "advisory-database"
    shutil.copytree(fixtures, checkout.root / "tests" / "fixtures" / "advisory-database")
    command = "jhansi run --advisory-db tests/fixtures/advisory-database examples/vulnerable.py"
    proc = checkout.jhansi(in_readme(command))
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""  # nothing ran
    assert re.search(
        r"deny: requests 2\.19\.1: \[vulnerability\] PYSEC-2018-28 \(CVE-2018-18074", proc.stderr
    )
    assert "Require requests>=2.20.0" in proc.stderr
    assert "error: examples/vulnerable.py: the policy refused the dependencies" in proc.stderr
    log = checkout.jhansi("jhansi ledger log --json")
    assert [run["status"] for run in json.loads(log.stdout)["runs"]] == ["denied"]


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A JHANSI_HOME with a short path.

    The egress proxy's unix socket lives under JHANSI_HOME/run, and a socket path
    is limited to 107 bytes: pytest's temporary directories are too deep for it.
    """
    home = Path(tempfile.mkdtemp(prefix="jh-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.bwrap
def test_secret_api_demo(checkout: Checkout, short_home: Path) -> None:
    token = "demo-token-" + secrets.token_hex(12)
    checkout.env["JHANSI_HOME"] = str(short_home)
    proc = checkout.python(in_readme("python examples/secret_api/demo.py"), {"DEMO_TOKEN": token})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    # The demo trusts the example's jhansi.toml first (it opens the network), then runs.
    start = next(i for i, line in enumerate(lines) if line.startswith("+ jhansi run"))
    assert "+ jhansi trust examples/secret_api/jhansi.toml" in lines[:start], lines
    lines = [lines[0], *lines[start:]]
    placeholder = re.fullmatch(
        r"my DEMO_TOKEN: (jhansi-placeholder-DEMO_TOKEN-[0-9a-f]+)", lines[2]
    )
    assert placeholder, lines
    assert lines[3:] == [
        "the API answered 200: token accepted",
        f"the API echoed my Authorization header: Bearer {placeholder[1]}",
        "the echo holds my placeholder, not the token: True",
        "the API received the real token: yes (1 request(s))",
    ]
    assert re.fullmatch(
        r"\+ jhansi run --secret DEMO_TOKEN@[\w.-]+:\d+ examples/secret_api/call.py https://\S+/hello",
        lines[1],
    ), lines
    assert not (checkout.root / "examples" / "secret_api" / "demo-ca.pem").exists()
    # the real token is nowhere the script, the terminal or the record could show it
    assert token not in proc.stdout + proc.stderr
    for path in short_home.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    shown = checkout.jhansi("jhansi ledger log --json")
    run = json.loads(shown.stdout)["runs"][-1]
    record = json.loads(checkout.jhansi(f"jhansi ledger show --json {run['run_id']}").stdout)
    egress = next(r["body"]["egress"] for r in record["records"] if r["kind"] == "exec.end")
    assert [(e["decision"], e["status"], e["secrets"]) for e in egress] == [
        ("intercepted", 200, ["DEMO_TOKEN"])
    ]
