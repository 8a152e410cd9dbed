"""The bwrap backend against the real bubblewrap: isolation, limits, output, clean-up.

Each test runs a small script through :class:`BwrapBackend` exactly as the
runner does (``<python> -I -S /opt/jhansi/entry.py -- /work/script.py``), with
a throwaway project directory at ``/work`` and a home at ``/home/sandbox``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path

import pytest

import jhansi.housekeeping as housekeeping
import jhansi.sandbox.entry
from jhansi.sandbox.bwrap import BwrapBackend
from jhansi.sandbox.bwrap.binary import find_bwrap
from jhansi.sandbox.bwrap.interpreter import probe_interpreter
from jhansi.sandbox.interface import (
    ENTRY_DIR,
    HOME,
    PYTHON,
    ROOT_SANDBOX_ID_BASE,
    ROOT_SANDBOX_ID_SPAN,
    THREAD_ENV,
    WORKDIR,
    ExecResult,
    ExecStatus,
    Limits,
    Mount,
    SandboxSpec,
    Stream,
)
from jhansi.sandbox.limits import CGROUP_PREFIX, cgroup_layout

pytestmark = pytest.mark.bwrap

MiB = 1 << 20
LIMITS = Limits(
    memory=256 * MiB, cpus=1.0, pids=64, tmp_size=8 * MiB, timeout=20.0, output_limit=64 * 1024
)
ENTRY = Mount(Path(jhansi.sandbox.entry.__file__), f"{ENTRY_DIR}/entry.py")
CANARY = "jhansi-canary"


@dataclass
class Recorder:
    """An output sink that keeps every chunk, in order."""

    chunks: list[tuple[Stream, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, stream: Stream, data: bytes) -> None:
        with self.lock:
            self.chunks.append((stream, data))

    def data(self, stream: Stream) -> bytes:
        return b"".join(d for s, d in self.chunks if s == stream)


@dataclass
class Sandbox:
    """A backend plus a throwaway project and home to run scripts in."""

    backend: BwrapBackend
    project: Path
    home: Path

    def spec(
        self,
        code: str,
        *args: str,
        limits: Limits = LIMITS,
        rw: bool = False,
        mounts: tuple[Mount, ...] = (),
        env: dict[str, str] | None = None,
    ) -> SandboxSpec:
        (self.project / "script.py").write_text(textwrap.dedent(code))
        return SandboxSpec(
            run_id="test",
            argv=(PYTHON, "-I", "-S", ENTRY.target, "--", f"{WORKDIR}/script.py", *args),
            mounts=(
                ENTRY,
                # A writable /work is the sandbox's own, as the runner's --rw layer is.
                Mount(self.project, WORKDIR, read_only=not rw, owned=rw),
                *mounts,
                Mount(self.home, HOME, read_only=False, owned=True),
            ),
            env=env if env is not None else {"HOME": HOME, "PATH": "/usr/bin:/bin", "LANG": "C"},
            limits=limits,
            image="unused",
            python=None,
        )

    def run(self, spec: SandboxSpec, stdin: BytesIO | None = None) -> tuple[ExecResult, Recorder]:
        recorder = Recorder()
        return self.backend.run(spec, recorder, stdin=stdin), recorder

    def script(self, code: str, *args: str, **kwargs: object) -> ExecResult:
        result, _ = self.run(self.spec(code, *args, **kwargs))  # type: ignore[arg-type]
        return result


@pytest.fixture
def sandbox(bwrap_path: Path, host_python: Path, tmp_path: Path) -> Sandbox:
    project = tmp_path / "project"
    home = tmp_path / "home"
    project.mkdir()
    home.mkdir()
    return Sandbox(BwrapBackend(find_bwrap(str(bwrap_path)), python=host_python), project, home)


def out(result: ExecResult) -> str:
    return result.stdout.data.decode()


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _ours(pid: int) -> bool:
    """Started by this test process, or orphaned (a leftover of it would be one or the
    other); other sandboxes on the machine (another test run, a user) are not ours."""
    while pid > 1:
        parent = _parent(pid)
        if parent is None:
            return False
        if parent == os.getpid() or parent == 1:
            return True
        pid = parent
    return False


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and _ours(int(entry.name)):
                found.append(int(entry.name))
    return found


def _leftover_cgroups() -> list[Path]:
    layout = cgroup_layout()
    parents = list(layout.v1.values()) + ([layout.v2 / "jhansi"] if layout.v2 else [])
    mine = f"{CGROUP_PREFIX}{os.getpid()}-"
    return [c for p in parents if p.is_dir() for c in p.iterdir() if c.name.startswith(mine)]


# -- identity and output -------------------------------------------------------------------


def test_runs_as_the_sandbox_user_and_streams_both_streams(sandbox: Sandbox) -> None:
    spec = sandbox.spec(
        """
        import os, pwd, sys
        print("uid", os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name, flush=True)
        sys.stderr.write("to stderr\\n")
        print("home", os.path.expanduser("~"), "cwd", os.getcwd())
        """
    )
    result, recorder = sandbox.run(spec)
    assert result.status is ExecStatus.SUCCEEDED, result
    assert result.exit_code == 0
    assert out(result) == "uid 1000 1000 sandbox\nhome /home/sandbox cwd /work\n"
    assert result.stderr.data == b"to stderr\n"
    assert recorder.data("stdout") == result.stdout.data
    assert recorder.data("stderr") == result.stderr.data
    assert result.enforcement["timeout"].startswith("SIGKILL")


def test_output_is_streamed_live_and_the_tail_kept(sandbox: Sandbox) -> None:
    spec = sandbox.spec(
        """
        import sys, time
        print("first", flush=True)
        time.sleep(1)
        sys.stdout.write("x" * 200000 + "END")
        """,
        limits=replace(LIMITS, output_limit=1000),
    )
    seen_first_at: list[float] = []
    started = time.monotonic()

    class Live(Recorder):
        def write(self, stream: Stream, data: bytes) -> None:
            if b"first" in data and not seen_first_at:
                seen_first_at.append(time.monotonic() - started)
            super().write(stream, data)

    live = Live()
    result = sandbox.backend.run(spec, live)
    assert seen_first_at, "the first line never arrived"
    assert seen_first_at[0] < result.duration_ms / 1000 - 0.5, "output was not streamed live"
    assert result.stdout.truncated
    assert result.stdout.total == len("first\n") + 200000 + 3
    assert len(result.stdout.data) == 1000
    assert result.stdout.data.endswith(b"xxxEND")
    assert len(live.data("stdout")) == result.stdout.total


def test_exit_codes_pass_through(sandbox: Sandbox) -> None:
    failed = sandbox.script("import sys; sys.exit(7)")
    assert (failed.status, failed.exit_code, failed.signal) == (ExecStatus.FAILED, 7, None)
    raised = sandbox.script("raise ValueError('boom')")
    assert raised.status is ExecStatus.FAILED
    assert raised.exit_code == 1
    assert b"ValueError: boom" in raised.stderr.data


def test_stdin_is_forwarded(sandbox: Sandbox) -> None:
    spec = sandbox.spec("import sys; print(sys.stdin.read().upper())")
    result, _ = sandbox.run(spec, stdin=BytesIO(b"hello from the host"))
    assert out(result) == "HELLO FROM THE HOST\n"
    no_stdin = sandbox.script("import sys; print(repr(sys.stdin.read()))")
    assert out(no_stdin) == "''\n"


def test_info_names_bwrap_and_the_real_interpreter(sandbox: Sandbox, host_python: Path) -> None:
    info = sandbox.backend.info(sandbox.spec("pass"))
    assert info.backend == "bwrap"
    assert info.details["bwrap_version"][0].isdigit()
    assert info.details["python"] == str(host_python)
    assert info.details["python_version"] == ".".join(map(str, sys.version_info[:3]))


def test_default_interpreter_is_resolved_through_shims(bwrap_path: Path) -> None:
    backend = BwrapBackend.from_settings(str(bwrap_path), None)
    assert backend.python is not None
    # A pyenv shim is a shell script; what the sandbox runs must be the binary itself.
    assert backend.python.read_bytes()[:4] == b"\x7fELF"
    assert backend.python == backend.python.resolve()


def test_bwrap_setup_failure_is_an_engine_error(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "file"
    secret.write_text("x")
    # /work is read-only: bwrap cannot make the mount point, and says so.
    spec = sandbox.spec("print('ran')", mounts=(Mount(secret, f"{WORKDIR}/missing/file"),))
    result, _ = sandbox.run(spec)
    assert result.status is ExecStatus.ENGINE_ERROR
    assert result.exit_code is None
    assert result.error.startswith("bwrap: ")
    assert b"ran" not in result.stdout.data


def test_a_script_cannot_fake_an_engine_error(sandbox: Sandbox) -> None:
    result = sandbox.script("import sys; sys.stderr.write('bwrap: Can\\'t fake\\n'); sys.exit(1)")
    assert result.status is ExecStatus.FAILED
    assert result.exit_code == 1


# -- filesystem ----------------------------------------------------------------------------

WRITE = """
import sys
for path in sys.argv[1:]:
    try:
        with open(path, "w") as handle:
            handle.write("written")
        print("wrote", path)
    except OSError as exc:
        print("refused", path, exc.errno)
