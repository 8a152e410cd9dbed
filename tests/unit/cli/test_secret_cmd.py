"""``jhansi secret set|ls|rm`` and doctor's secrets line, in-process and as real processes.

The keyring is the tests' :class:`StandInKeyring` (this headless machine has no
OS keyring; see its module); real ``jhansi`` processes load it through
``PYTHON_KEYRING_BACKEND``, sharing entries through a file in the test's
temporary directory. The environment fallback runs on keyring's own ``fail``
backend, which is what this machine really has. Every test checks that the
value never appears in anything jhansi prints or writes.
"""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.core
import pytest
from keyring.backends import fail

from jhansi.doctor import check_secrets
from jhansi.egress.secrets import SERVICE
from jhansi.paths import Paths
from tests.conftest import run_jhansi
from tests.unit.cli.conftest import CliResult, Invoke
from tests.unit.egress.keyring_stand_in import FILE_VARIABLE, IMPORT_PATH, StandInKeyring

VALUE = "ghp_DoNotPrintMe0123456789abcdef"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _restore_keyring() -> Iterator[None]:
    saved = keyring.core._keyring_backend
    yield
    keyring.core._keyring_backend = saved


@pytest.fixture
def ring() -> StandInKeyring:
    ring = StandInKeyring()
    keyring.set_keyring(ring)
    return ring


@pytest.fixture
def no_keyring() -> None:
    keyring.set_keyring(fail.Keyring())


def with_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> io.StringIO:
    stdin = io.StringIO(text)
    monkeypatch.setattr(sys, "stdin", stdin)
    return stdin


def never_shows(value: str, *results: CliResult | subprocess.CompletedProcess[str]) -> None:
    for result in results:
        assert value not in result.stdout
        assert value not in result.stderr


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


# -- in-process ------------------------------------------------------------------------------


def test_set_ls_rm_with_a_keyring(
    cli: Invoke, ring: StandInKeyring, monkeypatch: pytest.MonkeyPatch, jhansi_home: Path
) -> None:
    with_stdin(monkeypatch, VALUE + "\n")
    stored = cli("secret", "set", "GH_TOKEN")
    assert stored.code == 0, stored.stderr
    assert stored.stdout == "stored GH_TOKEN (keyring: keyring stand in StandInKeyring)\n"
    assert ring.entries == {f"{SERVICE}\0GH_TOKEN": VALUE}  # one trailing newline removed
    listed = cli("secret", "ls", "--json")
    assert json.loads(listed.stdout) == {
        "status": "ok",
        "backend": "keyring: keyring stand in StandInKeyring",
        "secrets": [{"name": "GH_TOKEN", "source": "keyring", "hosts": []}],
    }
    table = cli("secret", "ls")
    assert "GH_TOKEN" in table.stdout
    assert "keyring" in table.stdout
    removed = cli("secret", "rm", "GH_TOKEN")
    assert removed.code == 0
    assert removed.stdout.startswith("removed GH_TOKEN")
    assert ring.entries == {}
    empty = cli("secret", "ls")
    assert empty.stdout.startswith("no secrets stored or bound; values come from keyring:")
    never_shows(VALUE, stored, listed, table, removed, empty)
    assert files_containing(jhansi_home, VALUE) == []


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc", "abc"), ("abc\n", "abc"), ("abc\r\n", "abc"), ("a b\tc\n", "a b\tc")],
)
def test_stdin_loses_exactly_one_trailing_newline(
    cli: Invoke, ring: StandInKeyring, monkeypatch: pytest.MonkeyPatch, given: str, kept: str
) -> None:
    with_stdin(monkeypatch, given)
    assert cli("secret", "set", "K").code == 0
    assert ring.entries[f"{SERVICE}\0K"] == kept


