"""What ``jhansi run`` costs over the raw sandbox, for a hello-world script.

For each backend present, runs interleaved (so drift hits both alike):

- ``jhansi run --backend bwrap examples/hello.py`` against a plain ``bwrap`` with the
  same hardening flags (namespaces, dropped capabilities, a read-only root built
  from the interpreter's directories, the project read-only at /work, a home, a
  tmpfs /tmp, the same bootstrap and script), in a cgroup with the same limits
  when jhansi's run had one;
- ``jhansi run --backend docker`` against a plain ``docker run`` with the same
  flags (no network, read-only root, no capabilities, no-new-privileges, non-root
  user, memory/CPU/pids limits, tmpfs /tmp, init, the same mounts).

Both raw runs get the thread-count variables jhansi sets for a CPU limit
(``OMP_NUM_THREADS`` and friends).

Prints the medians, the bwrap difference (target: at most +150 ms) and the docker
ratio (target: at most 1.10x). jhansi is measured as a user gets it, with its
helper (``jhansi.helper``) serving the runs, in a helper directory of the bench's
own; both are also measured with ``JHANSI_HELPER=off`` (CI's way, where a docker run
also imports the docker SDK).

Run: ``uv run python bench/run_overhead.py [--runs N] [--image IMAGE]`` (as root
for the docker part on a rootful engine; the image must be present).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.py"
ENTRY = ROOT / "jhansi" / "sandbox" / "entry.py"
#: jhansi's limits (its defaults), which the raw runs get too.
MEMORY, CPUS, PIDS = 1 << 30, 1, 256
ENV = {
    "HOME": "/home/sandbox",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    # What a CPU-limited sandbox tells numerical libraries (jhansi does the same).
    **dict.fromkeys(
        (
            "OMP_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS",
            "NUMEXPR_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS",
        ),
        str(CPUS),
    ),
}


class Cgroup:
    """A cgroup with jhansi's default limits, for the raw bwrap runs to be fair.

    jhansi puts each bwrap sandbox into a cgroup (memory, pids, CPU quota) when it
    can; by hand one would do the same (``systemd-run --scope -p ...``, or as here,
    directly). Made once (making one costs well under a millisecond); ``preexec``
    moves the forked child into it before bwrap runs, as jhansi does.
    """

    def __init__(self) -> None:
        self.dirs: list[Path] = []
        name = f"jhansi-bench-{os.getpid()}-{os.urandom(3).hex()}"
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists():
            root = v2.parent
            wanted = [c for c in ("memory", "pids", "cpu") if c in v2.read_text().split()]
            (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
            path = root / name
            path.mkdir()
            self.dirs = [path]
            (path / "memory.max").write_text(str(MEMORY))
            (path / "pids.max").write_text(str(PIDS))
            (path / "cpu.max").write_text(f"{CPUS * 100_000} 100000")
            return
        for controller, files in (
            ("memory", {"memory.limit_in_bytes": MEMORY}),
            ("pids", {"pids.max": PIDS}),
            ("cpu", {"cpu.cfs_period_us": 100_000, "cpu.cfs_quota_us": CPUS * 100_000}),
        ):
            own = _own_cgroup(controller)
            path = Path("/sys/fs/cgroup") / controller / own.lstrip("/") / name
            path.mkdir()
            self.dirs.append(path)
            if (path / "memory.memsw.limit_in_bytes").exists():
                files["memory.memsw.limit_in_bytes"] = MEMORY  # no swap beyond it, as jhansi
            for file, value in files.items():
                (path / file).write_text(str(value))

    def preexec(self) -> None:
        """In the child: join the cgroup, the way jhansi does.

        On v1 the single-threaded child writes ``0`` to ``tasks`` (this skips the
        kernel's thread-group lock and its RCU grace period, 10-20 ms); on v2 it
        writes to ``cgroup.procs``.
        """
        for path in self.dirs:
            name = "tasks" if (path / "tasks").exists() else "cgroup.procs"
            (path / name).write_text("0")

    def remove(self) -> None:
        """Remove the cgroup (empty by then)."""
        for path in self.dirs:
            for _ in range(200):  # the last sandbox's processes may still be exiting
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.01)


def _own_cgroup(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise OSError(f"no {controller} cgroup")


def uses_cgroup(enforcement: dict[str, str]) -> bool:
    """Whether jhansi's run (its ``--json`` enforcement) was limited by a cgroup."""
    return "cgroup" in enforcement.get("cpu", "")


def _time(
    argv: list[str], env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, check=False, preexec_fn=preexec)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{proc.stderr.decode(errors='replace')}")
    return elapsed


def _interleave(
    a: list[str],
    b: list[str],
    runs: int,
    env_a: dict[str, str],
    preexec_b: Callable[[], None] | None = None,
) -> tuple[float, float]:
    _time(a, env_a), _time(b, None, preexec_b)  # warm caches (page cache, the engine's image)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(_time(a, env_a))
        tb.append(_time(b, None, preexec_b))
    return statistics.median(ta), statistics.median(tb)


def _real_python() -> str:
    out = subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return os.path.realpath(out.stdout.strip())


def raw_bwrap(python: str, home: Path) -> list[str]:
    """A plain bwrap with jhansi's hardening, written out by hand."""
    prefix = str(Path(python).resolve().parent.parent)
    argv = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--cap-drop",
        "ALL",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--hostname",
        "sandbox",
        "--tmpfs",
        "/",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("bin", "lib", "lib64", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", str(path.readlink()), f"/{name}"]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), f"/{name}"]
    argv += [
        "--ro-bind",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--ro-bind",
        prefix,
        prefix,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(256 << 20),
        "--tmpfs",
        "/tmp",
        "--ro-bind",
        str(ROOT),
        "/work",
        "--bind",
        str(home),
        "/home/sandbox",
        "--ro-bind",
        str(ENTRY),
        "/opt/jhansi/entry.py",
        "--chdir",
        "/work",
        "--remount-ro",
        "/",
    ]
    for key, value in ENV.items():
        argv += ["--setenv", key, value]
    return [*argv, python, "-I", "-S", "/opt/jhansi/entry.py", "--", "/work/examples/hello.py"]


def raw_docker(image: str, home: Path) -> list[str]:
    """A plain docker run with jhansi's hardening, written out by hand."""
    argv = [
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        "1000:1000",
        "--init",
        "--memory",
        "1g",
        "--memory-swap",
        "1g",
        "--cpus",
        "1",
        "--pids-limit",
        "256",
        "--tmpfs",
        f"/tmp:rw,nosuid,nodev,size={256 << 20},mode=1777",
        "-v",
        f"{ROOT}:/work:ro",
        "-v",
        f"{home}:/home/sandbox",
        "-v",
        f"{ENTRY}:/opt/jhansi/entry.py:ro",
        "-w",
        "/work",
    ]
    for key, value in ENV.items():
        argv += ["-e", f"{key}={value}"]
    return [
        *argv,
        image,
        "python3",
        "-I",
        "-S",
        "/opt/jhansi/entry.py",
        "--",
        "/work/examples/hello.py",
    ]


def main() -> None:
    """Measure each backend that is present and print the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--image", default=os.environ.get("JHANSI_TEST_IMAGE", "jhansi-test-python:bookworm")
    )
    args = parser.parse_args()
    jhansi = str(Path(sys.executable).with_name("jhansi"))
    scratch = Path(tempfile.mkdtemp(prefix="jhansi-bench-"))
    scratch.chmod(0o755)
    env = {
        **os.environ,
        "JHANSI_HOME": str(scratch / "jhansi-home"),
        "JHANSI_HELPER": "on",
        "JHANSI_HELPER_DIR": str(scratch / "helper"),  # this bench's helper, stopped at its end
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with compiled bytecode, as installed
    no_helper = {**env, "JHANSI_HELPER": "off"}
    home = scratch / "home"
    home.mkdir()
    os.chown(home, 1000, 1000) if os.geteuid() == 0 else None
    try:
        if shutil.which("bwrap"):
            ours = [jhansi, "run", "-q", "--backend", "bwrap", "--sandbox", "bench", str(HELLO)]
            python = _real_python()
            first = subprocess.run(
                [*ours[:2], "--json", *ours[2:]], capture_output=True, env=env, check=True
            )
            cgroup = Cgroup() if uses_cgroup(json.loads(first.stdout)["enforcement"]) else None
            pre = cgroup.preexec if cgroup else None
            wait_for_helper(jhansi, env)
            try:
                raw = raw_bwrap(python, home)
                m_ours, m_raw = _interleave(ours, raw, args.runs, env, pre)
                print(
                    f"bwrap:  jhansi run {m_ours * 1000:6.1f} ms   raw bwrap "
                    f"{m_raw * 1000:6.1f} ms{' (same cgroup limits)' if cgroup else ''}"
                    f"   difference +{(m_ours - m_raw) * 1000:.0f} ms (target <= +150 ms)"
                )
                m_off, m_raw = _interleave(ours, raw, args.runs, no_helper, pre)
                print(f"bwrap:  with JHANSI_HELPER=off: +{(m_off - m_raw) * 1000:.0f} ms")
                pinned = [*ours[:2], "--python", python, *ours[2:]]
                m_pinned, m_raw = _interleave(pinned, raw, args.runs, env, pre)
                print(f"bwrap:  with --python set: +{(m_pinned - m_raw) * 1000:.0f} ms")
            finally:
                if cgroup:
                    cgroup.remove()
        else:
            print("bwrap:  not installed, skipped")
        probe = subprocess.run(
            ["docker", "image", "inspect", args.image], capture_output=True, check=False
        )
        if shutil.which("docker") and probe.returncode == 0:
            ours = [
                jhansi,
                "run",
                "-q",
                "--backend",
                "docker",
                "--image",
                args.image,
                "--sandbox",
                "bench",
                str(HELLO),
            ]
            subprocess.run(ours, capture_output=True, env=env, check=True)
            wait_for_helper(jhansi, env)
            raw = raw_docker(args.image, home)
            m_ours, m_raw = _interleave(ours, raw, args.runs, env)
            print(
                f"docker: jhansi run {m_ours * 1000:6.1f} ms   raw docker run {m_raw * 1000:6.1f}"
                f" ms   ratio {m_ours / m_raw:.2f}x (target <= 1.10x)"
            )
            # CI's way: no helper, so each run imports jhansi and the docker SDK.
            m_off, m_raw = _interleave(ours, raw, args.runs, no_helper)
            print(
                f"docker: with JHANSI_HELPER=off: ratio {m_off / m_raw:.2f}x "
                f"(+{(m_off - m_raw) * 1000:.0f} ms)"
            )
        else:
            print(f"docker: no engine or no image {args.image}, skipped")
    finally:
        subprocess.run([jhansi, "helper", "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def wait_for_helper(jhansi: str, env: dict[str, str]) -> None:
    """Wait until the helper that an earlier run started serves and has loaded everything
    (it serves after ~0.5 s, and loads the new-requirements path within ~2 s more)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = subprocess.run(
            [jhansi, "helper", "status", "--json"], env=env, capture_output=True, check=True
        )
        helpers = json.loads(status.stdout)["helpers"]
        if helpers and all(h.get("loaded", True) for h in helpers):
            return
        time.sleep(0.2)
    sys.exit("the helper did not start within 30 s (see `jhansi helper status`)")


if __name__ == "__main__":
    main()
