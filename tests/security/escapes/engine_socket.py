"""Escape if a container engine's socket can be reached."""

import os
import socket
import sys

candidates = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/podman/podman.sock",
    "/run/jhansi-ci/podman.sock",
    "/run/user/0/docker.sock",
    "/run/user/1000/podman/podman.sock",
    "/run/containerd/containerd.sock",
]
for path in candidates:
    if not os.path.exists(path):
        continue
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(3)
        sock.connect(path)
        sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        if sock.recv(64):
            print("reached", path)
            sys.exit(77)
    except OSError as exc:
        print("contained:", path, exc)
print("ok")