@pytest.mark.parametrize("given", ["", "\n", "abc\n\n"])
def test_an_empty_or_multi_line_value_is_refused(
    cli: Invoke, ring: StandInKeyring, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    with_stdin(monkeypatch, given)
    result = cli("secret", "set", "K", "--json")
    assert result.code == 2
    assert ring.entries == {}
    assert json.loads(result.stdout)["status"] == "error"
    assert "error:" in result.stderr
    assert "hint:" in result.stderr


def test_an_invalid_name_is_refused_before_the_value_is_read(
    cli: Invoke, ring: StandInKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = with_stdin(monkeypatch, VALUE)
    result = cli("secret", "set", "NOT-A-NAME")
    assert result.code == 2
    assert "not a valid secret name" in result.stderr
    assert stdin.tell() == 0
    never_shows(VALUE, result)


def test_without_a_keyring_set_and_rm_refuse_and_ls_says_where_values_come_from(
    cli: Invoke, no_keyring: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = with_stdin(monkeypatch, VALUE)
    refused = cli("secret", "set", "GH_TOKEN")
    assert refused.code == 2
    assert "no keyring backend" in refused.stderr
    assert "Export GH_TOKEN" in refused.stderr
    assert stdin.tell() == 0  # refused before reading the value
    removed = cli("secret", "rm", "GH_TOKEN")
    assert removed.code == 2
    assert "can only come from the environment" in removed.stderr
    listed = cli("secret", "ls", "--json")
    assert json.loads(listed.stdout) == {
        "status": "ok",
        "backend": "environment variables (no keyring backend)",
        "secrets": [],
    }
    never_shows(VALUE, refused, removed, listed)


def test_ls_shows_the_hosts_bound_in_config_and_never_a_value(
    cli: Invoke,
    ring: StandInKeyring,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "jhansi.toml").write_text(
        '[secrets.GH_TOKEN]\nhosts = ["api.github.com", "uploads.github.com:8443"]\n'
        '[secrets.FROM_ENV]\nhosts = ["api.example.com"]\nheader = "X-Api-Key"\n'
        '[secrets.NOWHERE]\nhosts = ["api.example.org"]\n'
    )
    monkeypatch.chdir(project)
    assert cli("trust").code == 0  # a project's [secrets.NAME] binds host secrets: trusted
    monkeypatch.setenv("FROM_ENV", VALUE + "-env")
    with_stdin(monkeypatch, VALUE + "\n")
    assert cli("secret", "set", "GH_TOKEN").code == 0
    with_stdin(monkeypatch, VALUE + "\n")
    assert cli("secret", "set", "UNBOUND").code == 0
    listed = cli("secret", "ls", "--json")
    assert listed.code == 0, listed.stderr
    assert json.loads(listed.stdout)["secrets"] == [
        {"name": "FROM_ENV", "source": "environment", "hosts": ["api.example.com"]},
        {
            "name": "GH_TOKEN",
            "source": "keyring",
            "hosts": ["api.github.com", "uploads.github.com:8443"],
        },
        {"name": "NOWHERE", "source": "missing", "hosts": ["api.example.org"]},
        {"name": "UNBOUND", "source": "keyring", "hosts": []},
    ]
    table = cli("secret", "ls")
    assert table.code == 0, table.stderr
    rows = {line.split()[1]: line for line in table.stdout.splitlines() if "│" in line[:2]}
    assert "api.github.com, uploads.github.com:8443" in rows["GH_TOKEN"]
    assert "environment" in rows["FROM_ENV"]
    assert "api.example.com" in rows["FROM_ENV"]
    assert "missing" in rows["NOWHERE"]
    assert "--secret NAME@HOST" in rows["UNBOUND"]
    never_shows(VALUE, listed, table)


def test_rm_of_an_unknown_secret(cli: Invoke, ring: StandInKeyring) -> None:
    result = cli("secret", "rm", "NOPE", "--json")
    assert result.code == 2
    assert json.loads(result.stdout)["error"]["kind"] == "ConfigError"


def test_doctor_says_where_secrets_come_from(ring: StandInKeyring) -> None:
    check = check_secrets(Paths.from_environment())
    assert (check.ok, check.detail) == (True, "keyring: keyring stand in StandInKeyring")
    keyring.set_keyring(fail.Keyring())
    check = check_secrets(Paths.from_environment())
    assert (check.ok, check.detail) == (True, "environment variables: no keyring backend")
    assert "jhansi secret set" in check.hint


# -- real processes --------------------------------------------------------------------------


def stand_in_env(tmp_path: Path) -> dict[str, str]:
    return {"PYTHON_KEYRING_BACKEND": IMPORT_PATH, FILE_VARIABLE: str(tmp_path / "ring.json")}


def test_real_processes_share_the_keyring_and_never_print_the_value(
    tmp_path: Path, jhansi_home: Path
) -> None:
    env = stand_in_env(tmp_path)
    stored = run_jhansi("secret", "set", "GH_TOKEN", env=env, cwd=REPO, input=VALUE + "\n")
    assert stored.returncode == 0, stored.stderr
    listed = run_jhansi("secret", "ls", "--json", env=env, cwd=REPO)
    assert json.loads(listed.stdout)["secrets"] == [
        {"name": "GH_TOKEN", "source": "keyring", "hosts": []}
    ]
    # The value is in the (stand-in) keyring only: nowhere under JHANSI_HOME.
    assert VALUE in (tmp_path / "ring.json").read_text()
    assert files_containing(jhansi_home, VALUE) == []
    index = json.loads((jhansi_home / "config" / "secrets.json").read_text())
    assert index["names"] == ["GH_TOKEN"]
    # A failing command under --debug prints a traceback: still without the value.
    broken = run_jhansi(
        "--debug", "secret", "set", "GH_TOKEN", env=env, cwd=REPO, input=VALUE + "\nmore\n"
    )
    assert broken.returncode == 2
    assert "Traceback" in broken.stderr
    removed = run_jhansi("secret", "rm", "GH_TOKEN", env=env, cwd=REPO)
    assert removed.returncode == 0, removed.stderr
    assert json.loads((tmp_path / "ring.json").read_text()) == {}
    never_shows(VALUE, stored, listed, broken, removed)


def test_a_real_process_without_a_keyring(tmp_path: Path) -> None:
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    refused = run_jhansi("secret", "set", "GH_TOKEN", env=env, cwd=REPO, input=VALUE)
    assert refused.returncode == 2
    assert "no keyring backend" in refused.stderr
    never_shows(VALUE, refused)


def _read_until(fd: int, marker: bytes, seen: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            assert chunk, f"terminal closed before {marker!r}: {bytes(seen)!r}"
            seen += chunk


def test_at_a_terminal_the_value_is_asked_twice_and_not_echoed(tmp_path: Path) -> None:
    import fcntl
    import termios

    master, slave = os.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "jhansi", "secret", "set", "GH_TOKEN"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        env={**os.environ, **stand_in_env(tmp_path)},
        start_new_session=True,
        preexec_fn=controlling_terminal,  # the terminal getpass reads from, as a login has
    )
    os.close(slave)
    seen = bytearray()
    try:
        # click writes the prompt, then getpass turns echo off and writes " ": type after it,
        # as a person does (typed earlier, the input is flushed with the echo setting).
        _read_until(master, b"Value of GH_TOKEN: ", seen)
        os.write(master, VALUE.encode() + b"\n")
        _read_until(master, b"Repeat for confirmation: ", seen)
        os.write(master, VALUE.encode() + b"\n")
        _read_until(master, b"stored GH_TOKEN", seen)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert VALUE.encode() not in seen  # echo was off
    stored = json.loads((tmp_path / "ring.json").read_text())
    assert stored == {f"{SERVICE}\0GH_TOKEN": VALUE}