"""


def test_work_and_the_root_are_read_only(sandbox: Sandbox) -> None:
    result = sandbox.script(WRITE, "/work/new.txt", "/etc/x", "/x", "/usr/x", "/tmp/ok", "/dev/x")
    assert out(result).splitlines() == [
        f"refused /work/new.txt {errno.EROFS}",
        f"refused /etc/x {errno.EROFS}",
        f"refused /x {errno.EROFS}",
        f"refused /usr/x {errno.EROFS}",
        "wrote /tmp/ok",
        f"refused /dev/x {errno.EROFS}",
    ]
    assert not (sandbox.project / "new.txt").exists()


def test_rw_work_and_home_leave_files_the_invoking_user_owns(sandbox: Sandbox) -> None:
    result = sandbox.script(WRITE, "/work/new.txt", "/home/sandbox/note.txt", rw=True)
    assert out(result).splitlines() == ["wrote /work/new.txt", "wrote /home/sandbox/note.txt"]
    for path in (sandbox.project / "new.txt", sandbox.home / "note.txt"):
        # uid 1000 inside is the invoking user, or, when root runs jhansi, the sandbox's
        # own host id (never root): either way the invoking user reads and deletes it.
        owner = path.stat().st_uid
        if os.getuid() == 0:
            assert 0 <= owner - ROOT_SANDBOX_ID_BASE < ROOT_SANDBOX_ID_SPAN
        else:
            assert owner == os.getuid()
        assert path.read_text() == "written"
        path.unlink()


def test_empty_mounts_hide_a_file_and_a_directory(sandbox: Sandbox) -> None:
    (sandbox.project / ".env").write_text(f"TOKEN={CANARY}")
    git = sandbox.project / ".git"
    git.mkdir()
    (git / "config").write_text(CANARY)
    spec = sandbox.spec(
        """
        import os
        print(repr(open("/work/.env").read()), os.listdir("/work/.git"))
        for path in ("/work/.env", "/work/.git/new"):
            try:
                open(path, "w").write("x")
                print("wrote", path)
            except OSError as exc:
                print("refused", exc.errno)
        """,
        mounts=(
            Mount(sandbox.project / ".env", "/work/.env", kind="empty"),
            Mount(git, "/work/.git", kind="empty"),
        ),
    )
    result, _ = sandbox.run(spec)
    assert result.status is ExecStatus.SUCCEEDED, result
    assert out(result).splitlines() == ["'' []", f"refused {errno.EROFS}", f"refused {errno.EROFS}"]
    assert (sandbox.project / ".env").read_text() == f"TOKEN={CANARY}"


def test_host_site_packages_are_neither_importable_nor_readable(
    sandbox: Sandbox, host_python: Path
) -> None:
    site_dirs = [str(d) for d in probe_interpreter(str(host_python)).site_dirs if d.is_dir()]
    assert site_dirs, "the host interpreter has no site-packages to hide"
    result = sandbox.script(
        """
        import json, os, sys
        found = {}
        for name in ("pytest", "pip", "jhansi"):
            try:
                __import__(name)
                found[name] = True
            except ImportError:
                found[name] = False
        listings = {d: os.listdir(d) for d in sys.argv[1:]}
        print(json.dumps({"imported": found, "listings": listings}))
        """,
        *site_dirs,
    )
    assert result.status is ExecStatus.SUCCEEDED, result
    doc = json.loads(out(result))
    assert doc["imported"] == {"pytest": False, "pip": False, "jhansi": False}
    assert doc["listings"] == {d: [] for d in site_dirs}


def test_tmp_is_writable_but_capped(sandbox: Sandbox) -> None:
    result = sandbox.script(
        """
        import sys
        for path in ("/tmp/fill", "/dev/shm/fill"):
            written = 0
            try:
                with open(path, "wb") as handle:
                    for _ in range(32):
                        handle.write(b"\\0" * (1 << 20))
                        handle.flush()
                        written += 1
            except OSError as exc:
                print(path, "stopped", written, exc.errno)
            else:
                print(path, "wrote", written)
        """
    )
    lines = out(result).splitlines()
    assert len(lines) == 2, result
    for line, path in zip(lines, ("/tmp/fill", "/dev/shm/fill"), strict=True):
        where, what, mib, code = [*line.split(), ""][:4]
        assert where == path
        assert what == "stopped", line
        assert int(mib) <= 8
        assert int(code) == errno.ENOSPC
    assert result.enforcement["tmp"] == "tmpfs size=8388608 at /tmp, size=8388608 at /dev/shm"


def test_host_environment_is_not_inherited(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JHANSI_ESCAPE_CANARY", CANARY)
    result = sandbox.script("import json, os; print(json.dumps(dict(os.environ)))")
    env = json.loads(out(result))
    assert CANARY not in json.dumps(env)
    # PWD comes from bwrap's --chdir and LC_CTYPE from Python's own C-locale coercion;
    # the thread-count variables from the backend (the CPU limit, not the host).
    assert set(env) - {"PWD", "LC_CTYPE"} == {"HOME", "PATH", "LANG", *THREAD_ENV}
    assert len({env[name] for name in THREAD_ENV}) == 1
    assert env["PWD"] == WORKDIR


# -- network and privileges ----------------------------------------------------------------


def test_no_network_but_loopback(sandbox: Sandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        result = sandbox.script(
            """
            import socket, sys
            print(sorted(name for _, name in socket.if_nameindex()))
            for host, port in (("127.0.0.1", int(sys.argv[1])), ("1.1.1.1", 443)):
                try:
                    socket.create_connection((host, port), timeout=3).close()
                    print("connected", host)
                except OSError as exc:
                    print("refused", host, exc.errno)
            """,
            str(port),
        )
    finally:
        listener.close()
    lines = out(result).splitlines()
    assert lines[0] == "['lo']"
    assert lines[1] == f"refused 127.0.0.1 {errno.ECONNREFUSED}"
    assert lines[2] == f"refused 1.1.1.1 {errno.ENETUNREACH}"


def test_no_capabilities_no_new_privileges_no_keyring_no_sysctls(sandbox: Sandbox) -> None:
    result = sandbox.script(
        """
        import ctypes, errno, os, platform
        status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
        print({k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs")})
        try:  # opening for writing is enough: nothing is written if it were allowed
            open("/proc/sys/vm/stat_interval", "r+").close()
            print("sysctl writable")
        except OSError as exc:
            print("sysctl", errno.errorcode[exc.errno])
        if platform.machine() == "x86_64":
            libc = ctypes.CDLL(None, use_errno=True)
            # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING): the host user's keys
            libc.syscall(250, ctypes.c_long(0), ctypes.c_long(-3), ctypes.c_long(0))
            print("keyctl", errno.errorcode[ctypes.get_errno()])
        else:
            print("keyctl EPERM")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
            print("nested user namespace")
        else:
            print("unshare", errno.errorcode[ctypes.get_errno()])
        print(repr(open("/proc/keys").read()))
        """
    )
    lines = out(result).splitlines()
    assert lines[0] == str(
        {"CapEff": "0" * 16, "CapPrm": "0" * 16, "CapBnd": "0" * 16, "NoNewPrivs": "1"}
    )
    # EROFS (/proc is read-only) or, as a uid that does not own the file, EACCES first.
    assert lines[1] in ("sysctl EROFS", "sysctl EACCES")
    assert lines[2] == "keyctl EPERM"
    assert lines[3] in ("unshare ENOSPC", "unshare EPERM")  # --disable-userns
    assert lines[4] == "''"


def test_setuid_files_cannot_be_made(sandbox: Sandbox) -> None:
    """A setuid file the sandbox leaves in a writable mount would be setuid its host uid."""
    result = sandbox.script(
        """
        import errno, os, shutil
        shutil.copy("/bin/true", "/home/sandbox/t")
        for mode in (0o4755, 0o2755, 0o755):
            try:
                os.chmod("/home/sandbox/t", mode)
                print(oct(mode), "set")
            except OSError as exc:
                print(oct(mode), errno.errorcode[exc.errno])
        try:
            os.close(os.open("/home/sandbox/u", os.O_CREAT | os.O_WRONLY, 0o4755))
            print("created")
        except OSError as exc:
            print("create", errno.errorcode[exc.errno])
        """
    )
    assert out(result).splitlines() == ["0o4755 EPERM", "0o2755 EPERM", "0o755 set", "create EPERM"]
    assert (sandbox.home / "t").stat().st_mode & 0o7777 == 0o755


def test_host_processes_are_invisible(sandbox: Sandbox) -> None:
    result = sandbox.script(
        "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
    )
    assert json.loads(out(result)) == [1, 2]  # bwrap's init, and the script


# -- limits --------------------------------------------------------------------------------

STRAGGLERS = """
import subprocess, sys, time
for _ in range(3):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]])
print("started", flush=True)
time.sleep(600)
"""


def test_timeout_kills_the_whole_sandbox(sandbox: Sandbox) -> None:
    marker = f"jhansi-timeout-{os.getpid()}-{time.monotonic_ns()}"
    started = time.monotonic()
    result = sandbox.script(STRAGGLERS, marker, limits=replace(LIMITS, timeout=1.5))
    elapsed = time.monotonic() - started
    assert result.status is ExecStatus.TIMED_OUT
    assert (result.exit_code, result.signal) == (None, signal.SIGKILL)
    assert out(result) == "started\n"
    assert elapsed < 5
    assert _host_processes_with(marker) == []
    assert _leftover_cgroups() == []


def test_memory_limit(sandbox: Sandbox) -> None:
    result = sandbox.script(
        """
        blocks = []
        while len(blocks) < 1024:
            blocks.append(bytearray(1 << 20))  # 1 MiB, touched
        print("held", len(blocks), "MiB")
        """,
        limits=replace(LIMITS, memory=128 * MiB),
    )
    assert b"held" not in result.stdout.data
    if result.enforcement["memory"].startswith("cgroup"):
        assert result.status is ExecStatus.KILLED_OOM, result
        assert (result.exit_code, result.signal) == (None, signal.SIGKILL)
    else:
        assert result.status is ExecStatus.FAILED
        assert b"MemoryError" in result.stderr.data


def test_fork_bomb_is_contained_by_the_pids_limit(sandbox: Sandbox) -> None:
    result = sandbox.script(
        """
        import os, sys, time
        limit = int(sys.argv[1])
        children = []
        try:
            for _ in range(limit * 4):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
        except OSError as exc:
            print("refused", exc.errno)
        for pid in children:
            os.kill(pid, 9)
        print(len(children))
        """,
        "32",
        limits=replace(LIMITS, pids=32),
    )
    assert result.status is ExecStatus.SUCCEEDED, result
    refused, count = out(result).splitlines()
    assert refused == f"refused {errno.EAGAIN}"
    assert int(count) < 32
    assert result.enforcement["pids"].endswith(("pids.max=32 (processes and threads)",)) or (
        "RLIMIT_NPROC" in result.enforcement["pids"]
    )


def test_as_root_limits_are_cgroups(sandbox: Sandbox) -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroups are made when jhansi runs as root")
    result = sandbox.script("pass")
    assert result.enforcement["memory"].startswith("cgroup v")
    assert result.enforcement["pids"].startswith("cgroup v")
    assert result.enforcement["cpu"].startswith("cgroup v")
    assert "cgroup" not in result.enforcement
    assert _leftover_cgroups() == []


def test_in_the_command_the_cgroup_goes_after_the_answer_its_processes_before(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``jhansi`` command defers housekeeping (:mod:`jhansi.housekeeping`): the
    emptied cgroup is removed after the answer, but nothing of the sandbox is left
    running when the run returns."""
    if os.geteuid() != 0:
        pytest.skip("cgroups are made when jhansi runs as root")  # pragma: no cover
    marker = f"jhansi-deferred-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setattr(housekeeping, "_deferring", True)
    result = sandbox.script(STRAGGLERS, marker, limits=replace(LIMITS, timeout=1.5))
    assert result.status is ExecStatus.TIMED_OUT
    assert _host_processes_with(marker) == []
    assert housekeeping.finish(timeout=30)
    assert _leftover_cgroups() == []


