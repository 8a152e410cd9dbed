"""Machine output: every ``--json`` prints exactly one JSON document on stdout, nothing else.

``jhansi run --json`` is validated against ``schemas/run-result.schema.json``
(JSON Schema 2020-12) for a success, a script's failure, a timeout and jhansi's
refusals; a strict copy of the schema (no undocumented keys anywhere) keeps the
schema and the output from drifting apart. Every other command with ``--json``
is run for real, its success and an error, and must print one document with a
``status`` and nothing else on stdout.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from jhansi.errors import ExitCode
from tests.conftest import backend_env, require_backend, run_jhansi

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "run-result.schema.json"


def _strict(schema: Any) -> Any:
    """``schema`` with every object that lists its properties closed to others."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


SCHEMA = json.loads(SCHEMA_FILE.read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
STRICT = Draft202012Validator(_strict(copy.deepcopy(SCHEMA)))


def one_document(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The single JSON document on stdout; fails on anything else there."""
    text = proc.stdout
    document, end = json.JSONDecoder().raw_decode(text)
    assert text[end:].strip() == "", f"more than one document on stdout: {text[end:]!r}"
    assert text.lstrip() == text, f"output before the document: {text!r}"
    assert isinstance(document, dict)
    assert isinstance(document.get("status"), str), document
    return document


def valid_run_document(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """``jhansi run --json``'s document, validated against the schema (and strictly)."""
    document = one_document(proc)
    VALIDATOR.validate(document)
    STRICT.validate(document)
    return document


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    codes = SCHEMA["$defs"]["error"]["properties"]["error"]["properties"]["exit_code"]["enum"]
    assert set(codes) == {int(code) for code in ExitCode if code != ExitCode.OK}


@pytest.fixture
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    require_backend(request, "bwrap")
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "json-demo"\n')
    return root


def jhansi(project: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_jhansi(*args, env=backend_env("bwrap"), cwd=project, input=input)


@pytest.mark.bwrap
def test_run_success_failure_and_timeout(project: Path) -> None:
    script = project / "writes.py"
    script.write_text(
        "import os, sys\n"
        "open(os.path.join(os.environ['HOME'], 'note.txt'), 'w').write('hi')\n"
        "print('out')\n"
        "print('err', file=sys.stderr)\n"
    )
    ok = jhansi(project, "run", "--json", "--sandbox", "json", str(script))
    assert ok.returncode == 0, ok.stderr
    document = valid_run_document(ok)
    assert document["status"] == "succeeded"
    assert document["stdout"] == {"text": "out\n", "bytes": 4, "truncated": False}
    assert document["stderr"]["text"] == "err\n"
    assert [(c["path"], c["change"]) for c in document["files_changed"]] == [("note.txt", "added")]
    assert document["sandbox"] == "json"
    assert document["backend"] == "bwrap"
    assert document["dependencies"] is not None
    assert document["dependencies"]["lock_file"] is None

    failing = project / "fails.py"
    failing.write_text("import sys\nprint('partial')\nsys.exit(3)\n")
    failed = jhansi(project, "run", "--json", str(failing))
    assert failed.returncode == 3, failed.stderr
    document = valid_run_document(failed)
    assert document["status"] == "failed"
    assert document["exit_code"] == 3
    assert document["stdout"]["text"] == "partial\n"

    slow = jhansi(
        project, "run", "--json", "--timeout", "1", "-", input="import time\ntime.sleep(30)\n"
    )
    assert slow.returncode == int(ExitCode.TIMED_OUT), slow.stderr
    document = valid_run_document(slow)
    assert document["status"] == "timed_out"
    assert document["script"] == "<stdin>"


@pytest.mark.bwrap
def test_a_module_the_scan_could_not_see_is_named_with_the_fix(project: Path) -> None:
    # An import made from a computed name is invisible to the scan: the run fails with
    # ModuleNotFoundError, and jhansi says which --with adds it, on stderr and in JSON.
    script = project / "dynamic.py"
    script.write_text('name = "ya" + "ml"\nyaml = __import__(name)\n')
    proc = jhansi(project, "run", "--json", str(script))
    assert proc.returncode == 1, proc.stderr
    document = valid_run_document(proc)
    assert document["status"] == "failed"
    hint = "the script needs pyyaml; add it with --with pyyaml or a PEP 723 line"
    assert document["missing_dependency"] == {
        "distribution": "pyyaml",
        "requirement": "pyyaml",
        "hint": hint,
    }
    assert f"jhansi: warning: {hint}\n" in proc.stderr


@pytest.mark.bwrap
@pytest.mark.parametrize(
    ("code", "kind", "exit_code"),
    [
        ("import quantumflux_helpers\n", "DependencyError", ExitCode.DEPENDENCIES),
        ("print('unclosed'\n", "InputError", ExitCode.INPUT),
    ],
)
def test_run_refusals_are_error_documents(
    project: Path, code: str, kind: str, exit_code: ExitCode
) -> None:
    script = project / "refused.py"
    script.write_text(code)
    proc = jhansi(project, "run", "--json", str(script))
    assert proc.returncode == int(exit_code), proc.stderr
    document = valid_run_document(proc)
    assert document["status"] == "error"
    assert document["error"]["kind"] == kind
    assert document["error"]["exit_code"] == int(exit_code)
    assert document["error"]["hint"]
    assert "error:" in proc.stderr  # the two lines for people still go to stderr


@pytest.mark.bwrap
def test_run_missing_script_and_bad_settings(project: Path) -> None:
    missing = jhansi(project, "run", "--json", str(project / "nope.py"))
    assert missing.returncode == int(ExitCode.INPUT)
    assert valid_run_document(missing)["error"]["kind"] == "InputError"
    bad = jhansi(project, "run", "--json", "--memory", "lots", "-", input="print(1)\n")
    assert bad.returncode == int(ExitCode.USAGE)
    assert valid_run_document(bad)["error"]["kind"] == "ConfigError"


@pytest.mark.bwrap
@pytest.mark.network
def test_run_with_dependencies_validates(project: Path) -> None:
    script = project / "pep723.py"
    shutil.copy(ROOT / "examples" / "pep723.py", script)
    proc = jhansi(project, "run", "--json", str(script))
    assert proc.returncode == 0, proc.stderr
    document = valid_run_document(proc)
    deps = document["dependencies"]
    assert deps["mode"] == "pep723"
    assert [p["name"] for p in deps["locked"]] == ["pyyaml"]
    assert deps["lock_file"] == str(project / "pylock.pep723.toml")
    assert document["stdout"]["text"] == "declared: true\nby: PEP 723\n"


@pytest.mark.bwrap
def test_every_other_json_command_prints_one_document(project: Path) -> None:
    """deps, lock, check, secret, sandbox ls/rm/prune, config show, doctor, ledger
    verify/log/show/head/key."""
    script = project / "hello.py"
    script.write_text("import json\nprint(json.dumps({'ok': True}))\n")
    unresolved = project / "unresolved.py"
    unresolved.write_text("import quantumflux_helpers\n")

    def check(*args: str, code: int = 0, status: str = "ok") -> dict[str, Any]:
        proc = jhansi(project, *args)
        assert proc.returncode == code, (args, proc.stderr)
        document = one_document(proc)
        assert document["status"] == status, (args, document)
        return document

    # before anything ran: no ledger yet
    check("ledger", "log", "--json")
    check("ledger", "head", "--json", code=int(ExitCode.LEDGER), status="error")
    check("sandbox", "ls", "--json")

    run = one_document(jhansi(project, "run", "--json", "--sandbox", "listed", str(script)))
    assert run["status"] == "succeeded"

    deps = check("deps", "--json", str(script))
    assert deps["unresolved"] == []
    refused = check(
        "deps", "--json", str(unresolved), code=int(ExitCode.DEPENDENCIES), status="unresolved"
    )
    assert refused["unresolved"][0]["import"] == "quantumflux_helpers"
    locked = check("lock", "--json", str(script))
    assert locked["lock_file"] is None  # the standard library only: nothing to lock
    check("lock", "--json", str(unresolved), code=int(ExitCode.DEPENDENCIES), status="error")

    listed = check("sandbox", "ls", "--json")
    assert [s["name"] for s in listed["sandboxes"]] == ["listed"]
    check("config", "show", "--json")
    check("config", "show", "--json", "--project", str(project / "missing"))
    doctor = check("doctor", "--json")
    assert "bwrap" in doctor["usable_backends"]

    verified = check("ledger", "verify", "--json")
    assert verified["valid"] is True
    log = check("ledger", "log", "--json")
    assert [r["run_id"] for r in log["runs"]] == [run["run_id"]]
    shown = check("ledger", "show", "--json", run["run_id"])
    assert shown["run_id"] == run["run_id"]
    check("ledger", "show", "--json", "ffff", code=int(ExitCode.USAGE), status="error")
    check("ledger", "head", "--json")
    check("ledger", "key", "--json")

    checked = check("check", "--json", str(script), str(unresolved), code=7, status="error")
    assert [d["status"] for d in checked["scripts"]] == ["ok", "error"]
    check("secret", "ls", "--json")
    check("secret", "rm", "--json", "NOT_STORED", code=int(ExitCode.USAGE), status="error")

    check("sandbox", "rm", "--json", "nobody", code=int(ExitCode.USAGE), status="error")
    check("sandbox", "rm", "--json", "listed")
    check("sandbox", "prune", "--json", "--older-than", "1d")
    check("sandbox", "prune", "--json", "--older-than", "soon", code=2, status="error")
