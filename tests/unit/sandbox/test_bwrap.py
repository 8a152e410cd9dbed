"""The bwrap backend's pure parts: bwrap's options, the host root, seccomp, limits planning."""

from __future__ import annotations

import json
import os
import resource
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from jhansi.errors import SandboxError
from jhansi.sandbox import limits as limits_module
from jhansi.sandbox.bwrap.backend import _Run
from jhansi.sandbox.bwrap.binary import BwrapFeatures, parse_features
from jhansi.sandbox.bwrap.interpreter import Interpreter
from jhansi.sandbox.bwrap.options import (
    build_command,
    build_options,
    check_spec,
    group_file,
    passwd_file,
)
from jhansi.sandbox.bwrap.root import HostRoot, host_root
from jhansi.sandbox.bwrap.seccomp import (
    _ABIS,
    DENIED_SYSCALLS,
    MODE_CHECKED_SYSCALLS,
    seccomp_filter,
)
from jhansi.sandbox.interface import (
    PYTHON,
    THREAD_ENV,
    ExecStatus,
    Limits,
    Mount,
    SandboxSpec,
    TailBuffer,
    threads_enforcement,
)
from jhansi.sandbox.limits import CgroupLayout, _Cgroup, parse_layout, plan_limits

LIMITS = Limits(memory=1 << 30, cpus=1.5, pids=64, tmp_size=1 << 24, timeout=30, output_limit=100)
FEATURES = BwrapFeatures(size=True, perms=True, disable_userns=True)
ROOT = HostRoot(
    symlinks=(("usr/bin", "/bin"),),
    binds=("/usr", "/opt/py"),
    masks=("/opt/py/lib/python3.12/site-packages",),
    proc_masks=(("/proc/acpi", True), ("/proc/keys", False)),
)


class Data:
    """Hands out fake file descriptors and remembers what each would hold."""

    def __init__(self) -> None:
        self.contents: dict[int, bytes] = {}

    def __call__(self, content: bytes) -> int:
        fd = 100 + len(self.contents)
        self.contents[fd] = content
        return fd


def spec(tmp_path: Path, **changes: object) -> SandboxSpec:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / ".env").write_text("secret")
    (project / ".git").mkdir(exist_ok=True)
    (tmp_path / "entry.py").write_text("")
    (tmp_path / "sock").write_text("")
    values: dict[str, object] = {
        "run_id": "r1",
        "argv": (PYTHON, "-I", "-S", "/opt/jhansi/entry.py", "--", "/work/s.py", "arg"),
        "mounts": (
            Mount(tmp_path / "entry.py", "/opt/jhansi/entry.py"),
            Mount(project, "/work"),
            Mount(project / ".env", "/work/.env", kind="empty"),
            Mount(project / ".git", "/work/.git", kind="empty"),
            Mount(tmp_path / "sock", "/run/egress.sock", kind="socket"),
            Mount(tmp_path, "/home/sandbox", read_only=False),
        ),
        "env": {"HOME": "/home/sandbox", "A": "b c"},
        "limits": LIMITS,
        "image": "unused",
        "python": None,
    }
    values.update(changes)
    return SandboxSpec(**values)  # type: ignore[arg-type]


def ops(args: list[str]) -> list[tuple[str, ...]]:
    """The options grouped with their arguments, for readable assertions."""
    arity = {
        "--setenv": 2,
        "--ro-bind": 2,
        "--bind": 2,
        "--symlink": 2,
        "--ro-bind-data": 2,
        "--uid": 1,
        "--gid": 1,
        "--hostname": 1,
        "--cap-drop": 1,
        "--dir": 1,
        "--perms": 1,
        "--size": 1,
        "--tmpfs": 1,
        "--remount-ro": 1,
        "--proc": 1,
        "--dev": 1,
        "--chdir": 1,
        "--seccomp": 1,
    }
    grouped, i = [], 0
    while i < len(args):
        n = arity.get(args[i], 0)
        grouped.append(tuple(args[i : i + n + 1]))
        i += n + 1
    return grouped


# -- bwrap's options -----------------------------------------------------------------------


