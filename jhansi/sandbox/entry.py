"""The in-sandbox bootstrap: runs the script as ``__main__`` with an exact import path.

This file is mounted read-only into every sandbox and run as
``python -I -S /opt/jhansi/entry.py [--gate FD] [--path DIR]... [--path0 DIR]
[--egress-socket PATH --egress-port PORT] (--interactive | -- SCRIPT [ARG]...)``.
``-I`` ignores ``PYTHON*`` variables and the user site; ``-S`` skips ``site``, so
neither the host's nor the image's site-packages is importable. What is importable
is exactly: the standard library, the script's own directory (or ``--path0``, for
code read from stdin, which imports from the working directory as ``python -``
does), and each ``--path`` (a locked environment; its ``.pth`` files are processed).

With ``--egress-socket``, a forwarder listens on ``127.0.0.1:PORT`` before the
script starts and relays every connection to the host's egress proxy through the
unix socket bind-mounted at ``PATH`` (the sandbox has no other network). It runs
in one background thread, so the process ends when the script does; a connection
that cannot reach the proxy is closed (fail closed). Without the option nothing
of it is imported.

With ``--gate FD``, it first reads one byte from descriptor FD: jhansi starts the
sandbox before it has recorded the run, and writes that byte once the record is on
disk. Until then nothing but the interpreter and this file has run (no ``.pth``
file, no script); if jhansi closes the gate instead, it exits at once (status 125).

With ``--end-marker TOKEN`` (the docker backend), the bootstrap forks: the child
runs the script as above, in its own process group; the parent only waits for it,
passes on the signals a supervisor would (``SIGINT``, ``SIGTERM``, ``SIGHUP``,
``SIGQUIT``, ``SIGUSR1``, ``SIGUSR2``), then writes ``\\0jhansi-end:TOKEN:exit:N\\0``
(or ``:signal:N``) to stderr and exits with the child's status (``128 + N`` for a
signal, as an init reports it). Whatever way the script ends (``sys.exit``, an
exception, ``os._exit``, ``exec``, a signal), the marker is written; it is missing
only when the sandbox itself was ended from outside (the runtime died, the engine
killed the container), which is how jhansi tells those apart from the script's own
exit status. The script can read the token and forge the marker; that gains it
nothing, since it already chooses its own exit status.

It must run on every interpreter a sandbox may have: the standard library only,
and nothing newer than Python 3.8. It imports nothing it does not use: ``typing``
alone would cost every run about 8 ms, so the annotations are never evaluated.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # read by type checkers only
    from typing import Any, Dict, List


def _clean_path() -> None:
    """Drop every site-packages / dist-packages entry an interpreter may still add."""
    sys.path[:] = [
        p for p in sys.path if p and "site-packages" not in p and "dist-packages" not in p
    ]


class _Args:
    """The bootstrap's command line."""

    def __init__(self) -> None:
        self.paths: List[str] = []
        self.gate = -1
        self.path0 = ""
        self.interactive = False
        self.egress_socket = ""
        self.egress_port = 0
        self.end_marker = ""
        self.rest: List[str] = []


def _parse(argv: List[str]) -> _Args:
    args = _Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--path":
            args.paths.append(argv[i + 1])
            i += 2
        elif arg == "--gate":
            args.gate = int(argv[i + 1])
            i += 2
        elif arg == "--path0":
            args.path0 = argv[i + 1]
            i += 2
        elif arg == "--egress-socket":
            args.egress_socket = argv[i + 1]
            i += 2
        elif arg == "--egress-port":
            args.egress_port = int(argv[i + 1])
            i += 2
        elif arg == "--end-marker":
            args.end_marker = argv[i + 1]
            i += 2
        elif arg == "--interactive":
            args.interactive = True
            i += 1
        elif arg == "--":
            args.rest = argv[i + 1 :]
            return args
        else:
            sys.stderr.write("jhansi entry: unknown argument %r\n" % arg)
            sys.exit(2)
    return args


# -- egress forwarder ------------------------------------------------------------------------
#
# Built on ``_socket``, ``_thread`` and ``select.poll`` rather than ``socket``,
# ``threading`` and ``selectors``: those pull in ``enum``, ``collections`` and more
# (about 7 ms here) before a script that never touches the network starts; these
# cost well under one. Every run sets the forwarder up (with no host allowed, the
# host proxy refuses and records what the script tried), so that is paid by every run.

_CHUNK = 65536
#: The forwarder's thread needs little stack; a small one keeps it out of RLIMIT_AS's way.
_STACK = 256 * 1024
_READ = 1
_WRITE = 2


