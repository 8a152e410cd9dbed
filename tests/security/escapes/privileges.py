"""Escape if the script is root, has capabilities, or gains privileges via setuid or a
capability-gated call (raw socket, mount, setuid(0))."""

import ctypes
import ctypes.util
import os
import socket
import subprocess
import sys

if os.getuid() == 0 or os.geteuid() == 0:
    print("running as root")
    sys.exit(77)
with open("/proc/self/status") as handle:
    status = dict(line.split(":", 1) for line in handle if ":" in line)
# CapEff is always there; gVisor has no CapAmb line.
for field in ("CapEff", "CapPrm", "CapAmb"):
    if field == "CapEff" or field in status:
        value = int(status[field].strip(), 16)
    else:
        continue
    if value != 0:
        print("has capabilities:", field, status[field].strip())
        sys.exit(77)
try:
    os.setuid(0)
    print("setuid(0) worked")
    sys.exit(77)
except OSError as exc:
    print("contained: setuid", exc)
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    print("raw socket opened")
    sys.exit(77)
except OSError as exc:
    print("contained: raw socket", exc)
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
os.makedirs("/tmp/m", exist_ok=True)
if libc.mount(b"none", b"/tmp/m", b"tmpfs", 0, None) == 0:
    print("mount worked")
    sys.exit(77)
print("contained: mount errno", ctypes.get_errno())
# setuid-root binaries must not raise privileges (no-new-privileges)
for binary in ("/usr/bin/su", "/bin/su", "/usr/bin/newgrp", "/bin/mount", "/usr/bin/mount"):
    if os.path.exists(binary) and os.stat(binary).st_mode & 0o4000:
        probe = subprocess.run(
            [binary, "-t", "tmpfs", "none", "/tmp/m"]
            if "mount" in binary
            else [binary, "-c", "id -u"],
            capture_output=True,
            text=True,
            timeout=10,
            input="",
        )
        print(binary, probe.returncode, probe.stdout.strip(), probe.stderr.strip()[:100])
        if probe.returncode == 0 and ("mount" in binary or probe.stdout.strip() == "0"):
            sys.exit(77)
print("ok")
