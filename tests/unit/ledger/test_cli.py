"""``jhansi ledger`` in-process: verify, log, show, export, head, key."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jhansi.ledger.store import Ledger
from jhansi.paths import Paths
from tests.unit.cli.conftest import Invoke
from tests.unit.ledger.conftest import lines, record_run, write_lines


def test_verify_clean(cli: Invoke, populated: Path) -> None:
    result = cli("ledger", "verify", "--ledger", str(populated))
    assert result.code == 0, result.stderr
    assert "ledger verifies" in result.stdout
    assert "17 record(s)" in result.stdout


def test_verify_json_is_one_document(cli: Invoke, populated: Path) -> None:
    result = cli("ledger", "verify", "--ledger", str(populated), "--json")
    assert result.code == 0
    document = json.loads(result.stdout)
    assert document["status"] == "ok"
    assert document["valid"] is True
    assert document["summary"]["runs"] == 5
    assert document["warnings"] == []  # this machine's key pins the signatures


def test_verify_tampered_exits_5_and_names_the_failure(cli: Invoke, populated: Path) -> None:
    content = lines(populated)
    content[3] = content[3].replace(b'"exit_code":0', b'"exit_code":1')
    write_lines(populated, content)
    result = cli("ledger", "verify", "--ledger", str(populated))
    assert result.code == 5
    assert "does NOT verify" in result.stdout
    assert "line 4" in result.stdout
    assert "bad-hash" in result.stdout
    result = cli("ledger", "verify", "--ledger", str(populated), "--json")
    assert result.code == 5
    document = json.loads(result.stdout)
    assert document["status"] == "invalid"
    assert document["first_error"]["kind"] == "bad-hash"
    assert document["first_error"]["line"] == 4


def test_verify_without_a_ledger(cli: Invoke, tmp_path: Path) -> None:
    result = cli("ledger", "verify", "--ledger", str(tmp_path / "none"), "--json")
    assert result.code == 5
    document = json.loads(result.stdout)
    assert document["status"] == "error"
    assert "no ledger" in document["error"]["message"]


def test_the_ledger_location_comes_from_the_environment(
    cli: Invoke, populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JHANSI_LEDGER", str(populated))
    result = cli("ledger", "log", "--json")
    assert json.loads(result.stdout)["ledger"] == str(populated)
    assert len(json.loads(result.stdout)["runs"]) == 5


def test_the_default_location_is_in_the_data_directory(cli: Invoke, paths: Paths) -> None:
    with Ledger.open(paths.data / "ledger", paths=paths) as ledger:
        record_run(ledger, 1)
    result = cli("ledger", "verify", "--json")
    assert result.code == 0
    assert json.loads(result.stdout)["path"] == str(paths.data / "ledger")


def test_log(cli: Invoke, populated: Path) -> None:
    result = cli("ledger", "log", "--ledger", str(populated))
    assert result.code == 0
    assert "succeeded" in result.stdout
    assert "times in UTC" in result.stdout
    runs = json.loads(cli("ledger", "log", "--ledger", str(populated), "--json").stdout)["runs"]
    assert [r["script"] for r in runs] == [f"script_{n}.py" for n in range(5)]
    other = cli("ledger", "log", "--ledger", str(populated), "--sandbox", "other", "--json")
    assert len(json.loads(other.stdout)["runs"]) == 3
    future = cli("ledger", "log", "--ledger", str(populated), "--since", "2999-01-01")
    assert "no runs recorded" in future.stdout
    assert cli("ledger", "log", "--ledger", str(populated), "--since", "soon").code == 2


def test_show(cli: Invoke, populated: Path) -> None:
    runs = json.loads(cli("ledger", "log", "--ledger", str(populated), "--json").stdout)["runs"]
    run_id = runs[1]["run_id"]
    result = cli("ledger", "show", run_id, "--ledger", str(populated))
    assert result.code == 0
    assert "print the number 1" in result.stdout
    assert "print(1)" in result.stdout
    document = json.loads(
        cli("ledger", "show", run_id, "--ledger", str(populated), "--json").stdout
    )
    assert [r["kind"] for r in document["records"]] == ["exec.start", "exec.end"]
    assert {b["label"]: b["text"] for b in document["blobs"]}["code"] == "print(1)\n"
    assert cli("ledger", "show", "nope", "--ledger", str(populated)).code == 2


def test_export(cli: Invoke, populated: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    result = cli("ledger", "export", "--ledger", str(populated), "--format", "csv", "-o", str(out))
    assert result.code == 0
    assert "exported 17 record(s)" in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().startswith("seq,time,kind,run_id")
    result = cli("ledger", "export", "--ledger", str(populated), "--format", "records")
    assert result.stdout.encode() == b"".join(lines(populated))
    assert cli("ledger", "export", "--ledger", str(populated), "--format", "xml").code == 2


def test_head_and_anchor(cli: Invoke, populated: Path, paths: Paths) -> None:
    older = (populated / "head.json").read_bytes()
    with Ledger.open(populated, paths=paths, checkpoint_interval=1) as ledger:
        record_run(ledger, 7)
    head = json.loads(cli("ledger", "head", "--ledger", str(populated), "--json").stdout)
    assert head["status"] == "ok"
    assert head["anchor"] == f"{head['seq']}:{head['hash']}"
    assert head["seq"] == len(lines(populated)) - 1
    human = cli("ledger", "head", "--ledger", str(populated))
    assert f"anchor  {head['anchor']}" in human.stdout
    ok = cli("ledger", "verify", "--ledger", str(populated), "--anchor", head["anchor"])
    assert ok.code == 0
    write_lines(populated, lines(populated)[:-3])
    (populated / "head.json").write_bytes(older)  # the head before that run, put back
    cut = cli("ledger", "verify", "--ledger", str(populated), "--anchor", head["anchor"], "--json")
    assert cut.code == 5
    assert json.loads(cut.stdout)["first_error"]["kind"] == "truncated"
    assert cli("ledger", "verify", "--ledger", str(populated), "--anchor", "12").code == 2


def test_key(cli: Invoke, paths: Paths, populated: Path) -> None:
    result = cli("ledger", "key")
    assert result.code == 0
    public = result.stdout.strip()
    assert len(public) == 64
    pem = cli("ledger", "key", "--pem").stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    document = json.loads(cli("ledger", "key", "--json").stdout)
    assert document["public_key"] == public
    assert stat.S_IMODE(Path(document["key_file"]).stat().st_mode) == 0o600
    pinned = cli("ledger", "verify", "--ledger", str(populated), "--key", public)
    assert pinned.code == 0
    wrong = cli("ledger", "verify", "--ledger", str(populated), "--key", "ab" * 32, "--json")
    assert wrong.code == 5
    assert json.loads(wrong.stdout)["first_error"]["kind"] == "untrusted-key"
    assert cli("ledger", "verify", "--ledger", str(populated), "--key", "nonsense").code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["ledger", "--help"],
        ["ledger", "log"],
        # --format jsonl verifies the ledger (its signatures need cryptography).
        ["ledger", "export", "--format", "records"],
        ["ledger", "export", "--format", "csv"],
    ],
)
def test_reading_commands_import_no_cryptography(argv: list[str], populated: Path) -> None:
    args = [*argv, "--ledger", str(populated)] if argv[-1] != "--help" else argv
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jhansi", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "jhansi" in imported
    assert "cryptography" not in imported
