"""Hand ``jhansi run`` to the helper process, when one is running for this jhansi.

Starting Python and importing jhansi's run path costs ~80 ms before any work is
done, most of a warm run's overhead. The helper (:mod:`jhansi.helper`) is a
process that has imported that code once and forks a child per run: the child
takes this process's arguments, environment, working directory, umask and
standard streams (passed as file descriptors), and runs exactly what this
process would have run (:func:`jhansi.cli.main`), recording it the same way.
This process waits for the child's exit status, forwards the signals it gets
(Ctrl-C included), and exits with that status.

This module imports only what the client needs (no jhansi code beyond it, and not
even ``contextlib``: a few milliseconds of every warm run). A
helper is used only if it runs with the same interpreter, the same jhansi code
and the same process context (the :func:`helper_key`); anything else, or any
trouble reaching it, and the run goes on in this process as before.

``JHANSI_HELPER``: ``on``, ``off``, or ``auto`` (the default: on unless the
``CI`` variable is set, where processes left behind are unwelcome).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

#: How the client and the helper tell each other what happens (one byte, then data).
PID, EXIT, STALE = b"P", b"X", b"S"
#: The longest request accepted (arguments and environment, JSON).
MAX_REQUEST = 1 << 20
_FALSE = ("", "0", "false", "no", "off")
#: Variables read when Python, or a module the helper loads, starts: part of the key.
_STARTUP_VARS = ("PYTHON", "LC_", "LANG", "OPENSSL_")
#: What the helper's own environment holds besides those (it never needs the rest: each
#: run gets its client's environment, so no token the caller has stays in the helper).
_HELPER_VARS = ("PATH", "HOME", "TMPDIR", "TZ", "XDG_RUNTIME_DIR", "JHANSI_HELPER_DIR")


def enabled(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether ``jhansi run`` may use (and start) a helper, per ``JHANSI_HELPER``."""
    env = os.environ if environ is None else environ
    choice = env.get("JHANSI_HELPER", "auto").strip().lower()
    if choice in ("on", "1", "true", "yes"):
        return True
    if choice in ("off", "0", "false", "no"):
        return False
    return env.get("CI", "").strip().lower() in _FALSE


def helper_dir() -> str:
    """The private directory holding the helpers' sockets (``JHANSI_HELPER_DIR`` overrides).

    ``$XDG_RUNTIME_DIR/jhansi-helper`` when there is one, else
    ``<tmp>/jhansi-<uid>/helper``. Checked (and made) by :func:`private_dir`.
    """
    chosen = os.environ.get("JHANSI_HELPER_DIR")
    if chosen:
        return chosen
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "jhansi-helper")
    tmp = os.environ.get("TMPDIR") or "/tmp"  # noqa: S108 - made private and checked below
    return os.path.join(tmp, f"jhansi-{os.getuid()}", "helper")


def private_dir(path: str, *, create: bool) -> bool:
    """Whether ``path`` is a directory of this user that nobody else can enter.

    With ``create``, makes it (and a missing parent, mode 0711) first.
    """
    import stat

    if create:
        parent = os.path.dirname(path)
        for where, mode in ((parent, 0o711), (path, 0o700)):
            try:
                os.mkdir(where, mode)
            except FileExistsError:
                pass
            except OSError:
                return False
    try:
        st = os.lstat(path)
        up = os.stat(os.path.dirname(path) or ".")
    except OSError:
        return False
    # Whoever may rename entries of the parent could swap this directory for one of
    # theirs after the check (another user who made /tmp/jhansi-<uid> first): the
    # parent must be this user's or root's, and writable by nobody else unless sticky.
    writable = up.st_mode & 0o002 or (up.st_mode & 0o020 and up.st_gid != os.getgid())
    if up.st_uid not in (0, os.getuid()) or (writable and not up.st_mode & stat.S_ISVTX):
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _tree_stat(top: str, parts: list[str]) -> None:
    """Each Python or data file's path, size and time under ``top`` (jhansi's own code)."""
    with os.scandir(top) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    _tree_stat(entry.path, parts)
            elif entry.name.endswith((".py", ".json", ".toml")):  # code, bundled data
                st = entry.stat()
                parts.append(f"{entry.path}:{st.st_size}:{st.st_mtime_ns}")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def helper_key() -> str:
    """What a helper must share with this process to run for it.

    The interpreter and its flags, jhansi's code (every module's and bundled data
    file's size and time),
    the import path (each directory's time, so installing or upgrading a package
    changes it), the variables Python reads at start-up (``PYTHON*``, the
    locale), and the process context a child inherits from the helper rather than
    from this process: user and groups, rlimits, cgroup, and namespaces.
    """
    import jhansi

    parts = [sys.executable, sys.version, repr(sys.flags), repr(sys.path)]
    for entry in sys.path:
        try:
            parts.append(f"{entry}:{os.stat(entry).st_mtime_ns}")
        except OSError:
            parts.append(f"{entry}:-")
    _tree_stat(os.path.dirname(os.path.abspath(jhansi.__file__)), parts)
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(_STARTUP_VARS))
    parts.append(f"{os.getuid()}:{os.getgid()}:{sorted(os.getgroups())}")
    parts += [_read("/proc/self/limits"), _read("/proc/self/cgroup")]
    for ns in ("mnt", "pid", "user", "net", "ipc", "uts", "cgroup"):
        try:
            parts.append(os.readlink(f"/proc/self/ns/{ns}"))
        except OSError:
            parts.append(f"{ns}:-")
    return "\n".join(parts)


