"""Locking and installing with the real uv against the real package index.

The index is whatever the user's uv or pip configuration names (CI has one);
tests that need it are marked ``network``. One stack (requests, pyyaml, numpy)
is locked and installed once per module to keep the runtime modest.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from jhansi.deps.install import MARKER, Environment, install
from jhansi.deps.lock import lock
from jhansi.deps.pylock import LockResult
from jhansi.deps.target import Target
from jhansi.errors import DependencyError, ToolError
from jhansi.report import NullReporter

STACK = ["requests", "pyyaml", "numpy"]
#: A real project that has only ever published a source distribution.
SDIST_ONLY = "sgmllib3k"


def host_target() -> Target:
    """The interpreter running the tests, as a sandbox would be probed."""
    libc, libc_version = platform.libc_ver()
    return Target(
        python_version=platform.python_version(),
        implementation=sys.implementation.name,
        machine=platform.machine(),
        libc=libc,
        libc_version=libc_version,
    )


def uv_calls(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith("uv call: "))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deps-uv")


@pytest.fixture(scope="module")
def stack_lock(work: Path) -> LockResult:
    return lock(
        STACK,
        host_target(),
        lock_file=work / "pylock.stack.toml",
        reporter=NullReporter(),
        fix_command="jhansi lock stack.py",
    )


@pytest.fixture(scope="module")
def stack_env(stack_lock: LockResult, work: Path) -> Environment:
    return install(stack_lock, host_target(), cache_dir=work / "cache", reporter=NullReporter())


@pytest.mark.network
def test_lock_pins_the_stack_with_hashes_and_records_its_inputs(stack_lock: LockResult) -> None:
    document = tomllib.loads(stack_lock.path.read_text())
    assert document["lock-version"] == "1.0"
    names = {p.name for p in stack_lock.packages}
    assert names >= {"requests", "pyyaml", "numpy", "urllib3", "idna", "certifi"}
    for package in stack_lock.packages:
        assert package.wheels, package
        assert all(w.filename.endswith(".whl") for w in package.wheels)
        assert all(h.startswith("sha256:") for h in package.hashes)
    table = document["tool"]["jhansi"]
    assert table["inputs"] == stack_lock.inputs_digest
    assert table["requirements"] == sorted(STACK)
    assert table["target"] == host_target().tags
    assert "jhansi lock stack.py" in stack_lock.path.read_text().splitlines()[1]


@pytest.mark.network
def test_second_lock_makes_no_uv_call(
    stack_lock: LockResult, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jhansi.uv")
    again = lock(
        list(reversed(STACK)), host_target(), lock_file=stack_lock.path, reporter=NullReporter()
    )
    assert uv_calls(caplog) == 0
    assert again.reused is True
    assert again.digest == stack_lock.digest


@pytest.mark.network
def test_changed_requirements_relock_and_keep_the_other_pins(
    stack_lock: LockResult, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pylock.toml"
    path.write_bytes(stack_lock.path.read_bytes())
    caplog.set_level(logging.DEBUG, logger="jhansi.uv")
    relocked = lock([*STACK, "six"], host_target(), lock_file=path, reporter=NullReporter())
    assert uv_calls(caplog) == 1
    assert relocked.reused is False
    before = {p.name: p.version for p in stack_lock.packages}
    after = {p.name: p.version for p in relocked.packages}
    assert "six" in after
    assert {name: after[name] for name in before} == before
    assert tomllib.loads(path.read_text())["tool"]["jhansi"]["requirements"] == sorted(
        [*STACK, "six"]
    )


@pytest.mark.network
def test_frozen_with_stale_or_missing_lock_names_the_fix(
    stack_lock: LockResult, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jhansi.uv")
    for requirements, path in (
        ([*STACK, "six"], stack_lock.path),
        (STACK, tmp_path / "pylock.missing.toml"),
    ):
        with pytest.raises(DependencyError) as caught:
            lock(
                requirements,
                host_target(),
                lock_file=path,
                reporter=NullReporter(),
                frozen=True,
                fix_command="jhansi lock stack.py",
            )
        assert str(path) in caught.value.message
        assert "jhansi lock stack.py" in caught.value.hint
    assert uv_calls(caplog) == 0


@pytest.mark.network
def test_installed_stack_imports_in_a_clean_interpreter(stack_env: Environment) -> None:
    assert stack_env.reused is False
    assert (stack_env.path / MARKER).is_file()
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]); "
        "import numpy, yaml, requests; print(numpy.__version__, numpy.__file__)"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", code, str(stack_env.path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    version, where = proc.stdout.split()
    assert where.startswith(str(stack_env.path))
    marker = json.loads((stack_env.path / MARKER).read_text())
    assert f"numpy=={version}" in marker["packages"]
    # The host interpreter is the target here, so uv byte-compiled for it.
    assert marker["bytecode"] is True
    assert list(
        (stack_env.path / "numpy").glob(f"__pycache__/*.{sys.implementation.cache_tag}.pyc")
    )
    init = (stack_env.path / "numpy" / "__init__.py").stat()
    if init.st_nlink > 1:
        # Hard-linked from uv's cache (never modified in place): its mode is the cache's,
        # and the environment's directories are read-only, so nothing can be added,
        # removed or renamed; the sandbox mounts it read-only.
        assert (stack_env.path / "numpy").stat().st_mode & 0o222 == 0
    else:
        assert not os.access(stack_env.path / "numpy" / "__init__.py", os.W_OK) or (
            os.geteuid() == 0
        )
        assert init.st_mode & 0o777 == 0o444


@pytest.mark.network
def test_second_install_makes_no_uv_call(
    stack_lock: LockResult, stack_env: Environment, work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jhansi.uv")
    again = install(stack_lock, host_target(), cache_dir=work / "cache", reporter=NullReporter())
    assert uv_calls(caplog) == 0
    assert again == replace(stack_env, reused=True)


@pytest.mark.network
def test_sdist_only_package_is_refused_at_lock_time(tmp_path: Path) -> None:
    path = tmp_path / "pylock.toml"
    with pytest.raises(DependencyError) as caught:
        lock([SDIST_ONLY], host_target(), lock_file=path, reporter=NullReporter())
    assert SDIST_ONLY in caught.value.message
    assert host_target().tags in caught.value.message
    assert "never builds" in caught.value.hint
    assert not path.exists()


@pytest.mark.network
def test_no_wheel_for_the_target_at_install_time(tmp_path: Path) -> None:
    """A lock for a newer Python than the target: uv finds no wheel the target can use."""
    host = host_target()
    newer = replace(host, python_version=f"3.{sys.version_info.minor + 1}.0")
    made = lock(["numpy"], newer, lock_file=tmp_path / "pylock.toml", reporter=NullReporter())
    # Pretend the lock was made for this target (a hand-edited or foreign lock).
    body = made.path.read_text().split("[tool.jhansi]")[0]
    body = "\n".join(line for line in body.splitlines() if not line.startswith("requires-python"))
    foreign = tmp_path / "pylock.foreign.toml"
    foreign.write_text(body + "\n")
    import blake3

    content = foreign.read_bytes()
    numpy = next(p for p in made.packages if p.name == "numpy")
    with pytest.raises(DependencyError) as caught:
        install(
            replace(made, path=foreign, content=content, digest=blake3.blake3(content).hexdigest()),
            host,
            cache_dir=tmp_path / "cache",
            reporter=NullReporter(),
        )
    assert f"numpy {numpy.version}" in caught.value.message
    assert host.tags in caught.value.message
    assert [p.name for p in (tmp_path / "cache" / "envs").iterdir()] == []


@pytest.mark.network
def test_made_up_package_is_named(tmp_path: Path) -> None:
    name = "jhansi-test-no-such-distribution-4f1c"
    with pytest.raises(DependencyError, match=name):
        lock([name], host_target(), lock_file=tmp_path / "pylock.toml", reporter=NullReporter())


@pytest.mark.network
def test_concurrent_installs_from_two_processes_leave_one_environment(
    stack_lock: LockResult, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from jhansi.deps.install import install
        from jhansi.deps.lock import lock
        from jhansi.report import NullReporter
        from tests.integration.test_deps_uv import STACK, host_target
        locked = lock(STACK, host_target(), lock_file=Path(sys.argv[1]), reporter=NullReporter(),
                      frozen=True)
        env = install(locked, host_target(), cache_dir=Path(sys.argv[2]), reporter=NullReporter())
        print(json.dumps({"path": str(env.path), "reused": env.reused}))
        """
    )
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(stack_lock.path), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    results = [json.loads(out) for out, _ in outputs]
    assert results[0]["path"] == results[1]["path"]
    envs = cache / "envs"
    assert [p.name for p in envs.iterdir()] == [Path(results[0]["path"]).name]
    assert (Path(results[0]["path"]) / MARKER).is_file()


