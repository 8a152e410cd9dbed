"""Escape if any network is reachable. argv[1] is a port a canary server listens on, on
the host's loopback.

Interfaces are checked first: if anything but loopback exists, that is already the
escape, and no outside connection is attempted. Otherwise a connect to an outside
address fails at once with no route, so no packet can leave this machine.
"""

import socket
import sys

names = sorted(name for _, name in socket.if_nameindex())
print("interfaces:", names)
if set(names) - {"lo"}:
    sys.exit(77)
targets = [
    ("127.0.0.1", int(sys.argv[1])),  # the host's loopback canary
    ("1.1.1.1", 443),
    ("169.254.169.254", 80),  # cloud metadata
]
for host, port in targets:
    try:
        socket.create_connection((host, port), timeout=3).close()
        print("connected", host, port)
        sys.exit(77)
    except OSError as exc:
        print("contained:", host, port, exc)
