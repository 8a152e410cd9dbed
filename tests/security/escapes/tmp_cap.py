"""Escape if /tmp takes more than its cap (argv[1], MiB)."""

import sys

cap_mib = int(sys.argv[1])
written = 0
try:
    with open("/tmp/fill", "wb") as handle:
        for _ in range(cap_mib * 2):
            handle.write(b"\0" * (1 << 20))
            handle.flush()
            written += 1
except OSError as exc:
    print("stopped after", written, "MiB:", exc)
    sys.exit(0)
print("wrote", written, "MiB")
sys.exit(77)
