"""jhansi.deps.uv: the one wrapper around uv — its environment, its log, its errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jhansi.deps import uv
from jhansi.deps.uv import error_summary, no_wheel, not_found, run_uv, uv_environment
from jhansi.errors import ExitCode, ToolError

NO_WHEEL_RESOLVE = """\
error: No solution found when resolving dependencies
  cause: Because sgmllib3k==1.0.0 has no usable wheels and only sgmllib3k==1.0.0 is \
available, we can conclude that all versions of sgmllib3k cannot be used.
         And because feedparser==6.0.11 depends on sgmllib3k and you require \
feedparser==6.0.11, we can conclude that your requirements are unsatisfiable.

hint: Wheels are required for `sgmllib3k` because building from source is disabled for \
all packages (i.e., with `--no-build`)
"""

NO_WHEEL_PLATFORM = """\
error: No solution found when resolving dependencies
  cause: Because windows-curses<=2.3.1 has no wheels with a matching Python ABI tag \
(e.g., `cp312`) and only the following versions of windows-curses are available:
             windows-curses<=2.3.1
             windows-curses>=2.3.2a1
         we can conclude that windows-curses<2.3.2a1 cannot be used.

hint: You require CPython 3.12 (`cp312`), but we only found wheels for `windows-curses` \
(v2.3.1) with the following Python ABI tags: `cp36m`, `cp37m`

hint: Wheels are available for `windows-curses` (v2.4.2) on the following platforms: `win32`
"""

NO_WHEEL_INSTALL = """\
Using CPython 3.11.7 interpreter at: /usr/bin/python3
error: Package `numpy` can't be installed because it is marked as `--no-build` but has no \
binary distribution
"""

NOT_FOUND = """\
error: No solution found when resolving dependencies
  cause: Because quantumflux-helpers was not found in the package registry and you require \