def test_every_namespace_is_new_and_nothing_is_inherited(tmp_path: Path) -> None:
    grouped = ops(build_options(spec(tmp_path), ROOT, FEATURES, Data()))
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"):
        assert (flag,) in grouped
    assert ("--new-session",) in grouped
    assert ("--clearenv",) in grouped
    assert ("--cap-drop", "ALL") in grouped
    assert ("--uid", "1000") in grouped
    assert ("--gid", "1000") in grouped
    assert ("--hostname", "sandbox") in grouped
    threads = [("--setenv", name, "2") for name in THREAD_ENV]  # ceil(1.5 CPUs)
    assert [g for g in grouped if g[0] == "--setenv"] == [
        *threads,
        ("--setenv", "HOME", "/home/sandbox"),
        ("--setenv", "A", "b c"),
    ]


def test_thread_pools_follow_the_cpu_limit_unless_env_sets_them(tmp_path: Path) -> None:
    given = spec(tmp_path, env={"OPENBLAS_NUM_THREADS": "8"})
    setenv = {
        g[1]: g[2] for g in ops(build_options(given, ROOT, FEATURES, Data())) if g[0] == "--setenv"
    }
    assert setenv["OPENBLAS_NUM_THREADS"] == "8"
    assert setenv["OMP_NUM_THREADS"] == setenv["MKL_NUM_THREADS"] == "2"
    half = spec(tmp_path, limits=replace(LIMITS, cpus=0.5))
    assert ("--setenv", "OMP_NUM_THREADS", "1") in ops(build_options(half, ROOT, FEATURES, Data()))
    assert "OPENBLAS_NUM_THREADS as given by --env" in threads_enforcement(given)


def test_an_old_bwrap_gets_no_options_it_lacks(tmp_path: Path) -> None:
    old = BwrapFeatures(size=True, perms=False, disable_userns=False)
    args = build_options(spec(tmp_path), ROOT, old, Data())
    assert "--perms" not in args
    assert "--disable-userns" not in args


def test_the_root_is_built_from_nothing_and_remounted_read_only_last(tmp_path: Path) -> None:
    grouped = ops(build_options(spec(tmp_path), ROOT, FEATURES, Data(), seccomp=b"x" * 8))
    assert ("--symlink", "usr/bin", "/bin") in grouped
    assert ("--ro-bind", "/usr", "/usr") in grouped
    assert ("--ro-bind", "/opt/py", "/opt/py") in grouped
    mask = grouped.index(("--tmpfs", "/opt/py/lib/python3.12/site-packages"))
    assert grouped[mask + 1] == ("--remount-ro", "/opt/py/lib/python3.12/site-packages")
    mounting = {"--ro-bind", "--bind", "--tmpfs", "--ro-bind-data", "--proc", "--dev", "--dir"}
    last_mount = max(i for i, g in enumerate(grouped) if g[0] in mounting)
    root_ro = grouped.index(("--remount-ro", "/"))
    assert root_ro > last_mount
    assert grouped[root_ro + 1] == ("--chdir", "/work")
    assert grouped[-1][0] == "--seccomp"


def test_tmp_and_shm_are_capped_dev_and_proc_read_only(tmp_path: Path) -> None:
    data = Data()
    grouped = ops(build_options(spec(tmp_path), ROOT, FEATURES, data))
    for path, cap in (("/tmp", 1 << 24), ("/dev/shm", 1 << 24)):
        i = grouped.index(("--tmpfs", path))
        assert grouped[i - 2 : i] == [("--size", str(cap)), ("--perms", "1777")]
    big = spec(tmp_path, limits=Limits(1 << 30, 1.0, 64, 1 << 30, 30, 100))
    shm = ops(build_options(big, ROOT, FEATURES, Data())).index(("--tmpfs", "/dev/shm"))
    assert ops(build_options(big, ROOT, FEATURES, Data()))[shm - 2] == ("--size", str(64 << 20))
    assert grouped.index(("--remount-ro", "/dev")) > grouped.index(("--tmpfs", "/dev/shm"))
    proc = grouped.index(("--proc", "/proc"))
    proc_ro = grouped.index(("--remount-ro", "/proc"))
    acpi = grouped.index(("--tmpfs", "/proc/acpi"))
    keys = next(i for i, g in enumerate(grouped) if g[-1:] == ("/proc/keys",))
    assert proc < acpi < proc_ro
    assert proc < keys < proc_ro
    assert data.contents[int(grouped[keys][1])] == b""


