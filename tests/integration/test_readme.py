"""The README says what jhansi really does: its help excerpts, commands and Python example.

Markers in README.md (HTML comments, invisible when rendered) tie a fenced block
to a check:

``<!-- help: jhansi CMD -->``
    the ```` ```text ```` block after it is an excerpt of ``jhansi CMD --help``
    (at 100 columns, no colour): every line but ``…`` must be a line of the real
    output, in order, after box-drawing characters and runs of spaces are
    normalised.
``<!-- runs -->``
    every ``$ `` command in the ```` ```console ```` block after it is run as
    written, with bash, in a fresh checkout-like project on bubblewrap, in the
    README's order (later blocks see what earlier ones did: the ledger, the
    sandboxes); it must exit 0, or N when the line ends in ``# exits N``.
``<!-- python -->``
    the ```` ```python ```` block after it is run; each ``print`` whose line
    ends in ``# TEXT`` must print a line starting with TEXT (up to a ``…``).

Commands that name an example elsewhere in the README (the quick start, the
secrets demo) are run by ``tests/integration/test_examples.py``, which checks
their output: :func:`test_every_example_command_is_run` makes sure each has a case
there or is in a ``runs`` block.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import backend_env, require_backend

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLES_TEST = (ROOT / "tests" / "integration" / "test_examples.py").read_text(encoding="utf-8")
HELP_ENV = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}
BOX = re.compile(r"[│╭╮╰╯─┃━┏┓┗┛┡┩┳┻╇]")
MARKED = re.compile(
    r"<!-- (help: (?P<help>[^>]+?)|runs|python) -->\n```(?P<lang>\w+)\n(?P<body>.*?)\n```",
    re.DOTALL,
)
EXITS = re.compile(r"\s+# exits (\d+)$")


@dataclass(frozen=True)
class Block:
    """A fenced block the README marked for checking."""

    kind: str
    """``help``, ``runs`` or ``python``."""
    body: str
    command: str = ""
    """For ``help``: the command whose help it excerpts."""


def marked_blocks() -> list[Block]:
    """Every marked block, in the README's order."""
    blocks = []
    for match in MARKED.finditer(README):
        kind = "help" if match["help"] else match[1]
        blocks.append(Block(kind, match["body"], (match["help"] or "").strip()))
    return blocks


def commands(body: str) -> list[str]:
    """The ``$ `` lines of a console block, without the prompt."""
    return [line[2:] for line in body.splitlines() if line.startswith("$ ")]


def normalise(line: str) -> str:
    """A help line without box drawing and with single spaces."""
    return " ".join(BOX.sub(" ", line).split())


def test_the_readme_marks_what_it_must() -> None:
    kinds = [(b.kind, b.command) for b in marked_blocks()]
    for command in ("jhansi", "jhansi run", "jhansi mcp"):
        assert ("help", command) in kinds, f"no help excerpt of `{command}`"
    assert ("python", "") in kinds
    assert sum(kind == "runs" for kind, _ in kinds) >= 5
    # a marker not followed directly by a fenced block would silently check nothing
    assert README.count("<!-- help:") + README.count("<!-- runs -->") + README.count(
        "<!-- python -->"
    ) == len(kinds)


@pytest.mark.parametrize(
    "block",
    [b for b in marked_blocks() if b.kind == "help"],
    ids=lambda b: b.command.replace(" ", "-"),
)
def test_help_excerpt_matches_the_real_help(block: Block) -> None:
    words = block.command.split()
    assert words[0] == "jhansi", block.command
    proc = subprocess.run(
        [sys.executable, "-m", "jhansi", *words[1:], "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, **HELP_ENV},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    real = [normalise(line) for line in proc.stdout.splitlines()]
    position = 0
    for line in block.body.splitlines():
        wanted = normalise(line)
        if not wanted or wanted == "…":
            continue
        try:
            position = real.index(wanted, position) + 1
        except ValueError:
            pytest.fail(f"`{block.command} --help` has no line {line!r} (in this order)")


def test_every_example_command_is_run() -> None:
    """Each README command naming an example is in a ``runs`` block or a case of test_examples."""
    run_here = {c for b in marked_blocks() if b.kind == "runs" for c in commands(b.body)}
    shown = re.findall(r"^\$ (.+)$", README, re.MULTILINE)
    for line in shown:
        if "examples/" not in line or line in run_here:
            continue
        command = EXITS.sub("", line)
        command = re.sub(r"^(pip install uv && )?(uv run (--no-dev )?)?", "", command)
        command = re.sub(r"\s+# .*$", "", command)
        assert f'"{command}"' in EXAMPLES_TEST, (
            f"`{line}` is neither in a runs block nor exercised by test_examples.py"
        )


@pytest.fixture
def checkout(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A project like a fresh checkout: the examples and the offline advisories."""
    require_backend(request, "bwrap")
    root = tmp_path / "jhansi"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "jhansi-readme"\n')
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("pylock.*"))
    fixtures = Path("tests") / "fixtures" / "advisory-database"
    shutil.copytree(ROOT / fixtures, root / fixtures)
    return root


def _env(checkout: Path) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "jhansi").is_file(), f"no jhansi command beside {sys.executable}"
    return {
        **os.environ,
        **backend_env("bwrap"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # `jhansi helper status|stop` look here, not at the helpers of the user running
        # the tests.
        "JHANSI_HELPER_DIR": str(checkout.parent / "helper"),
    }


@pytest.mark.bwrap
@pytest.mark.network
def test_runs_blocks_run_as_written(checkout: Path) -> None:
    env = _env(checkout)
    ran = 0
    for block in marked_blocks():
        if block.kind != "runs":
            continue
        for line in commands(block.body):
            expected = EXITS.search(line)
            proc = subprocess.run(
                ["bash", "-c", line],
                capture_output=True,
                text=True,
                env=env,
                cwd=checkout,
                timeout=300,
                check=False,
            )
            want = int(expected[1]) if expected else 0
            assert proc.returncode == want, f"$ {line}\n{proc.stdout}\n{proc.stderr}"
            ran += 1
    assert ran >= 15


@pytest.mark.bwrap
def test_python_example_runs(checkout: Path) -> None:
    (block,) = [b for b in marked_blocks() if b.kind == "python"]
    proc = subprocess.run(
        [sys.executable, "-c", block.body],
        capture_output=True,
        text=True,
        env=_env(checkout),
        cwd=checkout,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    promised = [
        line.split("  # ", 1)[1].split("…")[0]
        for line in block.body.splitlines()
        if line.lstrip().startswith("print(") and "  # " in line
    ]
    assert len(promised) == 2
    printed = proc.stdout.splitlines()
    assert len(printed) == len(promised), proc.stdout
    for line, start in zip(printed, promised, strict=True):
        assert line.startswith(start), (line, start)


def test_toml_examples_are_valid_settings(tmp_path: Path) -> None:
    """Every ``# jhansi.toml`` block is accepted by the settings loader as it stands."""
    from jhansi.config import file_layer, resolve

    blocks = re.findall(r"```toml\n(# jhansi\.toml\n.*?)```", README, re.DOTALL)
    assert len(blocks) >= 2
    for number, text in enumerate(blocks):
        path = tmp_path / f"{number}" / "jhansi.toml"
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
        resolve([file_layer(path, source="project config")])