def test_keyboard_interrupt_kills_the_sandbox_and_cleans_up(sandbox: Sandbox) -> None:
    marker = f"jhansi-interrupt-{os.getpid()}-{time.monotonic_ns()}"
    spec = sandbox.spec(STRAGGLERS, marker)
    main = threading.get_ident()

    class InterruptOnStart(Recorder):
        def write(self, stream: Stream, data: bytes) -> None:
            super().write(stream, data)
            if b"started" in data:
                threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sandbox.backend.run(spec, InterruptOnStart())
    assert time.monotonic() - started < 10
    assert _host_processes_with(marker) == []
    assert _leftover_cgroups() == []


# -- as an unprivileged user ---------------------------------------------------------------

UNPRIVILEGED = """
import json, sys
from pathlib import Path
import jhansi.sandbox.entry
from jhansi.sandbox.bwrap import BwrapBackend
from jhansi.sandbox.bwrap.binary import find_bwrap
from jhansi.sandbox.interface import Limits, Mount, SandboxSpec

class Sink:
    def write(self, stream, data):
        pass

base = Path(sys.argv[1])
backend = BwrapBackend(find_bwrap(sys.argv[2]), python=Path(sys.argv[3]))
limits = Limits(memory=128 << 20, cpus=1.0, pids=32, tmp_size=8 << 20, timeout=20,
                output_limit=65536)
report = {}
for name, code in [
    ("hello", "import os; print(os.getuid()); open('/home/sandbox/f', 'w').write('x')"),
    ("memory", "b = []\\nwhile True: b.append(bytearray(1 << 20))"),
    ("fork", "import os, time\\nn = 0\\ntry:\\n    for _ in range(128):\\n"
             "        if os.fork() == 0:\\n            time.sleep(30); os._exit(0)\\n"
             "        n += 1\\nexcept OSError: pass\\nprint(n)"),
]:
    (base / "project" / "s.py").write_text(code)
    spec = SandboxSpec(
        run_id=name,
        argv=("<python>", "-I", "-S", "/opt/jhansi/entry.py", "--", "/work/s.py"),
        mounts=(Mount(Path(jhansi.sandbox.entry.__file__), "/opt/jhansi/entry.py"),
                Mount(base / "project", "/work"),
                Mount(base / "home", "/home/sandbox", read_only=False)),
        env={}, limits=limits, image="unused", python=None)
    result = backend.run(spec, Sink())
    report[name] = {"status": result.status.value, "stdout": result.stdout.data.decode(),
                    "stderr": result.stderr.data.decode()[-200:],
                    "enforcement": dict(result.enforcement)}
print(json.dumps(report))
"""