class _Poller:
    """The little of a selector that :class:`_Link` needs, over ``select.poll``.

    ``select`` yields ``(sock, data, mask)``; as in ``selectors``, a hang-up or an
    error counts as both readable and writable, so the next ``recv`` or ``send`` meets it.
    """

    def __init__(self) -> None:
        import select

        self._poll = select.poll()
        self._in = select.POLLIN
        self._out = select.POLLOUT
        self._entries: Dict[int, Any] = {}

    def _flags(self, events: int) -> int:
        return (self._in if events & _READ else 0) | (self._out if events & _WRITE else 0)

    def register(self, sock: Any, events: int, data: Any) -> None:
        """Watch ``sock`` for ``events`` (``_READ``/``_WRITE``); ``data`` comes back with it."""
        fd = sock.fileno()
        self._poll.register(fd, self._flags(events))
        self._entries[fd] = (sock, data)

    def modify(self, sock: Any, events: int, data: Any) -> None:
        """Watch ``sock`` for other ``events``."""
        fd = sock.fileno()
        if fd not in self._entries:
            raise KeyError(fd)
        self._poll.modify(fd, self._flags(events))
        self._entries[fd] = (sock, data)

    def unregister(self, sock: Any) -> None:
        """Stop watching ``sock`` (KeyError if it was not watched)."""
        fd = sock.fileno()
        del self._entries[fd]
        self._poll.unregister(fd)

    def select(self) -> List[Any]:
        """Wait for at least one event; ``(sock, data, mask)`` for each."""
        ready = []
        for fd, flags in self._poll.poll():
            entry = self._entries.get(fd)
            if entry is None:
                continue
            mask = 0
            if flags & ~self._out:
                mask |= _READ
            if flags & ~self._in:
                mask |= _WRITE
            ready.append((entry[0], entry[1], mask))
        return ready


class _Link:
    """One relayed connection: ``socks[0]`` the script's, ``socks[1]`` the proxy's.

    ``pending[i]`` holds bytes read from ``socks[i]`` not yet written to the other
    side; a side is read only while its pending bytes are gone (back-pressure, at
    most one chunk buffered per direction). An end of file is passed on as a
    half-close (``shutdown(SHUT_WR)``) once everything before it was written; the
    link closes when both directions are done, or on any error.
    """

    def __init__(self, selector: Any, client: Any, upstream: Any) -> None:
        self.selector = selector
        self.socks = (client, upstream)
        self.pending = [b"", b""]
        self.eof = [False, False]
        self.shut = [False, False]
        self.events = [0, 0]
        for sock in self.socks:
            sock.setblocking(False)
        self._update()

    def _update(self) -> None:
        for i, sock in enumerate(self.socks):
            want = 0
            if not self.eof[i] and not self.pending[i]:
                want |= _READ
            if self.pending[1 - i]:
                want |= _WRITE
            if want == self.events[i]:
                continue
            if self.events[i] == 0:
                self.selector.register(sock, want, self)
            elif want == 0:
                self.selector.unregister(sock)
            else:
                self.selector.modify(sock, want, self)
            self.events[i] = want

    def _flush(self, i: int) -> None:
        """Write what was read from ``socks[i]`` to the other side, as much as it takes."""
        if not self.pending[i]:
            return
        try:
            sent = self.socks[1 - i].send(self.pending[i])
        except (BlockingIOError, InterruptedError):
            return
        self.pending[i] = self.pending[i][sent:]

    def handle(self, sock: Any, mask: int) -> None:
        """React to ``sock`` being readable and/or writable."""
        import _socket

        i = 0 if sock is self.socks[0] else 1
        try:
            if mask & _WRITE:
                self._flush(1 - i)
            if mask & _READ and not self.eof[i]:
                try:
                    data = sock.recv(_CHUNK)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data:
                    self.pending[i] = data
                    self._flush(i)
                elif data is not None:
                    self.eof[i] = True
            for j in (0, 1):
                if self.eof[j] and not self.pending[j] and not self.shut[1 - j]:
                    self.socks[1 - j].shutdown(_socket.SHUT_WR)
                    self.shut[1 - j] = True
            if self.shut[0] and self.shut[1]:
                self.close()
                return
            self._update()
        except OSError:
            self.close()

    def close(self) -> None:
        """Drop both sides (the peer of a reset sees its connection end)."""
        import contextlib  # only once a connection was made

        for i, sock in enumerate(self.socks):
            if self.events[i]:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.selector.unregister(sock)
                self.events[i] = 0
            with contextlib.suppress(OSError):
                sock.close()


