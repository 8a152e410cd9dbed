"""What the helper loads before it serves is what runs need: a forked run imports nothing.

A module a run imports in the helper's child is imported again by every run (the
child's imports die with it), which is milliseconds of every warm run. Each case
here does in a fresh interpreter what the helper does (``jhansi.helper.preload``, and
``preload_later`` as it does while idle, then a fork per run, each child running
``jhansi run`` as the helper's child does),
with real runs on bubblewrap and rootful Docker, and reports which modules each
run's child imported. Warm runs (the same script again, and new code whose needs
were met before) must import none; a run with new requirements (locked by the real
uv against the index) must not import the heavy libraries the cold path uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import backend_env, require_backend

#: In a fresh interpreter: preload as the helper does, then one forked child per run.
DRIVER = r"""
import json, os, sys
from jhansi import helper
helper.preload()
helper.preload_later()
import jhansi.cli
jhansi.cli.IN_HELPER = True
loaded = set(sys.modules)
report = []
for argv in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            jhansi.cli.main(argv)
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        new = sorted(set(sys.modules) - loaded)
        os.write(write, json.dumps({"code": code, "new": new}).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.waitpid(pid, 0)
    report.append(json.loads(data))
print("REPORT " + json.dumps(report))
"""

#: What the path of a new set of requirements must find loaded (each costs tens of ms).
HEAVY = ("pypi_simple", "pydantic", "cyclonedx", "bs4", "pip_audit", "jhansi.supply.sbom")


def _runs(cwd: Path, runs: list[list[str]], env: dict[str, str]) -> list[dict[str, object]]:
    import os

    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(runs)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=600,
        check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-4000:]
    report: list[dict[str, object]] = json.loads(line.removeprefix("REPORT "))
    for argv, outcome in zip(runs, report, strict=True):
        assert outcome["code"] == 0, (argv, proc.stderr[-4000:])
    return report


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_warm_runs_import_nothing(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    require_backend(request, backend)
    (tmp_path / "first.py").write_text("print(6 * 7)\n")
    (tmp_path / "second.py").write_text("import json\nprint(json.dumps([6, 7]))\n")
    report = _runs(
        tmp_path,
        [
            ["run", "-q", "first.py"],  # the first run of this sandbox and decision
            ["run", "-q", "first.py"],  # the same script again
            ["run", "-q", "second.py"],  # new code, the same (empty) needs
            ["run", "-q", "-"],  # code from stdin (the driver's stdin is empty)
        ],
        backend_env(backend),
    )
    for outcome in report[1:]:
        assert outcome["new"] == [], outcome


@pytest.mark.network
def test_new_requirements_find_the_heavy_libraries_loaded(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    require_backend(request, "bwrap")
    header = '# /// script\n# dependencies = ["six==1.16.0"]\n# ///\nimport six\n'
    (tmp_path / "a.py").write_text(header + "print(six.__version__)\n")
    (tmp_path / "b.py").write_text(header + "print(six.PY3)\n")
    report = _runs(
        tmp_path,
        [
            ["run", "-q", "a.py"],  # a new set of requirements: locked, checked, installed
            ["run", "-q", "a.py"],  # its decision, reused
            ["run", "-q", "b.py"],  # new code with the same needs
        ],
        backend_env("bwrap"),
    )
    cold = report[0]["new"]
    assert isinstance(cold, list)
    assert not [m for m in cold if m.split(".")[0] in HEAVY or m in HEAVY], cold
    for outcome in report[1:]:
        assert outcome["new"] == [], outcome