def test_spec_mounts_in_order_with_masks_and_sockets(tmp_path: Path) -> None:
    data = Data()
    grouped = ops(build_options(spec(tmp_path), ROOT, FEATURES, data))
    kinds = ("--ro-bind", "--bind", "--ro-bind-data", "--tmpfs", "--remount-ro")
    targets = ("/work", "/home/sandbox", "/run/", "/opt/j")
    mounts = [g for g in grouped if g[0] in kinds and g[-1].startswith(targets)]
    project = str(tmp_path / "project")
    env_fd = next(g[1] for g in mounts if g[0] == "--ro-bind-data")
    assert mounts == [
        ("--ro-bind", str(tmp_path / "entry.py"), "/opt/jhansi/entry.py"),
        ("--ro-bind", project, "/work"),
        ("--ro-bind-data", env_fd, "/work/.env"),
        ("--tmpfs", "/work/.git"),
        ("--remount-ro", "/work/.git"),
        ("--ro-bind", str(tmp_path / "sock"), "/run/egress.sock"),
        ("--bind", str(tmp_path), "/home/sandbox"),
    ]
    assert data.contents[int(env_fd)] == b""


def test_parent_directories_are_made_on_the_root_only(tmp_path: Path) -> None:
    extra = Mount(tmp_path / "entry.py", "/work/sub/file")
    mounts = (*spec(tmp_path).mounts, extra)
    grouped = ops(build_options(spec(tmp_path, mounts=mounts), ROOT, FEATURES, Data()))
    made = [g[1] for g in grouped if g[0] == "--dir"]
    assert made == ["/etc", "/home", "/opt", "/run", "/opt/jhansi"]
    assert grouped[grouped.index(("--dir", "/etc")) - 1] == ("--perms", "0755")


def test_etc_is_synthetic(tmp_path: Path) -> None:
    data = Data()
    grouped = ops(build_options(spec(tmp_path), ROOT, FEATURES, data))
    files = {g[2]: data.contents[int(g[1])] for g in grouped if g[0] == "--ro-bind-data"}
    assert files["/etc/passwd"] == passwd_file(1000, 1000)
    assert files["/etc/group"] == group_file(1000)
    assert b"127.0.0.1\tlocalhost" in files["/etc/hosts"]
    assert b"sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh\n" in passwd_file(1000, 1000)
    assert b"sandbox:x:1000:\n" in group_file(1000)


def test_a_nul_byte_cannot_smuggle_options_into_args(tmp_path: Path) -> None:
    evil = spec(tmp_path, env={"X": "a\0--bind\0/\0/host"})
    with pytest.raises(SandboxError, match="NUL"):
        build_options(evil, ROOT, FEATURES, Data())


