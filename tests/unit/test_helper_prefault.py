"""The helper's spare makes the pages it shares with the helper its own, and only those.

Real: a real fork, the real kernel's ``MADV_POPULATE_WRITE`` and ``/proc`` accounting.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
    touched = bytearray(os.urandom(1024)) * (16 << 10)  # 16 MiB, present, shared after fork
    pid = os.fork()
    if pid == 0:
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


def test_the_spare_copies_its_present_pages_and_allocates_nothing_new() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    rss_before, rss_after, private_before, private_after = map(int, proc.stdout.split())
    if private_after == private_before:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")  # pragma: no cover
    # The 16 MiB shared with the parent are now the child's own...
    assert private_after - private_before >= 16 << 10
    # ...and the 256 MiB never touched are still not there (KiB; a little slack for the
    # thread's stack and Python's own allocations).
    assert rss_after - rss_before < 8 << 10, (rss_before, rss_after)
