"""Ledger speed: verification throughput and append latency (including fsync).

Run: ``uv run --frozen python bench/ledger.py [--records N] [--repeat N] [--appends N]
[--dir DIR] [--start-bytes N --end-bytes N]``.

1. Writes a synthetic ledger of N records (default 1,000,000) as the ledger
   writes them: pairs of ``exec.start`` / ``exec.end``, each tagged with its
   ``ledger_mac``, a signed ``checkpoint`` record every ``--checkpoint-every``
   records (default: the ledger's own interval, 100; each costs an Ed25519
   verification), and a signed head. Bodies are small by default (about 390
   bytes a record on average, the size the speed target was set for);
   ``--start-bytes 2400 --end-bytes 1400`` grows them to a real run's size.
   Then times ``verify_ledger`` on it, with its default parallel first stage
   and in one process, best of ``--repeat`` (default 3: the machine may be
   busy; the load average is printed). Target: at least 100,000 records/s.
2. Appends ``--appends`` records (default 500) through :class:`Ledger` into a
   fresh ledger in ``--dir`` (default: a temporary directory, which is where the
   ledger's disk matters: pass a directory on the disk you care about) and
   prints the median latency of one ``append`` (lock, write, fdatasync).
   Target: at most 5 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from jhansi.ledger.checkpoint import (
    MAC_MEMBER,
    KeyFileSigner,
    checkpoint_body,
    record_mac,
    sign_head,
)
from jhansi.ledger.layout import HEAD_FILE, LEDGER_FILE, LedgerLayout
from jhansi.ledger.record import (
    CHECKPOINT,
    GENESIS,
    ZERO_HASH,
    Digest,
    LedgerId,
    canonical,
    make_record,
    record_hash,
)
from jhansi.ledger.store import CHECKPOINT_INTERVAL, Ledger


def _line(ledger_id: str, seq: int, prev: str, kind: str, body: dict[str, object]) -> bytes:
    unhashed = {
        "body": body,
        "kind": kind,
        "ledger_id": ledger_id,
        "prev": prev,
        "seq": seq,
        "time": _time(seq),
        "v": 1,
    }
    digest = record_hash(canonical(unhashed))
    return canonical({**unhashed, "hash": digest})


def _time(seq: int) -> str:
    return f"2025-01-01T00:00:{seq % 60:02d}.{seq % 1000000:06d}Z"


def _pad(body: dict[str, object], size: int) -> dict[str, object]:
    """``body`` grown to about ``size`` bytes of canonical JSON with nested, real-looking
    members (what a real run's exec.start/exec.end hold: settings, limits, policy)."""
    grown = dict(body)
    n = 0
    while len(canonical(grown)) < size:
        grown.setdefault("sandbox_details", {})[f"setting_{n:02d}"] = {  # type: ignore[index]
            "value": f"cgroup v2 limit {n} applied to the sandbox's processes",
            "enforced": n % 2 == 0,
            "n": n,
        }
        n += 1
    return grown


# Placeholders in a body template, replaced per record (a quoted one by a bare integer).
_RUN, _INT, _MAC = "@RUN@", "@INT@", "@MAC@"


class _Template:
    """The canonical bytes of one kind's body, made once: each record only fills in its
    run id, a small integer and its ``ledger_mac`` (re-encoding a dict per record made
    writing a million records take minutes)."""

    def __init__(self, kind: str, body: dict[str, object], size: int) -> None:
        self.kind = kind.encode()
        grown = _pad(body, size)
        self.plain = canonical(grown)  # what the tag covers: the body without ledger_mac
        self.tagged = canonical({**grown, MAC_MEMBER: _MAC})
        # The tag is keyed BLAKE3 over the record without hash and without ledger_mac;
        # record_mac recomputed here for every record, as the ledger does on append.

    def line(self, mac_key: bytes, ledger_id: bytes, seq: int, prev: bytes, run: int) -> bytes:
        run_id = f"{run:013x}-{run * 7919:016x}".encode()
        number = b"%d" % (run % 3)

        def fill(template: bytes) -> bytes:
            return template.replace(_RUN.encode(), run_id).replace(
                b'"' + _INT.encode() + b'"', number
            )

        rest = b',"kind":"%s","ledger_id":"%s","prev":"%s","seq":%d,"time":"%s","v":1}' % (
            self.kind,
            ledger_id,
            prev,
            seq,
            _time(seq).encode(),
        )
        mac = record_mac(mac_key, b'{"body":' + fill(self.plain) + rest).encode()
        body = fill(self.tagged).replace(_MAC.encode(), mac)
        digest = record_hash(b'{"body":' + body + rest).encode()
        return b'{"body":' + body + b',"hash":"' + digest + b'"' + rest


def write_synthetic(
    directory: Path,
    records: int,
    every: int,
    signer: KeyFileSigner,
    sizes: tuple[int, int] = (0, 0),
) -> None:
    """A valid ledger of ``records`` records in ``directory``: what the ledger writes (exec
    records tagged with ``ledger_mac``, signed checkpoints, a signed head)."""
    directory.mkdir(parents=True, exist_ok=True)
    ledger_id = LedgerId(os.urandom(16).hex())
    lid = ledger_id.encode()
    mac_key = signer.mac_key()
    # The default (sizes 0) is the measurement: about 386 bytes a record on
    # average, now with the 47-byte ledger_mac member every append carries, and each body
    # still holding a nested object (as real ones do) to keep the decoder's work alike.
    start = _Template("exec.start", {"run_id": _RUN, "script": {"path": "t.py"}}, sizes[0])
    end = _Template("exec.end", {"result": {"exit_code": _INT}, "run_id": _RUN}, sizes[1])
    genesis = make_record(
        ledger_id=ledger_id, seq=0, prev=ZERO_HASH, kind=GENESIS, body={"format": "bench"}
    )
    prev = genesis.hash
    with (directory / LEDGER_FILE).open("wb") as out:
        out.write(genesis.line + b"\n")
        run = 0
        running = False  # an exec.start waits for its exec.end
        since = 0  # records since the last checkpoint
        for seq in range(1, records):
            since += 1
            if not running and since >= every:
                body = checkpoint_body(signer, ledger_id, seq, prev, ((0, seq - 1),))
                line = _line(ledger_id, seq, prev, CHECKPOINT, body)
                since = 0
            elif not running:
                run += 1
                running = True
                line = start.line(mac_key, lid, seq, prev.encode(), run)
            else:
                running = False
                line = end.line(mac_key, lid, seq, prev.encode(), run)
            prev = Digest(line[line.rfind(b'"hash":"') + 8 :][:64].decode())
            out.write(line + b"\n")
    head = sign_head(signer, ledger_id, records - 1, prev, ((0, records - 1),))
    (directory / HEAD_FILE).write_bytes(head.to_bytes())


def bench_verify(
    records: int,
    every: int,
    workdir: Path,
    signer: KeyFileSigner,
    sizes: tuple[int, int],
    repeat: int = 3,
) -> None:
    """Write and verify; print records/s."""
    from jhansi.ledger.verify import verify_ledger

    directory = workdir / "synthetic"
    started = time.perf_counter()
    write_synthetic(directory, records, every, signer, sizes)
    size = (directory / LEDGER_FILE).stat().st_size
    print(
        f"wrote {records:,} records ({size / 1e6:.0f} MB, {size / records:.0f} bytes a "
        f"record on average, checkpoint every {every}) in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    for workers, label in ((None, "default (parallel stage one)"), (1, "one process")):
        best = cpu = float("inf")
        for _ in range(repeat):
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            report = verify_ledger(
                directory, trusted_keys={signer.public_key().hex()}, workers=workers
            )
            best = min(best, time.perf_counter() - started)
            cpu = min(cpu, _cpu_seconds() - cpu_started)
            if not report.ok:
                raise SystemExit(f"the synthetic ledger does not verify: {report.errors[:3]}")
        rate = report.records / best
        print(
            f"verify, {label}: {report.records:,} records in {best:.2f} s (best of {repeat}) = "
            f"{rate:,.0f} records/s (target >= 100,000) "
            f"{'OK' if rate >= 100_000 else 'BELOW TARGET'}; {cpu:.2f} CPU-s in all "
            f"({report.records / cpu:,.0f} records per CPU-second: what other load on the "
            f"machine changes least); load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (stage one's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_append(count: int, directory: Path, signer: KeyFileSigner) -> None:
    """Append ``count`` records; print the median latency."""
    ledger = Ledger(LedgerLayout(directory), signer=signer, actor={"user": "bench"})
    ledger.preflight()
    body = {
        "run_id": "0000000000000-0000000000000000",
        "sandbox": "default",
        "script": {"path": "scripts/task.py"},
    }
    times = []
    for _ in range(count):
        started = time.perf_counter()
        ledger.append("exec.start", body)
        times.append(time.perf_counter() - started)
    ledger.close()
    median = statistics.median(times) * 1000
    p95 = statistics.quantiles(times, n=20)[-1] * 1000
    print(
        f"append: median {median:.2f} ms, p95 {p95:.2f} ms over {count} appends "
        f"(lock + write + fdatasync, in {directory}; target <= 5 ms) "
        f"{'OK' if median <= 5 else 'ABOVE TARGET'}; load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_INTERVAL)
    parser.add_argument("--repeat", type=int, default=3, help="verify runs; the best counts")
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None, help="where to append (default: tmp)")
    parser.add_argument(
        "--start-bytes",
        type=int,
        default=0,
        help="grow exec.start bodies to about this (a real one: ~2,400 bytes; 0: small)",
    )
    parser.add_argument(
        "--end-bytes",
        type=int,
        default=0,
        help="grow exec.end bodies to about this (a real one: ~1,400 bytes; 0: small)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="jhansi-bench-"))
    try:
        signer = KeyFileSigner(workdir / "key.pem")
        bench_verify(
            args.records,
            args.checkpoint_every,
            workdir,
            signer,
            (args.start_bytes, args.end_bytes),
            max(1, args.repeat),
        )
        target = (args.dir or workdir) / f"append-{os.getpid()}"
        try:
            bench_append(args.appends, target, signer)
        finally:
            shutil.rmtree(target, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