def test_command_runs_the_real_interpreter(tmp_path: Path) -> None:
    interpreter = Interpreter(Path("/opt/py/bin/python3.12"), "3.12.1", "cpython", (), ())
    assert build_command(spec(tmp_path), interpreter) == [
        "/opt/py/bin/python3.12",
        "-I",
        "-S",
        "/opt/jhansi/entry.py",
        "--",
        "/work/s.py",
        "arg",
    ]
    other = spec(tmp_path, argv=("/bin/true", "x"))
    assert build_command(other, interpreter) == ["/bin/true", "x"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"uid": 0}, "root"),
        ({"gid": 0}, "root"),
        ({"runtime": "runsc"}, "runsc"),
        ({"argv": ()}, "empty"),
        ({"env": {"A=B": "x"}}, "invalid environment"),
        ({"mounts": (Mount(Path("/nonexistent-jhansi"), "/x"),)}, "does not exist"),
        ({"mounts": (Mount(Path("/"), "relative"),)}, "absolute"),
        ({"mounts": (Mount(Path("/"), "/a/../b"),)}, "normalized"),
        ({"mounts": (Mount(Path("/"), "/"),)}, "below /"),
    ],
)
def test_specs_the_backend_cannot_carry_out_are_refused(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(SandboxError, match=message):
        check_spec(spec(tmp_path, **changes))


def test_features_come_from_help() -> None:
    help_text = "    --size BYTES  x\n    --perms OCTAL  y\n"
    assert parse_features(help_text) == BwrapFeatures(True, True, False)
    assert parse_features("") == BwrapFeatures(False, False, False)


# -- the host's root -----------------------------------------------------------------------


def test_host_root_binds_the_system_and_masks_every_site_dir(tmp_path: Path) -> None:
    base = tmp_path / "host"
    for directory in (
        "usr/bin",
        "usr/lib/python3/dist-packages",
        "usr/lib/python3.11",
        "usr/local/lib/python3.11/dist-packages",
        "usr/share/zoneinfo",
        "etc/ssl",
        "etc/fonts/conf.d",
        "var/cache/fontconfig",
        "opt/py/bin",
        "opt/py/lib/python3.12/site-packages/inner/site-packages",
        "proc/acpi",
    ):
        (base / directory).mkdir(parents=True)
    (base / "bin").symlink_to("usr/bin")
    (base / "lib").symlink_to("usr/lib")
    (base / "sbin").mkdir()  # not usrmerged
    (base / "etc/ld.so.cache").write_text("")
    (base / "etc/localtime").symlink_to("../usr/share/zoneinfo/UTC")
    (base / "proc/keys").write_text("")
    interpreter = Interpreter(
        path=Path("/opt/py/bin/python3.12"),
        version="3.12.1",
        implementation="cpython",
        prefixes=(Path("/opt/py"),),
        site_dirs=(Path("/opt/py/lib/python3.12/site-packages"),),
    )
    root = host_root(interpreter, base=base, home=tmp_path / "home")
    assert root.symlinks == (
        ("usr/bin", "/bin"),
        ("usr/lib", "/lib"),
        ("../usr/share/zoneinfo/UTC", "/etc/localtime"),
    )
    # fontconfig's configuration and the host's font cache: without them matplotlib's
    # `fc-list` writes "Fontconfig error: Cannot load default config file" on every run.
    assert root.binds == (
        "/usr",
        "/sbin",
        "/etc/ld.so.cache",
        "/etc/fonts",
        "/var/cache/fontconfig",
        "/opt/py",
    )
    assert root.masks == (
        "/opt/py/lib/python3.12/site-packages",
        "/usr/lib/python3/dist-packages",
        "/usr/local/lib/python3.11/dist-packages",
    )
    assert root.proc_masks == (("/proc/acpi", True), ("/proc/keys", False))


@pytest.mark.parametrize("prefix", ["/", "/home/u"])
def test_an_interpreter_that_would_expose_too_much_is_refused(tmp_path: Path, prefix: str) -> None:
    interpreter = Interpreter(
        Path(f"{prefix}/bin/python3"), "3.12.1", "cpython", (Path(prefix),), ()
    )
    with pytest.raises(SandboxError, match="would expose"):
        host_root(interpreter, base=tmp_path, home=Path("/home/u"))


# -- seccomp -------------------------------------------------------------------------------


def evaluate(program: bytes, nr: int, *args: int, arch: int = 0xC000003E) -> int:
    """Run a classic-BPF seccomp program on one syscall, as the kernel would."""
    data = struct.pack("=iI8x6Q", nr, arch, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = (int(v) for v in insns[pc])
        pc += 1
        if code == 0x20:  # ld [k]
            acc = int(struct.unpack_from("=I", data, k)[0])
        elif code == 0x06:  # ret k
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf


ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050001, 0x00050026


def test_seccomp_on_x86_64() -> None:
    program = seccomp_filter("x86_64")
    assert program is not None
    assert evaluate(program, 0) == ALLOW  # read
    assert evaluate(program, 250) == EPERM  # keyctl
    assert evaluate(program, 425) == EPERM  # io_uring_setup
    assert evaluate(program, 437) == ENOSYS  # openat2
    assert evaluate(program, 90, 0, 0o755) == ALLOW  # chmod
    assert evaluate(program, 90, 0, 0o4755) == EPERM
    assert evaluate(program, 91, 3, 0o2755) == EPERM  # fchmod
    assert evaluate(program, 268, 0, 0, 0o6755) == EPERM  # fchmodat
    assert evaluate(program, 257, 0, 0, 0o1101, 0o644) == ALLOW  # openat
    assert evaluate(program, 257, 0, 0, 0o1101, 0o4755) == EPERM
    assert evaluate(program, 83, 0, 0o1777) == ALLOW  # mkdir, sticky is fine
    assert evaluate(program, 83, 0, 0o2777) == EPERM
    assert evaluate(program, 0x40000000 | 250) == EPERM  # x32
    assert evaluate(program, 288, arch=0x40000003) == EPERM  # i386's keyctl
    assert evaluate(program, 3, arch=0x40000003) == EPERM  # and all else of i386
    assert set(DENIED_SYSCALLS) <= set(_ABIS["x86_64"].numbers)
    assert set(MODE_CHECKED_SYSCALLS) == set(_ABIS["x86_64"].mode_arg)


def test_seccomp_on_aarch64_and_elsewhere() -> None:
    program = seccomp_filter("aarch64")
    assert program is not None
    aarch64 = 0xC00000B7
    assert evaluate(program, 63, arch=aarch64) == ALLOW  # read
    assert evaluate(program, 219, arch=aarch64) == EPERM  # keyctl
    assert evaluate(program, 53, 0, 0, 0o4755, arch=aarch64) == EPERM  # fchmodat
    assert evaluate(program, 56, 0, 0, 0o101, 0o600, arch=aarch64) == ALLOW  # openat
    assert evaluate(program, 250) == EPERM  # an x86_64 syscall here
    assert seccomp_filter("mips") is None


# -- how a run ended -----------------------------------------------------------------------


def run(status: bytes, *, stderr: bytes = b"", **kwargs: object) -> _Run:
    result = _Run(TailBuffer(100), TailBuffer(100), status=status, **kwargs)  # type: ignore[arg-type]
    result.stderr.feed(stderr)
    return result


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (run(b'{ "child-pid": 5 }\n{ "exit-code": 0 }\n'), (ExecStatus.SUCCEEDED, 0, None)),
        (run(b'{ "exit-code": 3 }\n'), (ExecStatus.FAILED, 3, None)),
        (run(b'{ "exit-code": 139 }\n'), (ExecStatus.FAILED, 139, None)),
        (run(b'{ "exit-code": 137 }\n', oom=True), (ExecStatus.KILLED_OOM, None, 9)),
        (run(b'{ "exit-code": 0 }\n', oom=True), (ExecStatus.SUCCEEDED, 0, None)),
        (run(b'{ "child-pid": 5 }\n', timed_out=True), (ExecStatus.TIMED_OUT, None, 9)),
        (run(b"", oom=True, returncode=-9), (ExecStatus.KILLED_OOM, None, 9)),
    ],
)
def test_status_from_bwraps_json_status(outcome: _Run, expected: tuple[object, ...]) -> None:
    result = outcome.result({})
    assert (result.status, result.exit_code, result.signal) == expected


