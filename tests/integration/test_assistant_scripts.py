"""A newcomer's first hour: twelve scripts as an assistant writes them, run with no flags.

The scripts in ``tests/fixtures/assistant/`` are kept as an assistant wrote them: no
PEP 723 header, no sandbox in mind. They import pandas, matplotlib, scikit-learn,
PIL, bs4, requests, sqlite3, pydantic, yaml, OpenCV, numpy and jinja2, and most of
them write their result next to themselves. Each must succeed with ``jhansi run
SCRIPT`` and nothing else (the backend chosen through the settings a user of that
backend has): jhansi finds and locks the dependencies on the real index, the
sandbox loads them (OpenCV's headless build), and the writes land in the sandbox's
copy-on-write layer, never in the project. The one that calls a public API fails,
as it must with no network, and is told how to allow it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import backend_env, prepare_jhansi_home, require_backend, run_jhansi

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "assistant"

# script: (text its stdout must hold, the file it writes in /work or None)
EXPECTED: dict[str, tuple[tuple[str, ...], str | None]] = {
    "01_sales_summary.py": (("North", "Saved summary to summary.csv"), "summary.csv"),
    "02_plot_chart.py": (("Chart saved to chart.png",), "chart.png"),
    "03_train_model.py": (("Test accuracy: ", "Model saved to model.joblib"), "model.joblib"),
    "04_make_thumbnail.py": (("Thumbnail size: 128x96",), "thumbnail.png"),
    "05_parse_html.py": (("Title: Quarterly report", "Q3: https://example.com/q3.pdf"), None),
    "07_inventory_db.py": (("gadget: 30.00", "Total inventory value: 84.75"), "inventory.db"),
    "08_validate_users.py": (
        ("valid: Ada (36)", "invalid: Bob - 1 error(s)", "invalid: Cy - 1 error(s)"),
        None,
    ),
    "09_update_config.py": (("  port: 6543", "Wrote config.yaml"), "config.yaml"),
    "10_detect_edges.py": (("Edge pixels: ", "Saved edges.png"), "edges.png"),
    "11_fit_trend.py": (("slope=3.0 ", "Wrote trend.txt"), "trend.txt"),
    "12_render_report.py": (("<td>beta</td><td>78.5</td>",), "report.html"),
}
NETWORK = "06_github_repos.py"


@pytest.mark.network
@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_an_assistants_scripts_run_with_no_flags(
    request: pytest.FixtureRequest, backend: str, shared_dir: Path, jhansi_home: Path
) -> None:
    require_backend(request, backend)
    prepare_jhansi_home(backend, jhansi_home)
    project = shared_dir / "analysis"
    shutil.copytree(SCRIPTS, project)
    original = {p.name: p.read_bytes() for p in project.iterdir()}
    env = backend_env(backend)

    for name, (lines, written) in EXPECTED.items():
        proc = run_jhansi("run", "--json", name, cwd=project, env=env)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        result = json.loads(proc.stdout)
        assert result["status"] == "succeeded", name
        stdout = result["stdout"]["text"]
        for line in lines:
            assert line in stdout, (name, stdout)
        assert "Fontconfig" not in result["stderr"]["text"], (name, result["stderr"])
        changed = {(c["area"], c["path"]) for c in result["files_changed"]}
        if written is not None:
            assert ("/work", written) in changed, (name, changed)
            assert result["layer"], name  # where /work's writes landed
            assert not (project / written).exists(), f"{name} wrote into the project"

    # cv2 is OpenCV's headless build, and only that one.
    lock = (project / "pylock.10_detect_edges.toml").read_text()
    assert 'name = "opencv-python-headless"' in lock
    assert 'name = "opencv-python"\n' not in lock

    # The network script fails (no network) and is told how to allow what it tried.
    proc = run_jhansi("run", NETWORK, cwd=project, env=env)
    assert proc.returncode != 0
    assert "tried to reach api.github.com:443" in proc.stderr, proc.stderr
    assert "--allow-host api.github.com" in proc.stderr, proc.stderr

    # The project holds what it held, plus the locks jhansi wrote beside the scripts.
    for path in project.iterdir():
        if path.name in original:
            assert path.read_bytes() == original[path.name], path.name
        else:
            assert path.name.startswith("pylock."), path.name
            assert path.name.endswith(".toml"), path.name
