"""What ``jhansi run`` costs over the raw sandbox, for a hello-world script.

For each backend present, runs interleaved (so drift hits both alike):

- ``jhansi run --backend bwrap examples/hello.py`` against a plain ``bwrap`` with the
  same hardening flags (namespaces, dropped capabilities, a read-only root built
  from the interpreter's directories, the project read-only at /work, a home, a
  tmpfs /tmp, the same bootstrap and script);
- ``jhansi run --backend docker`` against a plain ``docker run`` with the same
  flags (no network, read-only root, no capabilities, no-new-privileges, non-root
  user, memory/CPU/pids limits, tmpfs /tmp, init, the same mounts).

Prints the medians, the bwrap difference (target: at most +150 ms) and the docker
ratio (target: at most 1.25x).

Run: ``uv run python bench/run_overhead.py [--runs N] [--image IMAGE]`` (as root
for the docker part on a rootful engine; the image must be present).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.py"
ENTRY = ROOT / "jhansi" / "sandbox" / "entry.py"
ENV = {
    "HOME": "/home/sandbox",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}


def _time(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{proc.stderr.decode(errors='replace')}")
    return elapsed


def _interleave(
    a: list[str], b: list[str], runs: int, env_a: dict[str, str]
) -> tuple[float, float]:
    _time(a, env_a), _time(b)  # warm caches (page cache, the engine's image)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(_time(a, env_a))
        tb.append(_time(b))
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
    env = {**os.environ, "JHANSI_HOME": str(scratch / "jhansi-home")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with compiled bytecode, as installed
    home = scratch / "home"
    home.mkdir()
    os.chown(home, 1000, 1000) if os.geteuid() == 0 else None
    try:
        if shutil.which("bwrap"):
            ours = [jhansi, "run", "-q", "--backend", "bwrap", "--sandbox", "bench", str(HELLO)]
            python = _real_python()
            m_ours, m_raw = _interleave(ours, raw_bwrap(python, home), args.runs, env)
            print(
                f"bwrap:  jhansi run {m_ours * 1000:6.1f} ms   raw bwrap {m_raw * 1000:6.1f} ms"
                f"   difference +{(m_ours - m_raw) * 1000:.0f} ms (target <= +150 ms)"
            )
            pinned = [*ours[:2], "--python", python, *ours[2:]]
            m_pinned, m_raw = _interleave(pinned, raw_bwrap(python, home), args.runs, env)
            print(f"bwrap:  with --python set: +{(m_pinned - m_raw) * 1000:.0f} ms")
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
            m_ours, m_raw = _interleave(ours, raw_docker(args.image, home), args.runs, env)
            print(
                f"docker: jhansi run {m_ours * 1000:6.1f} ms   raw docker run {m_raw * 1000:6.1f}"
                f" ms   ratio {m_ours / m_raw:.2f}x (target <= 1.25x)"
            )
        else:
            print(f"docker: no engine or no image {args.image}, skipped")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