quantumflux-helpers, we can conclude that your requirements are unsatisfiable.
"""

FETCH_FAILED = """\
error: Request failed after 3 retries in 8.0s
  cause: Failed to fetch: `http://127.0.0.1:9/simple/requests/`
  cause: error sending request for url (http://127.0.0.1:9/simple/requests/)
  cause: tcp connect error
  cause: Connection refused (os error 111)
"""


def test_environment_drops_what_would_change_the_lock_behind_its_back() -> None:
    env = uv_environment(
        {
            "PATH": "/usr/bin",
            "UV_NO_VERIFY_HASHES": "1",
            "UV_NO_BINARY": "1",
            "UV_CONSTRAINT": "/tmp/c.txt",
            "UV_EXCLUDE_NEWER": "2020-01-01",
            "UV_COMPILE_BYTECODE": "1",
            "UV_PYTHON_DOWNLOADS": "automatic",
            "UV_CACHE_DIR": "/somewhere/uv-cache",
            "UV_OFFLINE": "1",
            "HTTPS_PROXY": "http://proxy.invalid:3128",
        }
    )
    for name in (
        "UV_NO_VERIFY_HASHES",
        "UV_NO_BINARY",
        "UV_CONSTRAINT",
        "UV_EXCLUDE_NEWER",
        "UV_COMPILE_BYTECODE",
    ):
        assert name not in env
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    assert env["UV_NO_CONFIG"] == "1"
    # The user's own settings pass through.
    assert env["UV_CACHE_DIR"] == "/somewhere/uv-cache"
    assert env["UV_OFFLINE"] == "1"
    assert env["HTTPS_PROXY"] == "http://proxy.invalid:3128"
    assert env["PATH"] == "/usr/bin"


def test_environment_keeps_uv_index_settings_and_maps_pip_ones() -> None:
    mirror = "http://mirror.invalid/simple"
    assert uv_environment({"UV_INDEX_URL": mirror})["UV_INDEX_URL"] == mirror
    assert uv_environment({"UV_DEFAULT_INDEX": mirror})["UV_DEFAULT_INDEX"] == mirror
    from_pip = uv_environment({"PIP_INDEX_URL": mirror, "PIP_EXTRA_INDEX_URL": mirror + "2"})
    assert from_pip["UV_DEFAULT_INDEX"] == mirror
    assert from_pip["UV_EXTRA_INDEX_URL"] == mirror + "2"
    # uv's own setting wins over pip's.
    both = uv_environment({"PIP_INDEX_URL": "http://pip.invalid/", "UV_INDEX_URL": mirror})
    assert both["UV_INDEX_URL"] == mirror
    assert "UV_DEFAULT_INDEX" not in both


def test_environment_hands_back_the_user_config_file_only(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "uv").mkdir(parents=True)
    (xdg / "uv" / "uv.toml").write_text('[pip]\nindex-url = "http://mirror.invalid/"\n')
    env = uv_environment({"XDG_CONFIG_HOME": str(xdg), "XDG_CONFIG_DIRS": str(tmp_path / "no")})
    assert env["UV_CONFIG_FILE"] == str(xdg / "uv" / "uv.toml")
    assert env["UV_NO_CONFIG"] == "1"
    explicit = tmp_path / "mine.toml"
    env = uv_environment({"XDG_CONFIG_HOME": str(xdg), "UV_CONFIG_FILE": str(explicit)})
    assert env["UV_CONFIG_FILE"] == str(explicit)


def test_no_wheel_is_recognised_from_the_resolver_and_the_installer() -> None:
    found = no_wheel(NO_WHEEL_RESOLVE)
    assert found is not None
    assert (found.name, found.spec) == ("sgmllib3k", "==1.0.0")
    platform = no_wheel(NO_WHEEL_PLATFORM)
    assert platform is not None
    assert (platform.name, platform.spec) == ("windows-curses", "<=2.3.1")
    assert "cp312" in platform.detail
    installer = no_wheel(NO_WHEEL_INSTALL)
    assert installer is not None
    assert installer.name == "numpy"
    assert no_wheel(NOT_FOUND) is None
    assert no_wheel(FETCH_FAILED) is None


def test_not_found_names_the_distribution() -> None:
    assert not_found(NOT_FOUND) == "quantumflux-helpers"
    assert not_found(NO_WHEEL_RESOLVE) is None


def test_error_summary_is_one_line_with_the_root_cause() -> None:
    summary = error_summary(FETCH_FAILED)
    assert "\n" not in summary
    assert summary.startswith("Request failed after 3 retries")
    assert "Failed to fetch" in summary
    assert summary.endswith("Connection refused (os error 111)")
    assert "unsatisfiable" in error_summary(NOT_FOUND)
    assert error_summary("") == "uv failed"
    assert len(error_summary("error: " + "x" * 2000)) <= 400


def test_run_uv_logs_each_call_and_raises_exit_7_with_stderr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jhansi.uv")
    missing = tmp_path / "missing.txt"
    with pytest.raises(ToolError) as caught:
        run_uv(["pip", "compile", missing], what="compile nothing", cwd=tmp_path)
    assert caught.value.exit_code == ExitCode.DEPENDENCIES
    assert "cannot compile nothing" in caught.value.message
    assert "File not found: missing.txt" in caught.value.message
    assert "missing.txt" in caught.value.stderr
    calls = [r.getMessage() for r in caplog.records if r.getMessage().startswith("uv call: ")]
    assert calls == [f"uv call: pip compile {missing}"]


def test_run_uv_returns_the_completed_process() -> None:
    proc = run_uv(["--version"], what="ask uv its version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(b"uv ")


def test_run_uv_translates_a_missing_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uv, "uv_binary", lambda: Path("/nonexistent/uv"))
    with pytest.raises(ToolError) as caught:
        run_uv(["--version"], what="ask uv its version")
    assert caught.value.exit_code == ExitCode.DEPENDENCIES
