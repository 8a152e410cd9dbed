"""The root's ``--debug`` after any command, and what ``jhansi run`` refuses as usage."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup

from jhansi.cli._fastpath import parse_run
from jhansi.cli._state import CliState
from jhansi.cli.app import app
from tests.unit.cli.conftest import Invoke
from tests.unit.cli.test_fastpath import typer_values


def command_paths() -> list[list[str]]:
    """Every command of ``jhansi``, as the words that name it (``["ledger", "log"]``)."""
    root = typer.main.get_command(app)

    def walk(command: Any, path: list[str]) -> Iterator[list[str]]:
        if path:
            yield path
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    return list(walk(root, []))


@pytest.fixture(autouse=True)
def _restore_debug(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``--debug`` sets JHANSI_DEBUG and the root logger's level: undone after each test."""
    monkeypatch.delenv("JHANSI_DEBUG", raising=False)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def test_the_tree_is_walked() -> None:
    paths = command_paths()
    assert ["run"] in paths
    assert ["ledger", "verify"] in paths
    assert ["helper", "stop"] in paths
    assert len(paths) > 25


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_command_takes_debug_after_its_name(cli: Invoke, path: list[str]) -> None:
    # --help answers once the whole line is parsed: an unknown --debug would be exit 2.
    result = cli(*path, "--debug", "--help")
    assert result.code == 0, result.stdout + result.stderr
    assert "--debug" in result.stdout


def test_run_debug_after_the_command_is_debug_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    after = typer_values(["--debug", "-q", "s.py", "a"], monkeypatch)
    assert os.environ["JHANSI_DEBUG"] == "1"
    monkeypatch.delenv("JHANSI_DEBUG")
    before = typer_values(["-q", "s.py", "a"], monkeypatch, root=["--debug"])
    assert os.environ["JHANSI_DEBUG"] == "1"
    assert after == before
    assert (after["script"], after["args"]) == ("s.py", ["a"])


def test_debug_after_the_command_sets_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    from jhansi.cli import _execute

    seen: list[CliState] = []
    monkeypatch.setattr(_execute, "execute_run", lambda state, **_: seen.append(state))
    app(args=["run", "--debug", "s.py"], obj=CliState(), standalone_mode=False)
    assert seen[0].debug


def test_after_the_script_debug_is_the_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    values = typer_values(["s.py", "--debug"], monkeypatch)
    assert (values["script"], values["args"]) == ("s.py", ["--debug"])
    assert "JHANSI_DEBUG" not in os.environ
    assert parse_run(["s.py", "--debug"]) == values


def test_a_script_named_like_an_option_follows_double_dash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = typer_values(["--", "--debug", "x"], monkeypatch)
    assert (values["script"], values["args"]) == ("--debug", ["x"])
    assert "JHANSI_DEBUG" not in os.environ
    assert parse_run(["--", "--debug", "x"]) == values


def test_the_fast_path_leaves_debug_to_typer() -> None:
    assert parse_run(["--debug", "s.py"]) is None
    assert parse_run(["-q", "--debug", "s.py"]) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--frobnicate", "s.py"],
        ["run", "--version", "s.py"],
        ["run", "-x", "s.py"],
        ["run", "-q", "--verbose", "s.py"],
        ["ledger", "log", "--version"],
    ],
)
def test_an_unknown_option_before_the_script_is_usage_and_not_a_run(
    cli: Invoke, argv: list[str], jhansi_home: Path
) -> None:
    result = cli(*argv)
    assert result.code == 2, result.stdout + result.stderr
    assert "No such option" in result.stderr
    assert not (jhansi_home / "data" / "ledger").exists()  # nothing recorded
