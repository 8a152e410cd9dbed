"""The helper's spare makes the pages it shares with the helper its own, and only those.

Real: a real fork, the real kernel's ``MADV_POPULATE_WRITE`` and ``/proc`` accounting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import mmap, os, threading
    import jhansi.helper as helper

    def rollup():
        fields = {}
        for line in open("/proc/self/smaps_rollup").read().splitlines()[1:]:
            name, value = line.split(":")
            fields[name] = int(value.split()[0])
        return fields

    untouched = mmap.mmap(-1, 256 << 20)  # reserved, never written: must stay so
    # A file's pages in a private writable mapping, read (present) but not written:
    # copying them would allocate 16 MiB of new anonymous memory.
    with open(os.environ["DATA"], "rb") as data:
        mapped = mmap.mmap(data.fileno(), 0, access=mmap.ACCESS_COPY)
    assert sum(mapped[i] for i in range(0, len(mapped), 4096)) == 0
    mapped[0] = 1  # one page written: the fork copies the mapping's page tables too
    touched = bytearray(os.urandom(1024)) * (16 << 10)  # 16 MiB, present, shared after fork
    pid = os.fork()
    if pid == 0:
        if os.environ.get("HANDED"):
            helper._handed.set()  # the request came first: nothing is copied
        before = rollup()
        thread = threading.Thread(target=helper._prefault)
        thread.start()
        thread.join()
        after = rollup()
        print(before["Rss"], after["Rss"], before["Private_Dirty"], after["Private_Dirty"])
        os._exit(0)
    os.waitpid(pid, 0)
    """
)


def _prefault(handed: bool, tmp_path: Path) -> tuple[int, int, int, int]:
    data = tmp_path / "data"
    data.write_bytes(bytes(16 << 20))
    env = {**os.environ, "HANDED": "1" if handed else "", "DATA": str(data)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    a, b, c, d = map(int, proc.stdout.split())
    return a, b, c, d


def test_the_spare_copies_its_present_pages_and_allocates_nothing_new(tmp_path: Path) -> None:
    rss_before, rss_after, private_before, private_after = _prefault(False, tmp_path)
    if private_after == private_before:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")  # pragma: no cover
    # The 16 MiB shared with the parent are now the child's own...
    assert private_after - private_before >= 16 << 10
    # ...but not the 16 MiB of a file's pages (KiB; a little slack for the thread's
    # stack and Python's own allocations)...
    assert private_after - private_before < (16 << 10) + (8 << 10), (private_before, private_after)
    # ...and the 256 MiB never touched are still not there.
    assert rss_after - rss_before < 8 << 10, (rss_before, rss_after)


def test_the_prefault_stops_once_the_request_has_come(tmp_path: Path) -> None:
    """The run's own fork waits for the address space's lock the prefault holds."""
    _, _, private_before, private_after = _prefault(True, tmp_path)
    assert private_after - private_before < 4 << 10  # KiB: not the 16 MiB
