"""An ``ssh://`` engine through the system's ``ssh``: its socket forwarded to a local one.

The docker SDK's own ssh transport needs paramiko, whose import would cost every
engine run about 200 ms; the ssh client is what the docker CLI uses anyway, with
the user's keys, agent and ``~/.ssh/config``. ``ssh -L LOCAL:REMOTE`` forwards
the engine's unix socket (``/var/run/docker.sock`` unless the URL has a path,
as in ``ssh://me@host/run/user/1000/docker.sock``) to a socket in a private
temporary directory, for as long as the client lives.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from jhansi.errors import SandboxError

#: Where a remote engine's socket is when the URL does not say (the docker CLI's default).
REMOTE_SOCKET = "/var/run/docker.sock"
#: How long ssh may take to log in and set up the forward.
_SETUP_TIMEOUT = 20.0


def ssh_command(url: str, local: str) -> list[str]:
    """The ``ssh`` command that forwards ``url``'s engine socket to ``local``."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise SandboxError(
            f"cannot use the engine at {url}: no host", hint="Use ssh://[USER@]HOST[:PORT]."
        )
    remote = parts.path if parts.path not in ("", "/") else REMOTE_SOCKET
    argv = [
        "ssh",
        "-nNT",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "BatchMode=yes",
        "-L",
        f"{local}:{remote}",
    ]
    if parts.port:
        argv += ["-p", str(parts.port)]
    argv += ["--", f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname]
    return argv


def open_tunnel(url: str) -> tuple[str, Callable[[], None]]:
    """Start forwarding ``url``'s engine socket; the local socket's path and how to stop."""
    directory = Path(tempfile.mkdtemp(prefix="jhansi-ssh-"))
    local = directory / "engine.sock"
    process = subprocess.Popen(
        ssh_command(url, str(local)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def close() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)

    deadline = time.monotonic() + _SETUP_TIMEOUT
    while not local.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            error = b""
            if process.poll() is not None and process.stderr is not None:
                error = process.stderr.read()
            close()
            lines = error.decode("utf-8", "replace").strip().splitlines()
            raise SandboxError(
                f"cannot reach the engine at {url} over ssh: "
                f"{lines[-1] if lines else 'ssh did not forward the socket in time'}",
                hint="Check that `ssh HOST` logs in without a prompt (a key or an agent) and "
                "that the engine's socket there is where the URL says (default "
                f"{REMOTE_SOCKET}).",
            )
        time.sleep(0.02)
    return str(local), close