def test_the_users_uv_config_is_honoured_and_a_projects_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's uv.toml applies (here: an index on a closed local port, so it fails)."""
    xdg = tmp_path / "xdg"
    (xdg / "uv").mkdir(parents=True)
    (xdg / "uv" / "uv.toml").write_text('[pip]\nindex-url = "http://127.0.0.1:9/simple"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    for name in ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_CONFIG_FILE", "PIP_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ToolError) as caught:
        lock(
            ["requests"], host_target(), lock_file=tmp_path / "pylock.toml", reporter=NullReporter()
        )
    assert "127.0.0.1:9" in caught.value.message


@pytest.mark.network
def test_a_uv_toml_in_the_working_directory_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "uv.toml").write_text('[pip]\nindex-url = "http://127.0.0.1:9/simple"\n')
    (project / "pyproject.toml").write_text(
        '[project]\nname = "p"\n[tool.uv.pip]\nindex-url = "http://127.0.0.1:9/simple"\n'
    )
    monkeypatch.chdir(project)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    result = lock(
        ["six"], host_target(), lock_file=project / "pylock.toml", reporter=NullReporter()
    )
    assert [p.name for p in result.packages] == ["six"]


@pytest.mark.network
def test_a_newer_python_than_jhansis_own_is_installed_for(tmp_path: Path) -> None:
    """uv checks a pylock's requires-python against the interpreter it runs with; jhansi
    installs for the target's version instead, and byte-compiles only for its own."""
    newer = replace(host_target(), python_version=f"3.{sys.version_info.minor + 1}.0")
    made = lock(["six"], newer, lock_file=tmp_path / "pylock.toml", reporter=NullReporter())
    env = install(made, newer, cache_dir=tmp_path / "cache", reporter=NullReporter())
    assert (env.path / "six.py").is_file()
    assert json.loads((env.path / MARKER).read_text())["bytecode"] is False
    assert not list(env.path.rglob("*.pyc"))
