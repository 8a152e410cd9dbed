"""``jhansi ledger`` as a real subprocess, on a ledger written through the library."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from jhansi.ledger.store import Ledger, default_directory
from jhansi.paths import Paths
from tests.conftest import run_jhansi


def _write_runs(directory: Path, paths: Paths, count: int) -> list[str]:
    run_ids = []
    with Ledger.open(directory, paths=paths) as ledger:
        ledger.preflight()
        for n in range(count):
            run_id = f"{1_700_000_000_000 + n:013x}-{n:016x}"
            code = ledger.put_blob(f"print({n})\n".encode())
            ledger.append(
                "exec.start",
                {"run_id": run_id, "sandbox": "default", "script": {"path": "a.py", "blob": code}},
            )
            ledger.append(
                "exec.end",
                {"run_id": run_id, "result": {"status": "succeeded", "exit_code": 0}},
            )
            ledger.checkpoint()
            run_ids.append(run_id)
    return run_ids


def _json(args: tuple[str, ...], code: int) -> dict[str, object]:
    proc = run_jhansi(*args, "--json", timeout=120)
    assert proc.returncode == code, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    document = json.loads(proc.stdout)  # exactly one document
    assert isinstance(document, dict)
    return document


def test_read_and_verify_the_default_ledger(tmp_path: Path) -> None:
    paths = Paths.from_environment()
    directory = default_directory(paths)
    run_ids = _write_runs(directory, paths, 3)

    report = _json(("ledger", "verify"), 0)
    assert report["status"] == "ok"
    assert report["path"] == str(directory)
    runs = _json(("ledger", "log"), 0)["runs"]
    assert [r["run_id"] for r in runs] == run_ids  # type: ignore[union-attr, index]
    show = run_jhansi("ledger", "show", run_ids[1][:20])
    assert show.returncode == 0
    assert "print(1)" in show.stdout
    out = tmp_path / "ledger.csv"
    export = run_jhansi("ledger", "export", "--format", "csv", "--output", str(out))
    assert export.returncode == 0, export.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(out.read_text().splitlines()) == 1 + 2 + 3 * 2  # header, genesis, checkpoint
    key = run_jhansi("ledger", "key")
    assert key.returncode == 0
    assert len(key.stdout.strip()) == 64


def test_tampering_is_exit_5_as_a_subprocess(tmp_path: Path) -> None:
    paths = Paths.from_environment()
    directory = tmp_path / "ledger"
    _write_runs(directory, paths, 2)
    older_head = (directory / "head.json").read_bytes()
    _write_runs(directory, paths, 1)
    ledger_file = directory / "ledger.jsonl"
    pristine = ledger_file.read_bytes()
    anchor = _json(("ledger", "head", "--ledger", str(directory)), 0)["anchor"]
    assert isinstance(anchor, str)

    ledger_file.write_bytes(pristine.replace(b'"exit_code":0', b'"exit_code":7', 1))
    report = _json(("ledger", "verify", "--ledger", str(directory)), 5)
    assert report["status"] == "invalid"
    assert report["first_error"]["kind"] == "bad-hash"  # type: ignore[index]
    human = run_jhansi("ledger", "verify", "--ledger", str(directory))
    assert human.returncode == 5
    assert "does NOT verify" in human.stdout

    # Cut the last run off and put the head before it back: only the anchor tells.
    ledger_file.write_bytes(b"".join(pristine.splitlines(keepends=True)[:-2]))
    (directory / "head.json").write_bytes(older_head)
    assert _json(("ledger", "verify", "--ledger", str(directory)), 0)["status"] == "ok"
    report = _json(("ledger", "verify", "--ledger", str(directory), "--anchor", anchor), 5)
    assert report["first_error"]["kind"] == "truncated"  # type: ignore[index]


def test_no_ledger_is_exit_5_with_a_hint(tmp_path: Path) -> None:
    proc = run_jhansi("ledger", "verify", "--ledger", str(tmp_path / "nowhere"))
    assert proc.returncode == 5
    assert "no ledger at" in proc.stderr
    assert "hint:" in proc.stderr