def test_no_exit_code_means_bwrap_failed_before_the_command() -> None:
    failed = run(
        b'{ "child-pid": 5 }\n', stderr=b"bwrap: Can't mkdir /x: Read-only\n", returncode=1
    )
    result = failed.result({"k": "v"})
    assert result.status is ExecStatus.ENGINE_ERROR
    assert result.error == "bwrap: Can't mkdir /x: Read-only"
    assert result.enforcement == {"k": "v"}
    assert "exited with status 1" in run(b"", returncode=1).result({}).error


# -- limits --------------------------------------------------------------------------------

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
8:pids:/
4:memory:/svc/abc
1:cpu,cpuacct:/
0::/
"""


def test_layout_of_a_hybrid_machine_uses_v1(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
    layout = parse_layout(HYBRID_MOUNTINFO.format(unified=tmp_path), HYBRID_CGROUP)
    assert layout.v2 is None
    assert layout.v1 == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "memory": Path("/sys/fs/cgroup/memory/svc/abc"),
        "pids": Path("/sys/fs/cgroup/pids"),
    }


def test_layout_of_a_unified_machine_uses_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mountinfo = f"29 23 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    layout = parse_layout(mountinfo, "0::/user.slice/session-1.scope\n")
    assert layout == CgroupLayout(v1={}, v2=tmp_path)


def test_layout_of_a_bind_mounted_v1_subtree() -> None:
    mountinfo = "35 31 0:32 /docker/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    layout = parse_layout(mountinfo, "4:memory:/docker/c1/inner\n")
    assert layout.v1 == {"memory": Path("/sys/fs/cgroup/memory/inner")}


@pytest.mark.parametrize("prlimit", ["/usr/bin/prlimit", None])
def test_without_cgroups_an_unprivileged_user_gets_rlimits(
    monkeypatch: pytest.MonkeyPatch, prlimit: str | None
) -> None:
    monkeypatch.setattr(limits_module, "_prlimit", lambda: prlimit)
    planned = plan_limits(LIMITS, "r1", layout=CgroupLayout(), uid=1000, count=lambda uid: 7)
    assert planned.cgroup is None
    assert planned.rlimits == [
        (resource.RLIMIT_AS, 1 << 30, 1 << 30),
        (resource.RLIMIT_NPROC, 71, 71),
        (resource.RLIMIT_CPU, 46, 47),
        (resource.RLIMIT_FSIZE, 1 << 30, 1 << 30),
    ]
    pids = planned.enforcement["pids"]
    assert "RLIMIT_NPROC=71 on bwrap (the limit plus the 7 tasks uid 1000 already had" in pids
    if prlimit:
        # Inside the sandbox's user namespace the kernel counts the sandbox's tasks only.
        assert planned.command_prefix == [prlimit, "--nproc=64", "--"]
        assert pids.startswith("RLIMIT_NPROC=64 on the sandbox's own tasks")
    else:
        assert planned.command_prefix == []
        assert pids.endswith("no prlimit(1) to set the limit itself inside")
    assert planned.enforcement["memory"].startswith("RLIMIT_AS=1073741824 per process")
    assert planned.enforcement["cpu"].startswith("not throttled")
    assert planned.enforcement["cgroup"].startswith("none: ")


def test_root_without_a_pids_cgroup_is_refused() -> None:
    with pytest.raises(SandboxError, match="no pids cgroup could be made"):
        plan_limits(LIMITS, "r1", layout=CgroupLayout(), uid=0)


def test_a_v1_cgroup_gets_every_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Cgroup, "open_procs", lambda self: None)  # no cgroupfs here
    parents = {name: tmp_path / name for name in ("memory", "pids", "cpu")}
    for parent in parents.values():
        parent.mkdir()
    planned = plan_limits(LIMITS, "run/1", layout=CgroupLayout(v1=parents), uid=0)
    assert planned.cgroup is not None
    assert planned.rlimits == []
    assert planned.command_prefix == []
    memory = planned.cgroup.dirs["memory"]
    assert memory.parent == parents["memory"]
    assert memory.name.startswith("jhansi-")
    assert (memory / "memory.limit_in_bytes").read_text() == str(1 << 30)
    assert (planned.cgroup.dirs["pids"] / "pids.max").read_text() == "64"
    assert (planned.cgroup.dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "150000"
    assert (planned.cgroup.dirs["cpu"] / "cpu.cfs_period_us").read_text() == "100000"
    assert planned.enforcement["pids"] == "cgroup v1 pids.max=64 (processes and threads)"
    assert "memory.limit_in_bytes=1073741824" in planned.enforcement["memory"]


def _fake_bwrap(directory: Path, version: str, *, size: bool = True) -> tuple[Path, Path]:
    """A stand-in for bwrap that answers --version and --help and counts how often it is
    asked (a real bwrap cannot count its callers)."""
    calls = directory / "calls"
    path = directory / "bwrap"
    options = "--size BYTES --perms OCTAL --disable-userns" if size else "--perms OCTAL"
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$1" >> "{calls}"\n'
        f'if [ "$1" = --version ]; then echo "bubblewrap {version}"; else echo "{options}"; fi\n'
    )
    path.chmod(0o755)
    return path, calls


def test_bwrap_version_and_features_are_asked_once_per_binary(tmp_path: Path) -> None:
    from jhansi.sandbox.bwrap.binary import FACTS_STORE, bwrap_facts, find_bwrap

    path, calls = _fake_bwrap(tmp_path, "0.8.0")
    cache = tmp_path / "cache"
    assert bwrap_facts(path, cache) == ("0.8.0", BwrapFeatures(True, True, True))
    assert calls.read_text().split() == ["--help", "--version"]
    assert find_bwrap(str(path), cache_dir=cache).version == "0.8.0"
    assert bwrap_facts(path, cache) == ("0.8.0", BwrapFeatures(True, True, True))
    assert calls.read_text().split() == ["--help", "--version"]  # not asked again
    # Another binary at the same path (an upgrade) is asked again.
    _fake_bwrap(tmp_path, "0.11.0", size=False)
    os.utime(path, ns=(1, 1))
    assert bwrap_facts(path, cache) == ("0.11.0", BwrapFeatures(False, True, False))
    assert len(calls.read_text().split()) == 4
    # A damaged entry is not trusted: the binary is asked.
    store = cache / FACTS_STORE
    entry = json.loads(store.read_text())
    store.write_text(json.dumps({k: {"version": 7} for k in entry}))
    assert bwrap_facts(path, cache) == ("0.11.0", BwrapFeatures(False, True, False))
    assert len(calls.read_text().split()) == 6
    store.write_text("{not json")
    assert bwrap_facts(path, cache) == ("0.11.0", BwrapFeatures(False, True, False))


def test_the_host_root_is_kept_while_its_directories_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept on disk per interpreter; a changed directory it looked into, or a damaged
    entry, makes it worked out again (the real host's directories, the real probe)."""
    from jhansi.sandbox.bwrap import root as root_module
    from jhansi.sandbox.bwrap.interpreter import default_python, probe_interpreter

    interpreter = probe_interpreter(default_python(), tmp_path)
    cache = tmp_path / "cache"
    fresh = root_module.host_root(interpreter)
    computed: list[int] = []
    real = root_module.host_root

    def counting(*args: Any, **kwargs: Any) -> HostRoot:
        computed.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(root_module, "host_root", counting)
    keep = root_module.cached_host_root.__wrapped__  # past the per-process cache
    assert keep(interpreter, cache) == fresh
    assert keep(interpreter, cache) == fresh
    assert len(computed) == 1
    (entry,) = (cache / "host-roots").iterdir()
    # A directory it looked into changes (here: its recorded state no longer matches).
    document = json.loads(entry.read_text())
    document["watched"][0][2] = 1
    entry.write_text(json.dumps(document))
    assert keep(interpreter, cache) == fresh
    assert len(computed) == 2
    entry.write_text("{damaged")
    assert keep(interpreter, cache) == fresh
    assert len(computed) == 3
    assert keep(interpreter, cache) == fresh
    assert len(computed) == 3
    # A root kept by a version whose rules bound less (before /etc/fonts) is not used.
    monkeypatch.setattr(root_module, "_HOST_ROOT_RULES", root_module._HOST_ROOT_RULES + 1)
    assert keep(interpreter, cache) == fresh
    assert len(computed) == 4
    assert len(list((cache / "host-roots").iterdir())) == 2


def test_a_checkouts_version_file_does_not_choose_the_host_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for a version manager's shim (pyenv's are shell scripts that read
    # .python-version from the working directory upwards): what it would run for a
    # checkout's version file must not be what jhansi probes and binds.
    import sys

    from jhansi.sandbox.bwrap.interpreter import resolve_python

    real = os.path.realpath(sys.executable)
    decoy = tmp_path / "decoy-python"
    decoy.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    decoy.chmod(0o755)
    shim = tmp_path / "python3"
    shim.write_text(
        "#!/bin/sh\n"
        f"if [ -e .python-version ]; then exec {decoy} -c \"print('{decoy}')\"; fi\n"
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".python-version").write_text("decoy\n")
    monkeypatch.chdir(checkout)
    resolve_python.cache_clear()
    assert resolve_python(str(shim)) == real
