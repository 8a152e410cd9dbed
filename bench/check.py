"""``jhansi check`` on a script with about 50 locked packages, against offline OSV data.

Run: ``uv run python bench/check.py [--runs N] [--advisory-db DIR]``. The first check
locks the script against the package index and fills the caches (metadata, provenance,
the OSV index); it is reported as the cold time. Then the warm checks (the lock is
reused, nothing is asked of the index) are timed, interleaved with ``jhansi --version``
so that drift hits both alike. Prints the medians and their ratio; the target is a warm
check under one second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The full advisory database beside the repository, else the fixture copy.
SHARED_DB = ROOT.parent / "shared" / "data" / "advisory-database"
FIXTURE_DB = ROOT / "tests" / "fixtures" / "advisory-database"

#: Popular projects whose lock has about fifty packages.
SCRIPT = """\
# /// script
# dependencies = [
#   "requests", "boto3", "pandas", "scikit-learn", "matplotlib", "sqlalchemy",
#   "fastapi", "httpx", "rich", "jinja2", "pyyaml", "click",
# ]
# ///
print("not run: jhansi check only plans, locks and checks")
"""


def _time(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--advisory-db", type=Path, default=None)
    options = parser.parse_args()
    database = options.advisory_db or (SHARED_DB if SHARED_DB.is_dir() else FIXTURE_DB)
    executable = Path(sys.executable).with_name("jhansi")
    jhansi = [str(executable)] if executable.exists() else [sys.executable, "-m", "jhansi"]
    with tempfile.TemporaryDirectory(prefix="jhansi-bench-check-") as scratch:
        work = Path(scratch)
        (work / "script.py").write_text(SCRIPT)
        (work / "jhansi.toml").write_text(
            f'[sandbox]\nbackend = "bwrap"\n[policy]\nadvisory_db = "{database}"\n'
        )
        env = {**os.environ, "JHANSI_HOME": str(work / "home")}
        check = [*jhansi, "check", "script.py"]
        cold = _time(check, work, env)
        lock = work / "pylock.script.toml"
        packages = lock.read_text().count("[[packages]]")
        ours, base = [], []
        for _ in range(options.runs):
            ours.append(_time(check, work, env))
            base.append(_time([*jhansi, "--version"], work, env))
    warm, version = statistics.median(ours), statistics.median(base)
    print(f"advisory data: {database}")
    print(f"locked packages: {packages}")
    print(f"cold check (lock, index metadata, provenance, OSV index): {cold:.2f} s")
    print(f"warm jhansi check: median {warm * 1000:.0f} ms over {options.runs} runs")
    print(f"jhansi --version:  median {version * 1000:.0f} ms")
    print(
        f"ratio: {warm / version:.1f}x --version; target: warm check under 1 s: "
        f"{'met' if warm < 1.0 else 'missed'}"
    )


if __name__ == "__main__":
    main()
