"""Every ``jhansi run`` leaves a record; tampering with those records is detected."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import absent, run_jhansi


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    (root / "hello.py").write_text("print('hello')\n")
    (root / "slow.py").write_text("import time\ntime.sleep(30)\n")
    (root / "made_up.py").write_text("import quantumflux_helpers\n")
    return root


def _records(ledger: Path) -> list[dict[str, object]]:
    lines = (ledger / "ledger.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines]


def _verify(ledger: Path) -> tuple[int, dict[str, object]]:
    proc = run_jhansi("ledger", "verify", "--json", "--ledger", str(ledger))
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.bwrap
def test_runs_refusals_and_timeouts_are_recorded(
    bwrap_path: Path, project: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    env = {"JHANSI_LEDGER": str(ledger), "JHANSI_SANDBOX_BACKEND": "bwrap"}
    ok = run_jhansi(
        "run",
        "--json",
        "--prompt",
        "say hello",
        "--model",
        "m-1",
        str(project / "hello.py"),
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    run_id = json.loads(ok.stdout)["run_id"]
    refused = run_jhansi("run", str(project / "made_up.py"), env=env)
    assert refused.returncode == 7
    timed_out = run_jhansi("run", "--timeout", "1", str(project / "slow.py"), env=env)
    assert timed_out.returncode == 124

    kinds = [(r["kind"], r["body"].get("run_id")) for r in _records(ledger)]  # type: ignore[union-attr]
    execs = [k for k, _ in kinds if k.startswith("exec.")]
    assert execs == ["exec.start", "exec.end", "exec.denied", "exec.start", "exec.end"]
    records = _records(ledger)
    denied = next(r for r in records if r["kind"] == "exec.denied")["body"]
    assert denied["reason"]["exit_code"] == 7  # type: ignore[index]
    assert denied["unresolved"][0]["import"] == "quantumflux_helpers"  # type: ignore[index]
    ends = [r["body"] for r in records if r["kind"] == "exec.end"]
    assert [e["result"]["status"] for e in ends] == ["succeeded", "timed_out"]  # type: ignore[index]
    start = next(r for r in records if r["kind"] == "exec.start")["body"]
    assert start["actor"]["uid"] == 0 or start["actor"]["uid"] >= 0  # type: ignore[index]
    assert start["sandbox"]["backend"] == "bwrap"  # type: ignore[index]
    assert start["prompt"]["model"] == "m-1"  # type: ignore[index]

    code, report = _verify(ledger)
    assert code == 0, report
    assert report["valid"] is True
    shown = run_jhansi("ledger", "show", run_id, "--ledger", str(ledger))
    assert shown.returncode == 0, shown.stderr
    assert "say hello" in shown.stdout
    assert "print('hello')" in shown.stdout
    log = run_jhansi("ledger", "log", "--json", "--ledger", str(ledger))
    assert log.returncode == 0, log.stderr
    assert len(json.loads(log.stdout)["runs"]) == 3


def _rehash(line: bytes) -> bytes:
    """A record line re-hashed after an edit, as a careful forger would."""
    from jhansi.ledger.record import canonical, record_hash

    obj = json.loads(line)
    obj.pop("hash")
    obj["hash"] = record_hash(canonical(obj))
    return canonical(obj) + b"\n"


TAMPERS = [
    "field-edited",
    "field-edited-and-rehashed",
    "record-deleted",
    "records-swapped",
    "record-duplicated",
    "record-spliced",
    "tail-cut",
    "keys-reordered",
    "whitespace-added",
    "blob-altered",
    "blob-deleted",
]


@pytest.mark.bwrap
@pytest.mark.parametrize("tamper", TAMPERS)
def test_tampering_with_a_run_ledger_is_detected(
    bwrap_path: Path, project: Path, tmp_path: Path, tamper: str
) -> None:
    ledger = tmp_path / "ledger"
    env = {"JHANSI_LEDGER": str(ledger), "JHANSI_SANDBOX_BACKEND": "bwrap"}
    for _ in range(3):
        assert run_jhansi("run", str(project / "hello.py"), env=env).returncode == 0
    code, report = _verify(ledger)
    assert code == 0, report  # untouched, it verifies clean
    path = ledger / "ledger.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    ends = [i for i, line in enumerate(lines) if b'"kind":"exec.end"' in line]
    first, second = ends[0], ends[1]
    if tamper == "field-edited":
        lines[first] = lines[first].replace(b'"succeeded"', b'"failed"')
    elif tamper == "field-edited-and-rehashed":
        lines[first] = _rehash(lines[first].replace(b'"exit_code":0', b'"exit_code":1'))
    elif tamper == "record-deleted":
        del lines[first]
    elif tamper == "records-swapped":
        lines[first - 1], lines[first] = lines[first], lines[first - 1]
    elif tamper == "record-duplicated":
        lines.insert(first, lines[first])
    elif tamper == "record-spliced":
        other = tmp_path / "other-ledger"
        run_jhansi("run", str(project / "hello.py"), env={**env, "JHANSI_LEDGER": str(other)})
        foreign = next(
            x
            for x in (other / "ledger.jsonl").read_bytes().splitlines(keepends=True)
            if b'"kind":"exec.end"' in x
        )
        lines[second] = foreign
    elif tamper == "tail-cut":
        lines = lines[: second + 1]  # the third run's records are gone
    elif tamper == "keys-reordered":
        obj = json.loads(lines[first])
        lines[first] = (
            json.dumps(dict(reversed(obj.items())), separators=(",", ":")).encode() + b"\n"
        )
    elif tamper == "whitespace-added":
        lines[first] = lines[first].replace(b'","', b'", "', 1)
    elif tamper in ("blob-altered", "blob-deleted"):
        digest = json.loads(lines[first])["body"]["stdout"]["blob"]
        blob = next(
            p
            for p in (ledger / "blobs").rglob("*")
            if p.is_file() and p.parent.name + p.name == digest
        )
        if tamper == "blob-deleted":
            blob.unlink()
        else:
            blob.chmod(0o600)
            blob.write_bytes(b"hello, forged\n")
    if not tamper.startswith("blob"):
        path.write_bytes(b"".join(lines))
    code, report = _verify(ledger)
    assert code == 5, report
    assert report["valid"] is False
    named = report["first_error"]  # type: ignore[index]
    assert named["kind"]  # type: ignore[index]
    assert named["message"]  # type: ignore[index]


def test_read_only_ledger_refuses_before_any_sandbox(project: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    # Root ignores mode bits: a read-only mount is what "read-only" means for everyone.
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ledger)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        absent(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        home = tmp_path / "jhansi-home"
        proc = run_jhansi(
            "run",
            "--backend",
            "bwrap",
            str(project / "hello.py"),
            env={"JHANSI_LEDGER": str(ledger), "JHANSI_HOME": str(home)},
        )
    finally:
        subprocess.run(["umount", str(ledger)], check=False)
    assert proc.returncode == 5, proc.stderr
    assert "hello" not in proc.stdout  # the script never ran
    assert "ledger" in proc.stderr
    assert "hint:" in proc.stderr
    assert not (home / "data" / "sandboxes").exists()