def socket_name(key: str) -> str:
    """The socket's file name for ``key`` (two checksums: the helper compares the whole key)."""
    import zlib

    data = key.encode("utf-8", "surrogateescape")
    return f"helper-{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def _recv_exact(sock: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def encode_request(key: str, args: Sequence[str]) -> bytes:
    """The request: NUL-separated fields (none of which can hold a NUL): the key, the
    working directory, the umask, the number of arguments, the arguments, then each
    environment variable as ``NAME=VALUE``."""
    umask = os.umask(0o077)
    os.umask(umask)
    fields = [os.fsencode(key), os.fsencode(os.getcwd()), b"%d" % umask, b"%d" % len(args)]
    fields += [os.fsencode(a) for a in args]
    fields += [k + b"=" + v for k, v in os.environb.items()]
    return b"\0".join(fields)


def decode_request(data: bytes) -> tuple[str, str, int, list[str], dict[str, str]] | None:
    """:func:`encode_request`'s fields back (``None`` if ``data`` is not a request)."""
    fields = data.split(b"\0")
    try:
        count = int(fields[3])
        argv = fields[4 : 4 + count]
        if count < 0 or len(argv) != count:
            return None
        env: dict[str, str] = {}
        for item in fields[4 + count :]:
            name, sep, value = item.partition(b"=")
            if not sep or not name:
                return None
            env[os.fsdecode(name)] = os.fsdecode(value)
        return (
            os.fsdecode(fields[0]),
            os.fsdecode(fields[1]),
            int(fields[2]),
            [os.fsdecode(a) for a in argv],
            env,
        )
    except (IndexError, ValueError):
        return None


def run_in_helper(args: Sequence[str]) -> int | None:
    """Run ``jhansi ARGS`` in the helper and return its exit status.

    ``None`` when no helper can take it (none running, another jhansi's, or any
    error before the child started): the caller runs it itself, and should
    :func:`spawn` a helper for the next run. Once the child has started, its
    status is returned whatever happens (1 if it vanished without one).

    Uses the interpreter's low-level ``_socket`` and ``_signal``: ``socket``,
    ``signal`` and ``json`` would cost more start-up than the rest of the client.
    """
    import _signal  # type: ignore[import-not-found]  # (no stub; signal would import enum)
    import _socket

    key = helper_key()
    directory = helper_dir()
    path = os.path.join(directory, socket_name(key) + ".sock")
    if len(os.fsencode(path)) > 107 or not private_dir(directory, create=False):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        peer = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        if int.from_bytes(peer[4:8], sys.byteorder) != os.getuid():
            sock.close()
            return None  # not ours (the directory check makes this unreachable)
        request = encode_request(key, args)
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        sock.sendmsg(
            [len(request).to_bytes(4, "big"), request],
            [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)],
        )
        answer = _recv_exact(sock, 5)
    except (OSError, ValueError):
        sock.close()
        return None
    if len(answer) != 5 or answer[:1] != PID:
        sock.close()
        return None  # stale (another jhansi's helper), or it refused: run here
    child = int.from_bytes(answer[1:], "big")

    def forward(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 (contextlib is not imported here: start-up time)
            os.kill(child, signum)
        except OSError:
            pass

    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT):
        _signal.signal(signum, forward)
    try:
        status = _recv_exact(sock, 5)
    except OSError:
        status = b""
    finally:
        sock.close()
    if len(status) == 5 and status[:1] == EXIT:
        return int.from_bytes(status[1:], "big", signed=True) & 0xFF
    sys.stderr.write(
        "jhansi: the helper's run ended without an exit status (it was killed?)\n"
        "  hint: check `jhansi ledger show`, and set JHANSI_HELPER=off to run without it\n"
    )
    return 1


def spawn() -> None:
    """Start a helper for this jhansi in the background (it exits after a while unused).

    Errors are ignored: the helper is only ever a shortcut.
    """
    directory = helper_dir()
    if not private_dir(directory, create=True):
        return
    # The helper gets this process's import path, so that it loads the same modules
    # and computes the same key.
    boot = "import sys; sys.path[:] = sys.argv[1:]; import jhansi.helper as h; h.main()"
    null = os.devnull
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, null, os.O_WRONLY, 0),
    ]
    # Nothing else of this process's: a pipe a caller reads to its end must not
    # stay open in a helper that outlives this process.
    try:
        inherited = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
    except OSError:
        inherited = []
    for fd in inherited:
        try:
            if os.get_inheritable(fd):
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
        except OSError:
            continue
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_STARTUP_VARS) or k in _HELPER_VARS or k == "JHANSI_HELPER_IDLE"
    }
    try:  # noqa: SIM105 (contextlib is not imported here: start-up time)
        os.posix_spawn(
            sys.executable,
            [sys.executable, "-c", boot, *sys.path],
            env,
            file_actions=actions,
            setsid=True,
        )
    except OSError:
        pass
