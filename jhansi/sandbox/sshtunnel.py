"""An ``ssh://`` engine through the system's ``ssh``: its socket forwarded to a local one.

The docker SDK's own ssh transport needs paramiko, whose import would cost every
engine run about 200 ms; the ssh client is what the docker CLI uses anyway, with
the user's keys, agent and ``~/.ssh/config``. ``ssh -L LOCAL:REMOTE`` forwards
the engine's unix socket (``/var/run/docker.sock`` unless the URL has a path,
as in ``ssh://me@host/run/user/1000/docker.sock``) to a socket in a private
temporary directory, for as long as the client lives.

A run may end in ``os._exit`` (the CLI's fast path, the helper's children) or be
killed, and no Python clean-up runs then. So ssh is watched by a small keeper
process of its own session (Ctrl-C in the terminal reaches neither, so the run's
own clean-up can still talk to the engine): it holds a pipe from jhansi, and when
that pipe closes — jhansi closed the tunnel, or ended however it ended — it stops
ssh and removes the directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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
#: The keeper: ``python -c KEEPER DIRECTORY SSH-ARGV...``; its stdin is jhansi's lifeline.
_KEEPER = """
import os, shutil, subprocess, sys, threading
ssh = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
def lifeline():
    while os.read(0, 512):
        pass
    ssh.terminate()
threading.Thread(target=lifeline, daemon=True).start()
code = ssh.wait()
shutil.rmtree(sys.argv[1], ignore_errors=True)
os._exit(code & 255)
"""


def _login(url: str) -> list[str]:
    """Where ``ssh`` logs in for ``url``: ``[-p PORT] [USER@]HOST``."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise SandboxError(
            f"cannot use the engine at {url}: no host", hint="Use ssh://[USER@]HOST[:PORT]."
        )
    port = ["-p", str(parts.port)] if parts.port else []
    return [*port, f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname]


def ssh_command(url: str, local: str) -> list[str]:
    """The ``ssh`` command that forwards ``url``'s engine socket to ``local``."""
    *port, destination = _login(url)
    path = urlsplit(url).path
    remote = path if path not in ("", "/") else REMOTE_SOCKET
    return [
        "ssh",
        "-nNT",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "BatchMode=yes",
        "-L",
        f"{local}:{remote}",
        *port,
        "--",
        destination,
    ]


def open_tunnel(url: str) -> tuple[str, Callable[[], None]]:
    """Start forwarding ``url``'s engine socket; the local socket's path and how to stop."""
    directory = Path(tempfile.mkdtemp(prefix="jhansi-ssh-"))
    local = directory / "engine.sock"
    argv = ssh_command(url, str(local))
    kept = bool(sys.executable)  # not in an interpreter embedded in another program
    if kept:
        argv = [sys.executable, "-I", "-S", "-c", _KEEPER, str(directory), *argv]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

    def close() -> None:
        if process.stdin is not None:
            process.stdin.close()  # the keeper stops ssh
        if not kept and process.poll() is None:
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
            text = error.decode("utf-8", "replace").strip()
            login = " ".join(["ssh", *_login(url)])
            if "Host key verification failed" in text:
                hint = (
                    "ssh does not know this host's key (or it changed): check the key and add "
                    f"it to ~/.ssh/known_hosts, for instance by logging in once (`{login}`)."
                )
            else:
                hint = (
                    f"Check that `{login}` logs in without a prompt (a key or an agent) and "
                    "that the engine's socket there is where the URL says (default "
                    f"{REMOTE_SOCKET})."
                )
            lines = text.splitlines()
            raise SandboxError(
                f"cannot reach the engine at {url} over ssh: "
                f"{lines[-1] if lines else 'ssh did not forward the socket in time'}",
                hint=hint,
            )
        time.sleep(0.02)
    return str(local), close
