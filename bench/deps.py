"""What dependencies cost: a warm run, and a cold one, each against doing it by hand.

1. **Warm**: ``jhansi run --backend bwrap`` of a numpy + requests + PyYAML script
   whose lock and environment exist, against a raw ``bwrap`` (same hardening, the
   same thread-count variables, and the same cgroup limits when jhansi's run had a
   cgroup) running the same script with the same environment mounted. Target: at
   most 1.25x. Measured as a user gets it (the helper, ``jhansi.helper``, running:
   the first run starts it, and the bench waits for it), and also with
   ``JHANSI_HELPER=off`` (every run starts Python and imports jhansi afresh).
2. **Cold**: the same run with an empty environment cache, no lock and no kept
   decision or resolution (uv's own cache warm), against doing the same work by
   hand: ``uv pip compile`` + ``uv pip install --target`` for the same requirements
   and target, with the flags jhansi installs with (``--link-mode hardlink``, and
   ``--compile-bytecode`` when jhansi's environment has bytecode, which warm runs
   need), then running the script in the same raw bwrap as in 1. Target: at most
   1.3x. Timed as a user gets it, with the helper running. Also printed: where a cold
   run's time goes (uv's calls, timed by the ``--debug`` log of a second cold run,
   which runs without the helper; the sandboxed run; and jhansi's own share, the
   rest), and that ``--debug`` run's own time.

Run: ``uv run python bench/deps.py [--runs N]``. Needs the package index once (to
warm uv's cache); prints medians and ratios.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_overhead import ENTRY, Cgroup, raw_bwrap, uses_cgroup, wait_for_helper

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "deps_detected.py"


def _time(argv: list[str], env: dict[str, str], preexec: Callable[[], None] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, check=False, preexec_fn=preexec)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def _uv_seconds(debug: str) -> float:
    """The time jhansi's uv calls took, from its ``--debug`` lines (``uv took S s``)."""
    return sum(
        float(line.split("uv took ", 1)[1].split()[0])
        for line in debug.splitlines()
        if "uv took " in line
    )


