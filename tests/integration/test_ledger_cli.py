"""``jhansi ledger`` as a real subprocess, on a ledger written through the library."""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jhansi.ledger.checkpoint import KeyFileSigner, key_path
from jhansi.ledger.layout import default_directory
from jhansi.ledger.record import make_record, parse_line
from jhansi.ledger.store import Ledger
from jhansi.paths import Paths
from tests.conftest import backend_env, run_jhansi


def _write_runs(directory: Path, paths: Paths, count: int, script: str = "a.py") -> list[str]:
    run_ids = []
    with Ledger.open(directory, paths=paths) as ledger:
        ledger.preflight()
        for n in range(count):
            run_id = f"{1_700_000_000_000 + n:013x}-{n:016x}"
            code = ledger.put_blob(f"print({n})\n".encode())
            ledger.append(
                "exec.start",
                {"run_id": run_id, "sandbox": "default", "script": {"path": script, "blob": code}},
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


def test_log_to_a_file_or_a_pipe_is_one_whole_line_per_run(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    script = "examples/" + "a_script_name_long_enough_to_wrap_at_eighty_columns" * 2 + ".py"
    run_ids = _write_runs(directory, Paths.from_environment(), 2, script=script)
    proc = run_jhansi("ledger", "log", "--ledger", str(directory))  # stdout is a pipe
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 + len(run_ids), proc.stdout  # title, header, one line per run
    for line, run_id in zip(lines[2:], run_ids, strict=True):
        assert run_id in line  # whole, not shortened for a narrow terminal
        assert script in line
        assert line.split()[-2:] == ["succeeded", "0"]
    # A width the user chose still applies.
    narrow = run_jhansi("ledger", "log", "--ledger", str(directory), env={"COLUMNS": "80"})
    assert len(narrow.stdout.splitlines()) > len(lines)
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80


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
    matched = run_jhansi("ledger", "verify", "--ledger", str(directory), "--anchor", anchor)
    assert matched.returncode == 0, matched.stderr
    assert f"anchor matches: {anchor} (the ledger still holds that record" in matched.stdout
    plain = run_jhansi("ledger", "verify", "--ledger", str(directory))
    assert "anchor" not in plain.stdout

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
    cut = run_jhansi("ledger", "verify", "--ledger", str(directory), "--anchor", anchor)
    assert cut.returncode == 5
    assert "anchor matches" not in cut.stdout


def test_no_ledger_is_exit_5_with_a_hint(tmp_path: Path) -> None:
    proc = run_jhansi("ledger", "verify", "--ledger", str(tmp_path / "nowhere"))
    assert proc.returncode == 5
    assert "no ledger at" in proc.stderr
    assert "hint:" in proc.stderr


# -- the ledger never signs what it did not write (real runs on bwrap) --------------------


def _real_run(script: Path, ledger: Path) -> subprocess.CompletedProcess[str]:
    env = {"JHANSI_LEDGER": str(ledger), **backend_env("bwrap")}
    return run_jhansi("run", "--json", str(script), env=env, timeout=240)


def _forge(directory: Path, count: int) -> list[int]:
    """Append records as someone without the key: with the library, the chain recomputed."""
    last = parse_line((directory / "ledger.jsonl").read_bytes().splitlines()[-1])
    seqs = []
    with (directory / "ledger.jsonl").open("ab") as out:
        for n in range(count):
            record = make_record(
                ledger_id=last.ledger_id,
                seq=last.seq + 1,
                prev=last.hash,
                kind="exec.start" if n % 2 == 0 else "exec.end",
                body={
                    "run_id": "0000000000000-f0f0f0f0f0f0f0f0",
                    "result": {"status": "succeeded", "exit_code": 0},
                    "script": {"path": "innocent.py"},
                },
            )
            out.write(record.line + b"\n")
            seqs.append(record.seq)
            last = record
    return seqs


@pytest.mark.bwrap
def test_a_forged_tail_is_reported_and_not_signed_by_the_next_run(
    bwrap_path: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    first = _real_run(script, ledger)
    assert first.returncode == 0, first.stderr
    forged = _forge(ledger, 2)

    second = _real_run(script, ledger)
    assert second.returncode == 0, second.stderr
    report = _json(("ledger", "verify", "--ledger", str(ledger)), 5)
    assert report["first_error"]["kind"] == "unsigned-records"  # type: ignore[index]
    assert report["first_error"]["seq"] == forged[0]  # type: ignore[index]
    assert report["summary"]["unsigned_ranges"] == [[forged[0], forged[-1]]]  # type: ignore[index]
    head = json.loads((ledger / "head.json").read_bytes())
    assert all(not (a <= forged[0] <= b) for a, b in head["ranges"])
    human = run_jhansi("ledger", "verify", "--ledger", str(ledger))
    assert human.returncode == 5
    assert f"seq {forged[0]}-{forged[1]}" in human.stdout


@pytest.mark.bwrap
@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_run_refuses_a_ledger_signed_by_another_key(
    bwrap_path: Path, tmp_path: Path, change: str
) -> None:
    ledger = tmp_path / "ledger"
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    assert _real_run(script, ledger).returncode == 0
    key = key_path(Paths.from_environment())
    if change == "removed":
        key.unlink()
    else:
        other = tmp_path / "other.pem"
        KeyFileSigner(other).prepare()
        other.replace(key)
    before = (ledger / "ledger.jsonl").read_bytes()

    proc = _real_run(script, ledger)
    assert proc.returncode == 5, (proc.stdout, proc.stderr)
    assert "hello" not in proc.stdout  # nothing ran
    message = json.loads(proc.stdout)["error"] if proc.stdout.strip() else None
    human = run_jhansi(
        "run", str(script), env={"JHANSI_LEDGER": str(ledger), **backend_env("bwrap")}
    )
    assert human.returncode == 5
    lines = [line for line in human.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, human.stderr
    assert "key" in lines[0]
    assert "hint:" in lines[1]
    assert "Restore" in lines[1]
    assert "--ledger" in lines[1]
    assert (ledger / "ledger.jsonl").read_bytes() == before  # nothing appended
    assert message is None or "key" in json.dumps(message)
    assert (change == "removed") != key.exists()  # no new key was made


@pytest.mark.bwrap
def test_a_run_never_appends_through_a_linked_ledger_file(bwrap_path: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    assert _real_run(script, ledger).returncode == 0
    planted = tmp_path / "planted.jsonl"
    (ledger / "ledger.jsonl").rename(planted)
    (ledger / "ledger.jsonl").symlink_to(planted)
    before = planted.read_bytes()
    proc = run_jhansi(
        "run", str(script), env={"JHANSI_LEDGER": str(ledger), **backend_env("bwrap")}
    )
    assert proc.returncode == 5
    assert "symbolic link" in proc.stderr
    assert "hint:" in proc.stderr
    assert planted.read_bytes() == before


def _on_a_terminal(*args: str) -> str:
    """``jhansi ARGS`` with its stdout on a pseudo-terminal; what the terminal received."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jhansi", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(follower)
    received = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        received += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else b""
    return received.decode("utf-8")


@pytest.mark.bwrap
def test_ledger_show_escapes_what_the_script_printed_on_a_terminal(
    bwrap_path: Path, tmp_path: Path
) -> None:
    hostile = (
        "\x1b[2J\x1b[H"  # clear the screen
        "\x1b]8;;https://example.invalid/\x07click\x1b]8;;\x07"  # an OSC 8 hyperlink
        "\x07"  # bell
        "\x9b31m\x9d0;title\x9c"  # C1 CSI and OSC
        "\r\u202eevil\x7f"
    )
    script = tmp_path / "evil \x1b[31mname.py"
    script.write_text(f"import sys\nsys.stdout.write({hostile!r})\n")
    ledger = tmp_path / "ledger"
    proc = _real_run(script, ledger)
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]

    for args in (
        ("ledger", "show", run_id, "--ledger", str(ledger)),
        ("ledger", "log", "--ledger", str(ledger)),
        ("ledger", "export", "--ledger", str(ledger)),
        ("ledger", "export", "--format", "records", "--ledger", str(ledger)),
        ("ledger", "export", "--format", "csv", "--ledger", str(ledger)),
    ):
        shown = _on_a_terminal(*args)
        for control in ("\x07", "\x9b", "\x9d", "\x9c", "\u202e", "\x7f"):
            assert control not in shown, (args, control)
        # Rich styles the output (its own SGR codes); none of the script's may survive.
        assert "\x1b[2J" not in shown
        assert "\x1b]8;;https" not in shown
        assert "\x1b[31m" not in shown
        assert "\\x1b[31mname.py" in shown or "\\u001b[31mname.py" in shown, args
    shown = _on_a_terminal("ledger", "show", run_id, "--ledger", str(ledger))
    assert "\\x1b[2J" in shown
    assert "\\x07" in shown
    assert "\\x9b31m" in shown

    exact = _json(("ledger", "show", run_id, "--ledger", str(ledger)), 0)
    texts = {b["label"]: b["text"] for b in exact["blobs"]}  # type: ignore[union-attr]
    assert texts["stdout"] == hostile
