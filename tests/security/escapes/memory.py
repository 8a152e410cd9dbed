"""Escape if more memory than the limit (argv[1], MiB) can be held."""

import sys

limit_mib = int(sys.argv[1])
blocks = []
try:
    for _ in range(limit_mib * 2):
        blocks.append(bytearray(b"\x01") * (1 << 20))  # 1 MiB, every page written
except MemoryError:
    print("MemoryError after", len(blocks), "MiB")
    sys.exit(1)
print("held", len(blocks), "MiB")
sys.exit(77)
