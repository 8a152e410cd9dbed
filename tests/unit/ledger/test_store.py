"""Appending: creation, locking across processes, torn writes, crashes, preflight, modes."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from jhansi.errors import ExitCode, LedgerError
from jhansi.ledger import fsinfo
from jhansi.ledger.record import CHECKPOINT, GENESIS, RECOVERY, parse_line
from jhansi.ledger.store import Ledger
from jhansi.ledger.tail import TORN_MARKER
from jhansi.ledger.verify import verify_ledger
from jhansi.paths import Paths
from tests.unit.ledger.conftest import REPO, lines, record_run, write_lines

OpenLedger = Callable[..., Ledger]


def kinds(report_problems: tuple[object, ...]) -> list[str]:
    return [p.kind for p in report_problems]  # type: ignore[attr-defined]


def test_first_use_writes_genesis_checkpoint_and_head(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        ledger.preflight()
        head = ledger.head()
    records = [parse_line(line.rstrip(b"\n")) for line in lines(ledger_dir)]
    assert [r.kind for r in records] == [GENESIS, CHECKPOINT]
    assert [r.seq for r in records] == [0, 1]
    assert records[1].prev == records[0].hash
    assert head is not None
    assert (head.seq, head.hash) == (1, records[1].hash)
    assert head.problem() is None
    assert records[0].body["created_by"]["uid"] == os.getuid()
    assert verify_ledger(ledger_dir).ok


def test_append_assigns_seq_prev_id_time_hash(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        first = ledger.append("exec.start", {"run_id": "a"})
        second = ledger.append("exec.end", {"run_id": "a", "result": {"duration_ms": 5}})
    assert (first.seq, second.seq) == (2, 3)
    assert second.prev == first.hash
    assert first.ledger_id == second.ledger_id
    assert lines(ledger_dir)[-1] == second.line + b"\n"


def test_a_second_handle_continues_the_same_chain(open_ledger: OpenLedger) -> None:
    with open_ledger() as one, open_ledger() as two:
        a = one.append("exec.start", {"run_id": "a"})
        b = two.append("exec.start", {"run_id": "b"})
        c = one.append("exec.start", {"run_id": "c"})
    assert (a.seq, b.seq, c.seq) == (2, 3, 4)
    assert c.prev == b.hash


def test_a_deleted_lock_file_is_recreated_not_half_held(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as one, open_ledger() as two:
        one.append("test.event", {"n": 1})
        (ledger_dir / "lock").unlink()
        two.append("test.event", {"n": 2})
        one.append("test.event", {"n": 3})  # notices, and locks the new lock file
        assert (ledger_dir / "lock").stat().st_ino == os.fstat(one._lock_fd).st_ino  # type: ignore[arg-type]
    assert verify_ledger(ledger_dir).ok


def test_reserved_kinds_floats_and_huge_records_are_refused(open_ledger: OpenLedger) -> None:
    with open_ledger() as ledger:
        for kind in (GENESIS, RECOVERY, CHECKPOINT):
            with pytest.raises(ValueError, match="written by the ledger itself"):
                ledger.append(kind, {})
        with pytest.raises(TypeError, match="floats"):
            ledger.append("exec.end", {"run_id": "r", "result": {"duration": 1.5}})
        with pytest.raises(ValueError, match="too large"):
            ledger.append("exec.end", {"run_id": "r", "out": "x" * (1 << 20)})
        with pytest.raises(ValueError, match="kind"):
            ledger.append("Exec End", {})
        with pytest.raises(ValueError, match="run_id"):
            ledger.append("exec.start", {"sandbox": "default"})


def test_checkpoint_signs_the_last_record_into_the_head(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1, checkpoint=False)
        head = ledger.checkpoint()
        again = ledger.checkpoint()  # nothing new: the same head
    last = parse_line(lines(ledger_dir)[-1].rstrip(b"\n"))
    assert last.kind == "exec.end"  # no checkpoint record: fewer than 100 records since
    assert (head.seq, head.hash) == (last.seq, last.hash)
    assert again == head
    assert (ledger_dir / "head.json").read_bytes() == head.to_bytes()
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.head is not None
    assert report.head["seq"] == last.seq
    assert report.unsigned_records == 0


def test_checkpoint_records_are_spaced_by_the_interval(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger(checkpoint_interval=10) as ledger:
        for n in range(12):
            record_run(ledger, n)
    checkpoints = [
        parse_line(line.rstrip(b"\n")).seq
        for line in lines(ledger_dir)
        if b'"kind":"checkpoint"' in line
    ]
    # seq 10 and 20 are crossed during runs: a record at the next checkpoint() call
    assert checkpoints == [1, 12, 21]
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.checkpoints == 3
    assert report.unsigned_records == 0


def test_blobs_are_content_addressed_and_checked_on_read(open_ledger: OpenLedger) -> None:
    import blake3

    with open_ledger() as ledger:
        digest = ledger.put_blob(b"hello")
        assert digest == blake3.blake3(b"hello").hexdigest()
        assert ledger.blob_ref(b"hello") == {"blob": digest, "bytes": 5}
        assert ledger.put_blob(b"hello") == digest
        assert ledger.get_blob(digest) == b"hello"
        path = ledger.blobs.path(digest)
        path.write_bytes(b"HELLO")
        with pytest.raises(LedgerError, match="altered"):
            ledger.get_blob(digest)
        assert ledger.put_blob(b"hello") == digest  # an altered copy is replaced
        assert ledger.get_blob(digest) == b"hello"
        path.unlink()
        with pytest.raises(LedgerError, match="missing"):
            ledger.get_blob(digest)


def test_sensitive_files_are_0600_at_open(
    open_ledger: OpenLedger, ledger_dir: Path, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With umask 0 and chmod forbidden, only the mode given to open() can make them 0600."""

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("modes must be set at open(), not fixed afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old = os.umask(0)
    try:
        with open_ledger() as ledger:
            ledger.preflight()
            digest = ledger.put_blob(b"secret prompt")
            ledger.append("exec.start", {"run_id": "r", "prompt": {"blob": digest}})
            ledger.checkpoint()
            blob = ledger.blobs.path(digest)
    finally:
        os.umask(old)
    key = paths.data / "keys" / "ledger-ed25519.pem"
    for path in (ledger_dir / "ledger.jsonl", ledger_dir / "head.json", ledger_dir / "lock"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(blob.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for directory in (ledger_dir, ledger_dir / "blobs", blob.parent, key.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_key_readable_by_others_is_refused(open_ledger: OpenLedger, paths: Paths) -> None:
    with open_ledger() as ledger:
        ledger.preflight()
    key = paths.data / "keys" / "ledger-ed25519.pem"
    key.chmod(0o644)
    with pytest.raises(LedgerError, match="accessible by other users") as caught:
        open_ledger().preflight()
    assert "chmod 600" in caught.value.hint


# -- torn writes ------------------------------------------------------------------------------


def test_a_torn_tail_is_kept_and_recorded_never_dropped(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    size = (ledger_dir / "ledger.jsonl").stat().st_size
    torn = b'{"body":{"run_id":"half a rec'
    with (ledger_dir / "ledger.jsonl").open("ab") as handle:
        handle.write(torn)
    before = verify_ledger(ledger_dir)
    assert before.ok
    assert "torn-tail" in kinds(before.warnings)

    with open_ledger() as ledger:
        record = ledger.append("exec.start", {"run_id": "next"})
    data = (ledger_dir / "ledger.jsonl").read_bytes()
    assert data[size : size + len(torn)] == torn  # still there, where it was
    recovery = parse_line(lines(ledger_dir)[-2].rstrip(b"\n"))
    assert recovery.kind == RECOVERY
    assert recovery.body["offset"] == size
    assert recovery.body["length"] == len(torn)
    import blake3

    assert recovery.body["hash"] == blake3.blake3(torn).hexdigest()
    assert data[size:].startswith(torn + TORN_MARKER)
    assert record.seq == recovery.seq + 1
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.recoveries == 1
    assert "recovered" in kinds(report.warnings)


def test_a_complete_line_missing_only_its_newline_is_still_treated_as_torn(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
        uncommitted = ledger.append("exec.start", {"run_id": "uncommitted"})
    data = (ledger_dir / "ledger.jsonl").read_bytes()
    (ledger_dir / "ledger.jsonl").write_bytes(data[:-1])  # drop only the newline
    with open_ledger() as ledger:
        record = ledger.append("exec.start", {"run_id": "after"})
    assert record.seq == uncommitted.seq + 1  # the recovery took the uncommitted seq
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.recoveries == 1


def test_damage_that_no_crash_makes_stops_appending(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
        ledger.append("exec.start", {"run_id": "last"})
    content = lines(ledger_dir)
    content[-1] = content[-1].replace(b'"last"', b'"LAST"')  # JSON, but the hash is wrong
    write_lines(ledger_dir, content)
    with pytest.raises(LedgerError, match="damaged") as caught:
        open_ledger().append("exec.start", {"run_id": "x"})
    assert caught.value.exit_code == ExitCode.LEDGER


def test_cutting_records_off_stops_appending(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        for n in range(3):
            record_run(ledger, n)
    write_lines(ledger_dir, lines(ledger_dir)[:-4])
    with pytest.raises(LedgerError, match="cut off"):
        open_ledger().append("exec.start", {"run_id": "x"})


def test_a_missing_head_stops_appending(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    (ledger_dir / "head.json").unlink()
    with pytest.raises(LedgerError, match="head"):
        open_ledger().append("exec.start", {"run_id": "x"})


def test_a_deleted_ledger_file_is_not_silently_replaced(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    (ledger_dir / "ledger.jsonl").unlink()
    with pytest.raises(LedgerError, match="deleted"):
        open_ledger().append("exec.start", {"run_id": "x"})


def test_a_crash_while_creating_leaves_a_ledger_that_can_be_created(
    open_ledger: OpenLedger, ledger_dir: Path
) -> None:
    with open_ledger() as ledger:
        ledger.preflight()
    (ledger_dir / "ledger.jsonl").unlink()  # as if the rename never happened
    with open_ledger() as ledger:
        assert ledger.append("exec.start", {"run_id": "x"}).seq == 2
    assert verify_ledger(ledger_dir).ok


# -- crashes at each fault point ----------------------------------------------------------------

APPEND = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from jhansi.ledger.store import Ledger
    from jhansi.paths import Paths

    ledger = Ledger.open(Path(sys.argv[1]), paths=Paths.from_environment())
    action = sys.argv[2]
    if action == "checkpoint":
        ledger.append("test.event", {"n": 1})
        ledger.checkpoint()
    else:
        digest = ledger.put_blob(b"print('crash')")
        ledger.append("exec.start", {"run_id": "crash", "script": {"blob": digest}})
    """
)


def crash(ledger_dir: Path, fault: str, action: str = "append") -> None:
    proc = subprocess.run(
        [sys.executable, "-c", APPEND, str(ledger_dir), action],
        env={**os.environ, "JHANSI_LEDGER_FAULT": fault},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize(
    ("fault", "recovered"),
    [("after-blob", False), ("mid-line", True), ("after-write-before-fsync", False)],
)
def test_killed_while_appending_then_appending_again(
    open_ledger: OpenLedger, ledger_dir: Path, fault: str, recovered: bool
) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    crash(ledger_dir, fault)
    with open_ledger() as ledger:
        record_run(ledger, 2)
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.recoveries == (1 if recovered else 0)
    if fault == "after-write-before-fsync":
        assert "crash" in report.crashed_runs  # the line survived the process
    assert report.last_seq == report.records - 1  # every line but a torn one is a record


def test_killed_twice_during_recovery(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    crash(ledger_dir, "mid-line")
    crash(ledger_dir, "mid-recovery")  # dies half-way through recording the first crash
    interim = verify_ledger(ledger_dir)
    assert interim.ok
    assert "torn-tail" in kinds(interim.warnings)
    with open_ledger() as ledger:
        record_run(ledger, 2)
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.recoveries == 1  # one recovery covers both torn writes


def test_killed_between_checkpoint_and_head(open_ledger: OpenLedger, ledger_dir: Path) -> None:
    with open_ledger() as ledger:
        record_run(ledger, 1)
    crash(ledger_dir, "before-head", "checkpoint")
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors
    assert report.unsigned_records == 1  # the record the crashed run added
    with open_ledger() as ledger:
        head = ledger.checkpoint()
    assert head.seq == parse_line(lines(ledger_dir)[-1].rstrip(b"\n")).seq
    assert verify_ledger(ledger_dir).unsigned_records == 0


def test_an_unknown_fault_point_is_refused(
    ledger_dir: Path, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JHANSI_LEDGER_FAULT", "nowhere")
    with pytest.raises(LedgerError, match="fault injection"):
        Ledger.open(ledger_dir, paths=paths)


# -- concurrency -------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from jhansi.ledger.store import Ledger
    from jhansi.paths import Paths

    ledger = Ledger.open(Path(sys.argv[1]), paths=Paths.from_environment())
    for i in range(25):
        ledger.append("test.event", {"worker": int(sys.argv[2]), "i": i, "pid": os.getpid()})
    """
)


def test_eight_processes_append_one_chain(ledger_dir: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ledger_dir), str(n)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    records = [parse_line(line.rstrip(b"\n")) for line in lines(ledger_dir)]
    assert [r.seq for r in records] == list(range(202))  # genesis, checkpoint, 200 appends
    events = {(r.body["worker"], r.body["i"]) for r in records if r.kind == "test.event"}
    assert events == {(w, i) for w in range(8) for i in range(25)}
    for earlier, later in itertools.pairwise(records):
        assert later.prev == earlier.hash
    report = verify_ledger(ledger_dir)
    assert report.ok, report.errors


# -- preflight ---------------------------------------------------------------------------------


def test_preflight_fails_closed_when_the_directory_cannot_be_made(
    tmp_path: Path, paths: Paths
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(LedgerError) as caught:
        Ledger.open(blocker / "ledger", paths=paths).preflight()
    assert caught.value.exit_code == ExitCode.LEDGER
    assert "cannot create the ledger directory" in caught.value.message
    assert "--ledger" in caught.value.hint


def test_preflight_fails_closed_on_a_read_only_directory(tmp_path: Path, paths: Paths) -> None:
    """Mode bits for a user; for root (who writes through them, as in CI) a read-only mount."""
    import subprocess

    directory = tmp_path / "ro"
    if os.geteuid() == 0:
        directory.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert mounted.returncode == 0, mounted.stderr
        expected = "read-only file system"
    else:
        directory.mkdir(mode=0o500)
        expected = "write access"
    try:
        with pytest.raises(LedgerError, match="cannot") as caught:
            Ledger.open(directory / "ledger", paths=paths).preflight()
        assert expected in caught.value.hint
        assert caught.value.exit_code == ExitCode.LEDGER
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(directory)], check=False)
        else:
            directory.chmod(0o700)


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.EROFS, "read-only file system"),
        (errno.ENOSPC, "Free some space"),
        (errno.EACCES, "write access"),
    ],
)
def test_preflight_says_why_it_cannot_write_and_what_to_do(
    ledger_dir: Path, paths: Paths, monkeypatch: pytest.MonkeyPatch, code: int, hint: str
) -> None:
    from jhansi.ledger import store

    def refuse(path: Path, data: bytes) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store, "write_new_file", refuse)
    with pytest.raises(LedgerError) as caught:
        Ledger.open(ledger_dir, paths=paths).preflight()
    assert caught.value.exit_code == ExitCode.LEDGER
    assert os.strerror(code) in caught.value.message
    assert hint in caught.value.hint


def test_a_failed_write_is_a_ledger_error(
    open_ledger: OpenLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jhansi.ledger import store

    ledger = open_ledger()
    ledger.preflight()

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "_write_all", disk_full)
    with pytest.raises(LedgerError, match="cannot write the ledger") as caught:
        ledger.append("exec.start", {"run_id": "r"})
    assert "Free some space" in caught.value.hint
    monkeypatch.undo()
    assert ledger.append("exec.start", {"run_id": "r"}).seq == 2
    ledger.close()


def test_the_fault_variable_is_not_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from jhansi.config import load_settings

    monkeypatch.setenv("JHANSI_LEDGER_FAULT", "mid-line")
    assert load_settings().ledger.path is None


def test_preflight_refuses_a_network_file_system(
    ledger_dir: Path, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsinfo, "_statfs_magic", lambda path: 0x6969)
    monkeypatch.setattr(fsinfo, "_mount_fstype", lambda path: ("nfs4", "/srv"))
    with pytest.raises(LedgerError, match=r"network file system \(nfs4\)") as caught:
        Ledger.open(ledger_dir, paths=paths).preflight()
    assert "local disk" in caught.value.hint
    assert not ledger_dir.exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("magic", "name", "network"),
    [
        (0x6969, None, "nfs"),
        (0xFF534D42, None, "cifs"),
        (0xFE534D42, "smb3", "smb3"),
        (0x65735546, "fuse.sshfs", "fuse.sshfs"),
        (0xEF53, "ext4", None),
        (0x01021994, "tmpfs", None),
        (None, None, None),
    ],
)
def test_network_file_systems_are_recognised(
    magic: int | None, name: str | None, network: str | None
) -> None:
    assert fsinfo.FsInfo(magic, name, None).network == network


def test_this_machine_s_file_system_is_read(tmp_path: Path) -> None:
    info = fsinfo.filesystem(tmp_path / "not" / "yet")
    assert info.mount_point is not None or info.magic is not None or sys.platform != "linux"


def test_mountinfo_parsing(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:50 / /mnt/my\\040share rw,relatime - cifs //srv/share rw\n"
    )
    assert fsinfo._mount_fstype(Path("/mnt/my share/ledger"), mountinfo) == (
        "cifs",
        "/mnt/my share",
    )
    assert fsinfo._mount_fstype(Path("/home/x"), mountinfo) == ("ext4", "/")


def test_preflight_with_a_healthy_directory_creates_the_ledger(
    ledger_dir: Path, paths: Paths
) -> None:
    Ledger.open(ledger_dir, paths=paths).preflight()
    assert (ledger_dir / "ledger.jsonl").is_file()
    assert not list(ledger_dir.glob(".preflight*"))
    assert not list((ledger_dir / "blobs").glob(".preflight*"))
