"""The error root: two lines for people, a fixed exit code for machines."""

from __future__ import annotations

from jhansi.errors import ConfigError, ExitCode, JhansiError, LedgerError, SandboxError


def test_diagnostics_are_message_then_hint() -> None:
    error = SandboxError("no engine", hint="start it")
    assert error.diagnostics() == "no engine\nstart it"
    assert str(error) == "no engine"


def test_each_kind_has_its_documented_code() -> None:
    assert ConfigError("x").exit_code == ExitCode.USAGE == 2
    assert SandboxError("x").exit_code == ExitCode.SANDBOX == 4
    assert LedgerError("x").exit_code == ExitCode.LEDGER == 5
    assert JhansiError("x", exit_code=ExitCode.POLICY).exit_code == 3


def test_exit_codes_are_distinct() -> None:
    values = [code.value for code in ExitCode]
    assert len(values) == len(set(values))
