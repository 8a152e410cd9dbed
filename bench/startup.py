"""Start-up cost: ``jhansi --version`` against ``python -c pass``, median of interleaved runs.

Run: ``uv run python bench/startup.py [--runs N]``. Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    runs = parser.parse_args().runs
    script = Path(sys.executable).with_name("jhansi")
    jhansi = [str(script)] if script.exists() else [sys.executable, "-m", "jhansi"]
    jhansi.append("--version")
    python = [sys.executable, "-c", "pass"]
    _time(jhansi), _time(python)  # warm the page cache
    ours, base = [], []
    for _ in range(runs):  # interleaved, so drift hits both alike
        ours.append(_time(jhansi))
        base.append(_time(python))
    m_ours, m_base = statistics.median(ours), statistics.median(base)
    print(f"jhansi --version: median {m_ours * 1000:.1f} ms over {runs} runs")
    print(f"python -c pass:   median {m_base * 1000:.1f} ms over {runs} runs")
    print(f"ratio: {m_ours / m_base:.2f}x")


if __name__ == "__main__":
    main()
