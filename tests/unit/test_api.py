"""The Python API's surface: lazy re-exports, request building, settings overrides.

Runs themselves (real sandboxes, the ledger) are in tests/integration/test_api.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import jhansi
from jhansi import api
from jhansi.errors import ConfigError, ExitCode, UsageError

HEAVY = ("jhansi.runner", "jhansi.api", "typer", "rich", "mcp", "jhansi.mcp_server", "docker")


def _imported_after(code: str) -> list[str]:
    """The heavy modules loaded by ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport sys, json\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        f"or m in {HEAVY!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_import_jhansi_loads_nothing_heavy() -> None:
    assert _imported_after("import jhansi; jhansi.__version__") == []


def test_version_command_loads_nothing_heavy() -> None:
    loaded = _imported_after(
        "import contextlib, io\nfrom jhansi.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--version'])"
    )
    assert loaded == []


def test_the_cli_app_does_not_load_the_mcp_sdk() -> None:
    loaded = _imported_after("import jhansi.cli.app")
    assert "mcp" not in loaded
    assert "jhansi.mcp_server" not in loaded
    assert "jhansi.runner" not in loaded


def test_public_names_resolve_lazily_to_the_real_objects() -> None:
    from jhansi import request, result, runner
    from jhansi.errors import JhansiError
    from jhansi.runner import Runner, RunRequest, RunResult

    assert jhansi.run is api.run
    assert jhansi.RunRequest is RunRequest is request.RunRequest
    assert jhansi.RunResult is RunResult is result.RunResult
    assert runner.RunRequest is RunRequest  # where they were defined before
    assert jhansi.Runner is Runner
    assert jhansi.JhansiError is JhansiError
    assert set(jhansi.__all__) <= set(dir(jhansi))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = jhansi.nope  # type: ignore[attr-defined]


def test_the_package_is_typed() -> None:
    assert (Path(jhansi.__file__).parent / "py.typed").is_file()


def test_request_from_code_and_from_a_script(tmp_path: Path) -> None:
    request = api.make_request(
        code="print(1)",
        requirements=["requests>=2.32"],
        sandbox="demo",
        env={"MODE": "test"},
        args=["a", "b"],
    )
    assert request.script is None
    assert request.code == "print(1)"
    assert request.with_requirements == ("requests>=2.32",)
    assert request.sandbox == "demo"
    assert request.env == (("MODE", "test"),)
    assert request.args == ("a", "b")

    script = api.make_request(
        str(tmp_path / "s.py"), ephemeral=True, project=tmp_path, requirements_file="req.txt"
    )
    assert script.script == tmp_path / "s.py"
    assert script.code is None
    assert script.ephemeral is True
    assert script.project == tmp_path
    assert script.requirements_file == Path("req.txt")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"script": "a.py", "code": "print(1)"},
        {"code": "print(1)", "args": "--flag"},
        {"code": "print(1)", "requirements": "requests"},
    ],
)
def test_requests_that_cannot_be_run_are_usage_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError) as caught:
        api.make_request(**kwargs)  # type: ignore[arg-type]
    assert caught.value.exit_code == ExitCode.USAGE
    assert caught.value.hint


def test_egress_requests_reach_the_run_request() -> None:
    request = api.make_request(
        code="print(1)",
        allowed_hosts=["api.example.com"],
        secrets=["STRIPE_KEY@api.stripe.com"],
    )
    assert request.allow_hosts == ("api.example.com",)
    assert request.secrets == ("STRIPE_KEY@api.stripe.com",)
    with pytest.raises(UsageError, match="sequences of strings"):
        api.make_request(code="print(1)", secrets="STRIPE_KEY@api.stripe.com")  # type: ignore[arg-type]


def test_settings_overrides_sit_on_top_of_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "jhansi.toml").write_text('[sandbox]\nbackend = "docker"\ntimeout = "5m"\n')
    from_file = api.run_settings(start=tmp_path)
    assert from_file.sandbox.backend == "docker"
    assert from_file.sandbox.timeout == 300.0

    overridden = api.run_settings(
        start=tmp_path, backend="bwrap", timeout="30s", memory="512m", cpus=0.5, pids=64
    )
    assert overridden.sandbox.backend == "bwrap"
    assert overridden.sandbox.timeout == 30.0
    assert overridden.sandbox.memory == 512 << 20
    assert overridden.sandbox.cpus == 0.5
    assert overridden.sandbox.pids == 64
    assert overridden.sources["sandbox.backend"] == "command line"
    assert overridden.sources["sandbox.image"] == "default"

    ledger = api.run_settings(start=tmp_path, ledger=tmp_path / "ledger")
    assert ledger.ledger.path == str(tmp_path / "ledger")


def test_invalid_overrides_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend"):
        api.run_settings(start=tmp_path, backend="vm")
    with pytest.raises(ConfigError, match="timeout"):
        jhansi.run(code="print(1)", timeout=-1, start=tmp_path)