def main() -> None:
    """Measure and print both ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    import uv

    uv_bin = uv.find_uv_bin()
    jhansi = str(Path(sys.executable).with_name("jhansi"))
    scratch = Path(tempfile.mkdtemp(prefix="jhansi-bench-deps-"))
    scratch.chmod(0o755)
    env = {
        **os.environ,
        "JHANSI_HOME": str(scratch / "jhansi-home"),
        "JHANSI_HELPER": "on",
        "JHANSI_HELPER_DIR": str(scratch / "helper"),  # this bench's helper, stopped at its end
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    no_helper = {**env, "JHANSI_HELPER": "off"}
    project = scratch / "project"
    project.mkdir()
    script = project / SCRIPT.name
    shutil.copy(SCRIPT, script)
    lock = project / f"pylock.{script.stem}.toml"
    run = [jhansi, "run", "-q", "--backend", "bwrap", "--sandbox", "bench", str(script)]
    try:
        # Warm uv's cache and learn the target, the lock and the environment.
        first = subprocess.run(
            [*run[:2], "--json", *run[2:]], capture_output=True, env=env, check=True
        )
        deps = json.loads(first.stdout)["dependencies"]
        envdir = scratch / "jhansi-home" / "cache" / "envs" / deps["environment"]
        python = json.loads(first.stdout)["backend_details"]["python"]
        requirements = [r["spec"] for r in deps["requirements"]]

        # 1. warm: jhansi against raw bwrap with the same environment mounted
        home = scratch / "home"
        home.mkdir()
        raw = raw_bwrap(python, home)
        at = raw.index(str(ROOT))  # the project, not jhansi's checkout, at /work
        raw[at : at + 2] = [str(project), "/work"]
        cut = raw.index("--chdir")  # mounts go before the root is made read-only
        raw[cut:cut] = ["--ro-bind", str(envdir), "/opt/jhansi/env"]
        raw[-1] = f"/work/{script.name}"
        raw[raw.index("--") : raw.index("--")] = ["--path", "/opt/jhansi/env"]
        assert str(ENTRY) in raw
        cgroup = Cgroup() if uses_cgroup(json.loads(first.stdout)["enforcement"]) else None
        pre = cgroup.preexec if cgroup else None
        try:
            _time(run, env), _time(raw, env, pre), _time(run, no_helper)
            wait_for_helper(jhansi, env)
            ours, base, cold_start = [], [], []
            for _ in range(args.runs):
                ours.append(_time(run, env))
                base.append(_time(raw, env, pre))
                cold_start.append(_time(run, no_helper))
        finally:
            if cgroup:
                cgroup.remove()
        m_ours, m_base = statistics.median(ours), statistics.median(base)
        m_off = statistics.median(cold_start)
        print(
            f"warm: jhansi run {m_ours * 1000:.0f} ms, raw bwrap with the environment"
            f"{' (same cgroup limits)' if cgroup else ''} "
            f"{m_base * 1000:.0f} ms, ratio {m_ours / m_base:.2f}x (target <= 1.25x); "
            f"with JHANSI_HELPER=off {m_off * 1000:.0f} ms, {m_off / m_base:.2f}x"
        )

        # 2. cold: empty environment cache and no lock, against doing the same by hand:
        #    lock, install with the flags jhansi uses, run the script in the same raw bwrap
        platform_tag = deps["platform"]
        minor = ".".join(deps["python"].split(".")[:2])
        marker = json.loads((envdir / ".jhansi-environment.json").read_text())
        install_flags = ["--link-mode", "hardlink"]
        if marker["bytecode"]:
            install_flags.append("--compile-bytecode")
        cgroup = Cgroup() if cgroup else None
        pre = cgroup.preexec if cgroup else None
        cold, cold_debug, manual, manual_run, in_uv = [], [], [], [], []

        def forget() -> None:
            for kept in ("envs", "warm", "resolved"):  # no environment, decision, lock
                shutil.rmtree(scratch / "jhansi-home" / "cache" / kept, ignore_errors=True)
            lock.unlink(missing_ok=True)

        try:
            wait_for_helper(jhansi, env)
            for i in range(max(3, args.runs // 3)):
                # As a user gets it (the helper running), then once more with --debug
                # (which runs without the helper) for uv's share, from its log.
                forget()
                cold.append(_time(run, env))
                forget()
                start = time.perf_counter()
                proc = subprocess.run(
                    [jhansi, "--debug", *run[1:]], capture_output=True, env=env, check=True
                )
                cold_debug.append(time.perf_counter() - start)
                in_uv.append(_uv_seconds(proc.stderr.decode(errors="replace")))
                by_hand = scratch / f"by-hand-{i}"
                compiled = scratch / f"pylock.manual-{i}.toml"
                start = time.perf_counter()
                subprocess.run(
                    [
                        uv_bin,
                        "pip",
                        "compile",
                        "-",
                        "--format",
                        "pylock.toml",
                        "-o",
                        str(compiled),
                        "--python-version",
                        minor,
                        "--python-platform",
                        platform_tag,
                        "--quiet",
                    ],
                    input="\n".join(requirements).encode(),
                    check=True,
                    env=env,
                )
                subprocess.run(
                    [
                        uv_bin,
                        "pip",
                        "install",
                        "--target",
                        str(by_hand),
                        "--no-build",
                        "--python-version",
                        minor,
                        "--python-platform",
                        platform_tag,
                        "--python",
                        python,
                        *install_flags,
                        "--quiet",
                        "-r",
                        str(compiled),
                    ],
                    check=True,
                    env=env,
                )
                installed = time.perf_counter() - start
                with_env = list(raw)
                with_env[with_env.index(str(envdir))] = str(by_hand)
                ran = _time(with_env, env, pre)
                manual.append(installed + ran)
                manual_run.append(ran)
        finally:
            if cgroup:
                cgroup.remove()
        m_cold, m_manual = statistics.median(cold), statistics.median(manual)
        print(
            f"cold: jhansi run {m_cold * 1000:.0f} ms, by hand (uv compile + uv install "
            f"{' '.join(install_flags)} + raw bwrap run {statistics.median(manual_run) * 1000:.0f}"
            f" ms) {m_manual * 1000:.0f} ms, ratio {m_cold / m_manual:.2f}x (target <= 1.3x)"
        )
        m_uv, m_ran = statistics.median(in_uv), statistics.median(manual_run)
        m_debug = statistics.median(cold_debug)
        print(
            f"cold, where the time goes: uv {m_uv * 1000:.0f} ms (its calls, from a --debug "
            f"run's log), the sandboxed run {m_ran * 1000:.0f} ms (as raw bwrap), jhansi's own "
            f"share {(m_cold - m_uv - m_ran) * 1000:.0f} ms "
            f"({(m_cold - m_uv - m_ran) / m_cold:.0%}); "
            f"the --debug run itself (no helper: Python starts and imports jhansi) "
            f"{m_debug * 1000:.0f} ms, {m_debug / m_manual:.2f}x"
        )
    finally:
        subprocess.run([jhansi, "helper", "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