@pytest.fixture
def world_readable_checkout() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="jhansi-unpriv-"))
    try:
        shutil.copytree(Path(jhansi.__file__).parent, base / "src" / "jhansi")
        for sub in ("project", "home"):
            (base / sub).mkdir()
        (base / "run.py").write_text(UNPRIVILEGED)
        for path in [base, *base.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o644)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unprivileged_user_gets_rlimits(bwrap_path: Path, world_readable_checkout: Path) -> None:
    """As a user who cannot make cgroups: rlimits, told truthfully, and they hold."""
    runuser = shutil.which("runuser")
    python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or runuser is None or not python.exists():
        pytest.skip("needs root (to become nobody), runuser and /usr/bin/python3")
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
        check=True,
    )
    if version.stdout.strip() != "True":
        pytest.skip("/usr/bin/python3 is older than jhansi's 3.11")
    base = world_readable_checkout
    proc = subprocess.run(
        [
            *(runuser, "-u", "nobody", "--", str(python), str(base / "run.py")),
            *(str(base), str(bwrap_path.resolve()), str(python.resolve())),
        ],
        env={"PYTHONPATH": str(base / "src"), "PATH": "/usr/bin:/bin", "HOME": str(base)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    hello, memory, fork = report["hello"], report["memory"], report["fork"]
    assert hello["status"] == "succeeded", hello
    assert hello["stdout"] == "1000\n"
    assert (base / "home" / "f").stat().st_uid == 65534  # nobody's, who ran it
    assert hello["enforcement"]["memory"].startswith("RLIMIT_AS=134217728")
    assert hello["enforcement"]["pids"].startswith(
        "RLIMIT_NPROC=32 on the sandbox's own tasks"
        if Path("/usr/bin/prlimit").is_file()
        else "RLIMIT_NPROC="
    )
    assert hello["enforcement"]["cgroup"].startswith("none: ")
    assert "RLIMIT_CPU" in hello["enforcement"]["cpu"]
    assert memory["status"] == "failed"
    assert "MemoryError" in memory["stderr"]
    assert fork["status"] == "succeeded", fork
    assert int(fork["stdout"]) < 32, fork


@pytest.mark.bwrap
def test_interpreter_probe_is_cached_on_disk(
    host_python: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second process does not re-run the probe; a changed interpreter is probed again."""
    import jhansi.sandbox.bwrap.interpreter as interpreter_module

    copy = tmp_path / "python3"
    shutil.copy2(host_python, copy)
    calls: list[str] = []
    real_ask = interpreter_module.ask_interpreter

    def counting_ask(path: str, code: str) -> bytes:
        calls.append(path)
        return real_ask(path, code)

    monkeypatch.setattr(interpreter_module, "ask_interpreter", counting_ask)
    cache_dir = tmp_path / "cache"
    first = interpreter_module._probe(str(copy), cache_dir)
    assert len(calls) == 1
    assert (cache_dir / "interpreters.json").is_file()
    assert interpreter_module._probe(str(copy), cache_dir) == first
    assert len(calls) == 1  # answered from the disk cache
    os.utime(copy, ns=(0, 0))  # a "new" interpreter at the same path
    interpreter_module._probe(str(copy), cache_dir)
    assert len(calls) == 2
    interpreter_module._probe(str(copy), None)  # no cache: always asks
    assert len(calls) == 3


# -- the gate: the run is recorded while the sandbox boots, before any of its code runs ----


def _gated(spec: SandboxSpec) -> SandboxSpec:
    """``spec`` with ``--gate``, as the runner builds it."""
    from jhansi.sandbox.interface import GATE_FD

    argv = list(spec.argv)
    return replace(spec, argv=(*argv[:4], "--gate", GATE_FD, *argv[4:]))


def test_nothing_of_the_script_runs_before_before_start_returns(sandbox: Sandbox) -> None:
    marker = sandbox.home / "ran"
    spec = _gated(
        sandbox.spec(
            """
            import os
            open(os.path.expanduser("~/ran"), "w").write(open("/work/ticket").read())
            print("ran")
            """
        )
    )
    seen: list[bool] = []

    def before_start() -> None:
        time.sleep(0.5)  # the sandbox boots meanwhile, and waits
        seen.append(marker.exists())
        (sandbox.project / "ticket").write_text("written before the start")

    result = sandbox.backend.run(spec, Recorder(), before_start=before_start)
    assert result.status == ExecStatus.SUCCEEDED, result.error or result.stderr
    assert seen == [False]
    assert marker.read_text() == "written before the start"
    assert not _leftover_cgroups()


def test_the_record_is_written_once_the_sandbox_joined_its_cgroup(sandbox: Sandbox) -> None:
    """``before_start`` (the ledger's record) waits for the child to join the cgroup: a
    join waits for the kernel's RCU grace period, which a busy second CPU doubles."""
    spec = _gated(sandbox.spec("print('ran')\n"))
    members: list[int] = []

    def before_start() -> None:
        for group in _leftover_cgroups():  # this run's, still in use
            members.extend(int(p) for p in (group / "cgroup.procs").read_text().split())

    result = sandbox.backend.run(spec, Recorder(), before_start=before_start)
    assert out(result) == "ran\n"
    if "cgroup" not in result.enforcement.get("cpu", ""):
        pytest.skip("the run had no cgroup")  # pragma: no cover (CI runs as root)
    assert members, "before_start ran before the sandbox was in its cgroup"
    assert not _leftover_cgroups()


def test_a_failing_before_start_runs_nothing_and_leaves_nothing(sandbox: Sandbox) -> None:
    spec = _gated(sandbox.spec(f"open('/home/sandbox/ran', 'w').write('{CANARY}')\n"))

    def before_start() -> None:
        time.sleep(0.3)
        raise RuntimeError("the ledger is full")

    with pytest.raises(RuntimeError, match="the ledger is full"):
        sandbox.backend.run(spec, Recorder(), before_start=before_start)
    time.sleep(0.3)
    assert not (sandbox.home / "ran").exists()
    assert _host_processes_with("/opt/jhansi/entry.py") == []
    assert not _leftover_cgroups()


def test_a_closed_gate_exits_without_running_anything(sandbox: Sandbox) -> None:
    """entry.py's side alone: the gate closed unopened means status 125, nothing run."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                jhansi.sandbox.entry.__file__,
                "--gate",
                str(read_end),
                "--",
                "-c-not-a-script",
            ],
            pass_fds=(read_end,),
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(read_end)
    assert (proc.returncode, proc.stdout, proc.stderr) == (125, b"", b"")


def test_without_a_gate_before_start_still_runs_first(sandbox: Sandbox) -> None:
    spec = sandbox.spec("print(open('/work/ticket').read())\n")

    def before_start() -> None:
        (sandbox.project / "ticket").write_text("first")

    result = sandbox.backend.run(spec, Recorder(), before_start=before_start)
    assert out(result) == "first\n"
