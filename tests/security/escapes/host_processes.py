"""Escape if a host process (with a marker in its command line) is visible or can be
signalled. argv[1] is the marker reversed, so that this script's own command line
(and its sandbox init's) never contain the marker itself."""

import os
import signal
import sys

marker = sys.argv[1][::-1]
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        with open("/proc/%s/cmdline" % entry, "rb") as handle:
            if marker.encode() in handle.read():
                print("saw host process", entry)
                try:
                    os.kill(int(entry), signal.SIGTERM)
                    print("signalled it")
                except OSError as exc:
                    print("could not signal:", exc)
                sys.exit(77)
    except OSError:
        continue
print("visible pids:", sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:20])
