"""Offline OSV audits: cold index build and warm audit of 50 packages.

Run: ``uv run python bench/vulns_data.py [--db PATH] [--runs N]``.

The 50 packages are the most-downloaded projects (``top-pypi-packages.csv``)
that have advisories in the data, each at version ``1.0``: the heavy case, where
every package has records to evaluate. "warm, fresh process" is what ``jhansi
check`` pays: interpreter start, imports, fingerprint walk, index reads.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The project's shared data sits beside the repository (../shared/data).
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

WARM_SNIPPET = """
import sys, time
start = time.perf_counter()
from pathlib import Path
from jhansi.supply.vulns import make_source
from jhansi.supply.vulns.interface import Package
names = sys.argv[3].split(",")
source = make_source(advisory_db=Path(sys.argv[1]), cache_dir=Path(sys.argv[2]))
result = source.audit([Package(n, "1.0") for n in names])
print(time.perf_counter() - start, len(result.vulnerabilities))
"""


def _packages(db: Path, top: Path, count: int) -> list[str]:
    from packaging.utils import canonicalize_name

    have = {p.name for p in (db / "vulns").iterdir()} if (db / "vulns").is_dir() else set()
    names: list[str] = []
    with top.open(newline="") as handle:
        for row in csv.DictReader(handle):
            name = str(canonicalize_name(row["project"]))
            if not have or name in have:
                names.append(name)
            if len(names) == count:
                break
    return names


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=SHARED / "advisory-database")
    parser.add_argument("--top", type=Path, default=SHARED / "top-pypi-packages.csv")
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    from jhansi.supply.vulns import make_source
    from jhansi.supply.vulns.interface import Package

    names = _packages(args.db, args.top, 50)
    packages = [Package(n, "1.0") for n in names]
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch)
        start = time.perf_counter()
        result = make_source(advisory_db=args.db, cache_dir=cache).audit(packages)
        cold = time.perf_counter() - start
        print(f"cold (index build + audit): {cold * 1000:.0f} ms")
        print(f"{len(names)} packages, {len(result.vulnerabilities)} findings")

        warm_in = []
        for _ in range(args.runs):
            start = time.perf_counter()
            make_source(advisory_db=args.db, cache_dir=cache).audit(packages)
            warm_in.append(time.perf_counter() - start)
        print(f"warm, in process: median {statistics.median(warm_in) * 1000:.1f} ms")

        argv = [sys.executable, "-c", WARM_SNIPPET, str(args.db), str(cache), ",".join(names)]
        inner, outer = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            outer.append(time.perf_counter() - start)
            inner.append(float(out.split()[0]))
        print(
            f"warm, fresh process: median {statistics.median(inner) * 1000:.1f} ms "
            f"(imports + audit), {statistics.median(outer) * 1000:.1f} ms with interpreter start"
        )


if __name__ == "__main__":
    main()