def _relay(listener: Any, path: str) -> None:
    """Accept connections on ``listener`` and relay each to the unix socket ``path``."""
    import _socket

    selector = _Poller()
    selector.register(listener, _READ, None)
    while True:
        for sock, data, mask in selector.select():
            if data is None:
                try:
                    fd, _ = listener._accept()
                except OSError:
                    continue
                client = _socket.socket(fileno=fd)
                upstream = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                try:
                    upstream.settimeout(5.0)
                    upstream.connect(path)
                    _Link(selector, client, upstream)
                except OSError:
                    # The proxy is gone: the script's connection ends, nothing leaks past.
                    upstream.close()
                    client.close()
            else:
                try:
                    data.handle(sock, mask)
                except Exception:  # one broken link must not stop the others
                    data.close()


def _start_forwarder(path: str, port: int) -> None:
    """Listen on ``127.0.0.1:port`` now, and relay to ``path`` from a background thread
    (a bare ``_thread`` one: the process ends when the script does, as with a daemon)."""
    import _socket
    import _thread

    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        sys.stderr.write(
            "jhansi entry: cannot listen on 127.0.0.1:%d for egress: %s\n" % (port, exc)
        )
        sys.exit(2)
    changed = False
    previous = 0
    try:
        previous = _thread.stack_size(_STACK)
        changed = True
    except (ValueError, RuntimeError):
        pass
    try:
        _thread.start_new_thread(_relay, (listener, path))
    finally:
        if changed:
            _thread.stack_size(previous)


def _run_script(script: str, args: List[str], path0: str) -> None:
    import types

    with open(script, "rb") as handle:
        source = handle.read()
    code = compile(source, script, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = [script] + list(args)
    sys.path.insert(0, path0 or os.path.dirname(os.path.abspath(script)))
    try:
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException:
        # Print the traceback without this file's frame: the user's code starts it.
        import traceback

        kind, value, tb = sys.exc_info()
        traceback.print_exception(kind, value, tb.tb_next if tb else None)
        sys.exit(130 if kind is KeyboardInterrupt else 1)


def _interact() -> None:
    import code

    if not sys.stdin.isatty():
        # Fed from a pipe (an agent, a test): no prompts in the output.
        sys.ps1 = sys.ps2 = ""
    code.interact(banner="", exitmsg="", local={"__name__": "__main__"})


def _wait_at_gate(fd: int) -> None:
    """Wait for jhansi's go-ahead on ``fd`` (one byte); exit if it closes the gate."""
    while True:
        try:
            go = os.read(fd, 1)
            break
        except InterruptedError:  # pragma: no cover (retried by Python 3.5+ itself)
            continue
    os.close(fd)
    if go != b"1":
        os._exit(125)


#: What a supervisor passes on to the script (SIGKILL and SIGSTOP cannot be caught).
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def _supervise(token: str) -> None:
    """Fork; in the parent, wait for the child, write the end marker and exit like it.

    Returns only in the child, which goes on to run the script. The child gets its
    own process group, so a script that signals its group (to end its workers) does
    not end its supervisor too.
    """
    import contextlib
    import signal

    pid = os.fork()
    if pid == 0:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        return

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    for name in _FORWARDED:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:  # pragma: no cover (retried by Python 3.5+ itself)
            continue
    if os.WIFSIGNALED(status):
        kind, number, code = "signal", os.WTERMSIG(status), 128 + os.WTERMSIG(status)
    else:
        kind, number = "exit", os.WEXITSTATUS(status)
        code = number
    marker = "\0jhansi-end:%s:%s:%d\0" % (token, kind, number)
    with contextlib.suppress(OSError):
        os.write(2, marker.encode("ascii"))
    os._exit(code)


def main() -> None:
    """Set up the import path (and egress, if asked) and hand over to the script."""
    args = _parse(sys.argv[1:])
    if args.gate >= 0:
        _wait_at_gate(args.gate)
    if args.end_marker:
        _supervise(args.end_marker)
    _clean_path()
    if args.egress_socket:
        _start_forwarder(args.egress_socket, args.egress_port)
    if args.paths:
        import site

        for path in args.paths:
            site.addsitedir(path)
    if args.interactive:
        sys.path.insert(0, args.path0 or os.getcwd())
        _interact()
        return
    if not args.rest:
        sys.stderr.write("jhansi entry: no script given\n")
        sys.exit(2)
    _run_script(args.rest[0], args.rest[1:], args.path0)


if __name__ == "__main__":
    main()
