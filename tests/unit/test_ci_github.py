"""jhansi.ci.github (escaping, lines, summary, outputs) and jhansi.ci.precommit (selection,
what the lock hook prints).

Documents here have the shapes ``jhansi run --json`` and ``jhansi check --json``
print (jhansi/result.py ``result_document``, jhansi/cli/_output.py
``report_error``); the integration tests feed the real ones.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jhansi.ci import github, precommit
from jhansi.ci.github import (
    Annotation,
    ScriptSource,
    annotations_for,
    escape_data,
    escape_property,
    format_output,
    md,
    outcomes,
    render_summary,
)
from jhansi.ci.precommit import has_script_block, select
from jhansi.errors import ConfigError

SCRIPT = """\
# /// script
# requires-python = ">=3.11"
# dependencies = [
#   "requests==2.19.1",
#   "PyYAML>=6",
# ]
# ///
import json
import yaml
from bs4 import BeautifulSoup

print(json, yaml, BeautifulSoup)
"""

FINDING = {
    "rule": "vulnerability",
    "severity": "deny",
    "package": "requests",
    "version": "2.19.1",
    "id": "PYSEC-2018-28",
    "aliases": ["CVE-2018-18074"],
    "message": "requests 2.19.1 is affected by PYSEC-2018-28 (CVE-2018-18074)",
    "evidence": "offline-osv: sends an Authorization header, 100% of the time",
    "fix": "Require requests>=2.20.0 (fixed in 2.20.0) and re-lock.",
    "ignored": None,
}


def _policy(*findings: dict[str, Any]) -> dict[str, Any]:
    denied = sum(1 for f in findings if f["severity"] == "deny")
    return {
        "ok": not denied,
        "packages": 5,
        "denied": denied,
        "warnings": len(findings) - denied,
        "findings": list(findings),
        "ignored": [],
        "audit": {"status": "ok", "source": "offline-osv"},
    }


def test_escape_data_and_properties() -> None:
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_data("a: b, c") == "a: b, c"
    assert escape_property("dir/a:b,c%\n") == "dir/a%3Ab%2Cc%25%0A"


def test_annotation_command_cannot_be_broken_out_of() -> None:
    forged = Annotation(
        "error",
        "line one\n::set-output name=x::y",
        file="evil,line=9,title=x:y.py",
        line=3,
        title="t: 1, 2",
    )
    command = forged.command()
    assert "\n" not in command
    assert command == (
        "::error file=evil%2Cline=9%2Ctitle=x%3Ay.py,line=3,title=t%3A 1%2C 2"
        "::line one%0A::set-output name=x::y"
    )


def test_lines_prefer_the_pep723_block_then_the_import() -> None:
    source = ScriptSource("tool.py", SCRIPT)
    assert source.line_of("requests") == 4
    assert source.line_of("pyyaml") == 5  # PyYAML, normalized
    assert source.line_of("PyYAML") == 5
    # not declared: where it is imported (bs4 is beautifulsoup4 in the import map)
    assert source.line_of("beautifulsoup4") == 10
    # neither (a transitive dependency): line 1
    assert source.line_of("urllib3") == 1
    assert ScriptSource("x.py", "").line_of("requests") == 1
    assert ScriptSource("x.py", "def (:\n").line_of("requests") == 1


def test_run_decisions_map_imports_first() -> None:
    source = ScriptSource("t.py", "import foo_bar\n")
    known = [{"import": "foo_bar", "requirement": "Foo-Distribution"}]
    assert source.line_of("foo-distribution", known) == 1
    source = ScriptSource("t.py", "\n\nimport foo_bar\n")
    assert source.line_of("foo-distribution", known) == 3


def test_denied_document_gives_error_annotations_on_lines() -> None:
    warn = {**FINDING, "severity": "warn", "package": "urllib3", "id": "unknown-licence"}
    document = {
        "status": "error",
        "error": {"kind": "PolicyDenied", "message": "refused", "hint": "fix", "exit_code": 3},
        "policy": _policy(FINDING, warn),
    }
    [outcome] = outcomes(document, "tool.py")
    assert outcome.status == "denied"
    found = annotations_for(outcome, ScriptSource("tool.py", SCRIPT))
    assert [a.level for a in found] == ["error", "warning"]
    assert found[0].file == "tool.py"
    assert found[0].line == 4
    assert found[1].line == 1
    command = found[0].command()
    assert command.startswith(
        "::error file=tool.py,line=4,title=jhansi policy%3A vulnerability (denied)::"
        "requests 2.19.1: PYSEC-2018-28 (CVE-2018-18074)%0A"
    )
    assert "100%25 of the time" in command


def test_other_errors_and_failures_are_annotated_once() -> None:
    document = {
        "status": "error",
        "error": {"kind": "DependencyError", "message": "--frozen: no lock", "hint": "run x"},
    }
    [outcome] = outcomes(document, "a.py")
    [annotation] = annotations_for(outcome, ScriptSource("a.py", ""))
    assert annotation.command() == "::error file=a.py,title=jhansi::--frozen: no lock%0Arun x"
    [outcome] = outcomes({"status": "failed", "exit_code": 2}, "a.py")
    [annotation] = annotations_for(outcome, ScriptSource("a.py", ""))
    assert annotation.message == "a.py: failed (exit 2)"
    [outcome] = outcomes(None, "a.py")
    assert outcome.status == "error"
    assert "no JSON result" in annotations_for(outcome, ScriptSource("a.py", ""))[0].message


def test_check_documents_have_one_outcome_per_script() -> None:
    document = {
        "status": "denied",
        "scripts": [
            {"script": "a.py", "status": "ok", "locked": [], "policy": _policy()},
            {"script": "b.py", "status": "denied", "locked": [], "policy": _policy(FINDING)},
        ],
    }
    found = outcomes(document, "ignored.py")
    assert [(o.script, o.status) for o in found] == [("a.py", "ok"), ("b.py", "denied")]


def test_markdown_is_inert() -> None:
    assert md("[click](https://evil)") == "\\[click\\]\\(https://evil\\)"
    assert md("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert\\(1\\)\\>"
    assert md("a|b\nc") == "a\\|b c"
    assert github.code("a`b") == "``a`b``"
    assert github.code("x|y") == "`x¦y`"


def _run_document(**extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "status": "succeeded",
        "exit_code": 0,
        "duration_ms": 1234,
        "run_id": "0019abc-def",
        "script": "/w/tool.py",
        "sandbox": "demo-1234",
        "backend": "bwrap",
        "stdout": {"text": "hi\n", "bytes": 3, "truncated": False},
        "stderr": {"text": "", "bytes": 0, "truncated": False},
        "files_changed": [
            {"area": "home", "path": "out/<b>.txt", "change": "added", "size": 5, "blake3": "x"}
        ],
        "dependencies": {
            "lock_file": "/w/pylock.tool.toml",
            "locked": [
                {"name": "requests", "version": "2.19.1"},
                {"name": "urllib3", "version": "1.23"},
            ],
            "imports": [],
        },
        "policy": _policy({**FINDING, "severity": "warn"}),
        "ledger": "/data/ledger",
        "record": "ab",
    }
    document.update(extra)
    return document


HEAD = {"status": "ok", "anchor": "7:abcd", "alg": "ed25519", "key": "k3y", "seq": 7}


def test_summary_of_a_run() -> None:
    [outcome] = outcomes(_run_document(), "tool.py")
    text = render_summary(
        outcome,
        source=ScriptSource("tool.py", SCRIPT),
        exit_code=0,
        head=HEAD,
        sbom="/t/sbom.json",
    )
    assert text.startswith("## jhansi: `tool.py` succeeded\n")
    assert "| **Duration** | 1.23 s |" in text
    assert "| **Run id** | `0019abc-def` |" in text
    assert "| **Sandbox** | demo\\-1234 on bwrap |" in text
    assert "### Dependencies (2 locked)" in text
    assert "| `requests` | `2.19.1` |" in text
    assert "| `urllib3` | `1.23` |" in text
    assert (
        "**Passed**: 0 denied, 1 warning(s), 0 ignored; vulnerability data: offline\\-osv" in text
    )
    assert "PYSEC\\-2018\\-28 \\(CVE\\-2018\\-18074\\)" in text
    assert "| line 4 |" in text
    assert "### Files changed (1)" in text
    assert "| added | home | `out/<b>.txt` | 5 |" in text
    assert "Signed head `7:abcd` (ed25519, key `k3y`)" in text
    assert "jhansi ledger verify --anchor 7:abcd" in text
    assert "| **SBOM** | `/t/sbom.json` |" in text
    # every table row has the same number of cells as its header
    for block in re.findall(r"(?:^\|.*\|\n)+", text, flags=re.M):
        rows = block.strip().split("\n")
        widths = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(widths) == 1, rows


def test_summary_without_head_or_dependencies() -> None:
    document = _run_document(dependencies=None, policy=None, files_changed=[])
    [outcome] = outcomes(document, "t.py")
    text = render_summary(outcome, source=ScriptSource("t.py", ""), exit_code=0, head=None)
    assert "None: the script needs only the standard library." in text
    assert "Not checked" in text
    assert "### Files changed (0)" in text
    assert "No signed head." in text
    error_head = {"status": "error", "error": {"message": "no ledger at /x"}}
    text = render_summary(outcome, source=ScriptSource("t.py", ""), exit_code=0, head=error_head)
    assert "No signed head: no ledger at /x." in text


def test_outputs_are_multiline_safe(tmp_path: Path) -> None:
    text = format_output("run-id", "a\nb")
    name, rest = text.split("<<", 1)
    delimiter, *value, end, tail = rest.split("\n")
    assert name == "run-id"
    assert delimiter.startswith("ghadelimiter_")
    assert (value, end, tail) == (["a", "b"], delimiter, "")
    assert format_output("x", "") != format_output("x", "")  # a fresh delimiter each time
    with pytest.raises(Exception, match="invalid output name"):
        format_output("bad name", "v")


def test_summarize_writes_summary_outputs_and_stops_commands(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    import json

    result.write_text(json.dumps(_run_document(stdout={"text": "::error::forged\n"})))
    summary, outputs = tmp_path / "summary.md", tmp_path / "output"
    out = io.StringIO()
    code = github.summarize(
        result=result,
        script=str(tmp_path / "tool.py"),
        exit_code=0,
        sbom=None,
        workspace=tmp_path,
        head=HEAD,
        environ={"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs)},
        out=out,
    )
    assert code == 0
    log = out.getvalue().splitlines()
    start = log.index(next(line for line in log if line.startswith("::stop-commands::")))
    token = log[start].removeprefix("::stop-commands::")
    assert log[start + 1] == "::error::forged"
    assert log[start + 2] == f"::{token}::"
    assert "## jhansi: `tool.py` succeeded" in summary.read_text()
    written = outputs.read_text()
    for name, value in (("exit-code", "0"), ("run-id", "0019abc-def"), ("ledger-head", "7:abcd")):
        assert re.search(rf"^{name}<<(\S+)\n{re.escape(value)}\n\1$", written, re.M), written


def test_split_args(capsys: pytest.CaptureFixture[str]) -> None:
    assert github.main(["split-args", "\"a b\" 'c$(id)' `x` --flag"]) == 0
    assert capsys.readouterr().out == "a b\0c$(id)\0`x`\0--flag\0"
    assert github.main(["split-args", '"unclosed']) == 2
    assert capsys.readouterr().out.startswith("::error title=jhansi action::args input")


def test_install_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nvulnerabilities = "warn"\n')
    config_home = tmp_path / "config-home"
    placed = github.install_policy(policy, config_home, {"HOME": str(tmp_path)})
    assert placed == config_home.absolute() / "jhansi" / "config.toml"
    assert placed.read_text() == policy.read_text()
    # under JHANSI_HOME, XDG_CONFIG_HOME is not read: the file goes where jhansi looks
    home = tmp_path / "jh"
    placed = github.install_policy(policy, config_home, {"JHANSI_HOME": str(home)})
    assert placed == home / "config" / "config.toml"
    (home / "config" / "config.toml").write_text("[sandbox]\n")
    with pytest.raises(ConfigError, match="already exists"):
        github.install_policy(policy, config_home, {"JHANSI_HOME": str(home)})
    policy.write_text("[policy]\nvulnerabilites = 1\n")
    with pytest.raises(ConfigError, match="did you mean 'vulnerabilities'"):
        github.install_policy(policy, config_home, {"HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="does not exist"):
        github.install_policy(tmp_path / "nope.toml", config_home, {})


def test_precommit_selects_scripts(tmp_path: Path) -> None:
    script = tmp_path / "tool.py"
    script.write_text(SCRIPT)
    module = tmp_path / "module.py"
    module.write_text("import os\n")
    other = tmp_path / "other.py"
    other.write_text("# /// pyproject\n# x = 1\n# ///\n")
    binary = tmp_path / "bin.py"
    binary.write_bytes(b"\xff\xfe")
    names = [str(p) for p in (script, module, other, binary, tmp_path / "gone.py")]
    assert select(names) == [str(script)]
    assert select(names, include=r"module\.py$") == [str(script), str(module)]
    assert has_script_block(SCRIPT)
    assert not has_script_block("# /// script\n# dependencies = []\n")  # unclosed


def test_the_lock_hook_prints_an_error_once_naming_the_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real ``jhansi lock`` (a subprocess), refusing a script it cannot parse."""
    broken = tmp_path / "broken.py"
    broken.write_text("# /// script\n# dependencies = []\n# ///\nx = (\n")
    assert precommit.main(["lock", str(broken)]) == 6
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"{broken}: error: ")
    assert "syntax error" in lines[0]
    assert lines[1].startswith(f"{broken}: hint: ")
    assert err.count("syntax error") == 1


def test_the_lock_hook_says_what_the_json_says_when_jhansi_said_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A jhansi that failed without a word on stderr (a crash cannot be provoked on
    demand, so its result is made up here): the hook still says why, once."""
    script = tmp_path / "tool.py"
    script.write_text("# /// script\n# dependencies = []\n# ///\n")
    document = '{"status": "error", "error": {"message": "it broke", "hint": "try again"}}'
    monkeypatch.setattr(
        precommit,
        "_jhansi",
        lambda *args, capture=False: subprocess.CompletedProcess(args, 7, document, ""),
    )
    assert precommit.main(["lock", str(script)]) == 7
    assert capsys.readouterr().err == f"{script}: error: it broke\n{script}: hint: try again\n"
