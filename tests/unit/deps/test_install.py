"""jhansi.deps.install without the network: keys, markers, read-only trees, races.

uv is replaced by a fake that "installs" a file per locked package into
``--target``; tests/integration/test_deps_uv.py installs real wheels.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import blake3
import pytest

from jhansi.deps import install as install_module
from jhansi.deps.install import (
    MARKER,
    environment_key,
    install,
    is_complete,
    make_read_only,
    python_satisfies,
    remove_tree,
)
from jhansi.deps.pylock import LockResult, packages_of, parse_lock
from jhansi.deps.target import Target
from jhansi.errors import DependencyError, ExitCode, ToolError
from jhansi.report import NullReporter

TARGET = Target(
    python_version=f"{sys.version_info.major}.{sys.version_info.minor}.0",
    implementation=sys.implementation.name,
    machine="x86_64",
    libc="glibc",
    libc_version="2.36",
)

BODY = f"""\
lock-version = "1.0"
created-by = "uv"
requires-python = ">={TARGET.python_minor}"

[[packages]]
name = "pyyaml"
version = "6.0.4"
wheels = [{{ url = "https://files.example/pyyaml-6.0.4-py3-none-any.whl", \
upload-time = 2026-11-20T23:34:55Z, size = 8, hashes = {{ sha256 = "62" }} }}]

[[packages]]
name = "numpy"
version = "2.4.6"
wheels = [{{ url = "https://files.example/numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl", \
size = 9, hashes = {{ sha256 = "89" }} }}]
"""


def make_lock(path: Path, body: str = BODY, *, header: str = "", tool: str = "") -> LockResult:
    content = (header + body + tool).encode()
    path.write_bytes(content)
    return LockResult(
        path=path,
        digest=blake3.blake3(content).hexdigest(),
        packages=packages_of(tomllib.loads(content.decode())),
        reused=False,
        inputs_digest="0" * 64,
        content=content,
    )


@dataclass
class FakeUv:
    """Stands in for run_uv: one module and one executable per locked package."""

    calls: list[list[str]] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)
    error: ToolError | None = None
    barrier: threading.Barrier | None = None

    def __call__(
        self,
        args: Sequence[str | Path],
        *,
        what: str,
        hint: str = "",
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        cwd: Path | None = None,
        timeout: float | None = None,
        reporter: Any = None,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [str(a) for a in args]
        self.calls.append(argv)
        lock_text = Path(argv[argv.index("-r") + 1]).read_text()
        self.locks.append(lock_text)
        if self.error is not None:
            raise self.error
        target = Path(argv[argv.index("--target") + 1])
        for package in tomllib.loads(lock_text)["packages"]:
            module = target / package["name"]
            module.mkdir(parents=True)
            (module / "__init__.py").write_text(f"__version__ = {package['version']!r}\n")
        (target / "bin").mkdir()
        (target / "bin" / "tool").write_text("#!/bin/sh\n")
        (target / "bin" / "tool").chmod(0o755)
        (target / ".lock").write_text("")
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        return subprocess.CompletedProcess(argv, 0, b"", b"")


@pytest.fixture(autouse=True)
def origin_checks(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The canned lock names invented files no index serves: the origin check (tested in
    test_origin.py against a real HTTP index) is replaced here by a recorder of its calls."""
    calls: list[Path] = []
    monkeypatch.setattr(install_module, "check_origin", lambda doc, path, **kw: calls.append(path))
    return calls


@pytest.fixture
def fake_uv(monkeypatch: pytest.MonkeyPatch) -> FakeUv:
    fake = FakeUv()
    monkeypatch.setattr(install_module, "run_uv", fake)
    return fake


def _install(lock: LockResult, cache: Path, target: Target = TARGET) -> Any:
    return install(lock, target, cache_dir=cache, reporter=NullReporter())


def test_install_then_reuse_without_uv(tmp_path: Path, fake_uv: FakeUv) -> None:
    lock = make_lock(tmp_path / "pylock.toml")
    cache = tmp_path / "cache"
    env = _install(lock, cache)
    assert env.reused is False
    assert env.path == cache / "envs" / env.key
    assert env.key == environment_key(parse_lock(lock.content, lock.path), TARGET)
    assert (env.path / "numpy" / "__init__.py").read_text() == "__version__ = '2.4.6'\n"
    assert is_complete(env.path)
    assert not (env.path / ".lock").exists()
    again = _install(lock, cache)
    assert again == replace(env, reused=True)
    assert len(fake_uv.calls) == 1
    assert sorted(p.name for p in (cache / "envs").iterdir()) == [env.key]  # nothing left over


def test_uv_is_asked_for_wheels_for_the_target(
    tmp_path: Path, fake_uv: FakeUv, origin_checks: list[Path]
) -> None:
    _install(make_lock(tmp_path / "pylock.toml"), tmp_path / "cache")
    (argv,) = fake_uv.calls
    assert argv[:2] == ["pip", "install"]
    assert "--no-build" in argv
    # Exactly the lock's files, each checked against the index before uv runs: uv asks
    # no index and no find-links, and refuses a file without a digest.
    assert origin_checks == [tmp_path / "pylock.toml"]
    assert "--no-index" in argv
    assert "--require-hashes" in argv
    assert argv[argv.index("--python-version") + 1] == TARGET.python_minor
    assert argv[argv.index("--python-platform") + 1] == TARGET.uv_platform
    assert argv[argv.index("--link-mode") + 1] == "hardlink"
    assert "--no-cache" not in argv
    # The host interpreter is the target's minor version here: bytecode is usable.
    assert "--compile-bytecode" in argv
    # uv checks requires-python against the interpreter it runs, not --python-version.
    assert "requires-python" not in fake_uv.locks[0]
    assert "[[packages]]" in fake_uv.locks[0]


def test_no_bytecode_for_another_python(tmp_path: Path, fake_uv: FakeUv) -> None:
    other = replace(TARGET, python_version="3.8.18")
    lock = make_lock(tmp_path / "pylock.toml", BODY.replace(f">={TARGET.python_minor}", ">=3.8"))
    _install(lock, tmp_path / "cache", other)
    assert "--compile-bytecode" not in fake_uv.calls[0]
    assert fake_uv.calls[0][fake_uv.calls[0].index("--python-version") + 1] == "3.8"


def test_environment_is_read_only_and_readable_by_anyone(tmp_path: Path, fake_uv: FakeUv) -> None:
    env = _install(make_lock(tmp_path / "pylock.toml"), tmp_path / "cache")
    modes = {
        p.relative_to(env.path).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in [env.path, *env.path.rglob("*")]
    }
    assert modes["."] == 0o555
    assert modes["numpy"] == 0o555
    assert modes["numpy/__init__.py"] == 0o444
    assert modes["bin/tool"] == 0o555
    assert modes[MARKER] == 0o444
    remove_tree(env.path)
    assert not env.path.exists()


def test_files_shared_with_uvs_cache_keep_their_mode(tmp_path: Path) -> None:
    """A hard link's mode is its cache entry's: making the environment read-only
    must not change uv's cache (the sandbox mounts the environment read-only anyway)."""
    cache_entry = tmp_path / "uv-cache" / "mod.py"
    cache_entry.parent.mkdir()
    cache_entry.write_text("x = 1\n")
    cache_entry.chmod(0o644)
    env = tmp_path / "env"
    (env / "pkg").mkdir(parents=True)
    os.link(cache_entry, env / "pkg" / "mod.py")
    (env / "pkg" / "own.pyc").write_bytes(b"")
    make_read_only(env)
    assert stat.S_IMODE(cache_entry.stat().st_mode) == 0o644
    assert stat.S_IMODE((env / "pkg" / "own.pyc").stat().st_mode) == 0o444
    assert stat.S_IMODE((env / "pkg").stat().st_mode) == 0o555
    remove_tree(env)
    assert cache_entry.read_text() == "x = 1\n"


def test_key_depends_on_packages_and_target_only(tmp_path: Path) -> None:
    def key(body: str, target: Target = TARGET, **kw: str) -> str:
        return environment_key(
            tomllib.loads(kw.get("header", "") + body + kw.get("tool", "")), target
        )

    base = key(BODY)
    assert base == key(BODY, header="# jhansi lock other.py\n")
    assert base == key(BODY, tool='\n[tool.jhansi]\ninputs = "x"\nrequirements = ["numpy"]\n')
    assert base == key(BODY, replace(TARGET, python_version=TARGET.python_minor + ".9"))
    assert base != key(BODY.replace('"62"', '"63"'))
    assert base != key(BODY, replace(TARGET, libc_version="2.28"))
    assert base != key(BODY, replace(TARGET, machine="aarch64"))


def test_a_changed_lock_file_is_refused(tmp_path: Path, fake_uv: FakeUv) -> None:
    lock = make_lock(tmp_path / "pylock.toml")
    with pytest.raises(DependencyError, match="changed after it was locked"):
        _install(replace(lock, content=lock.content + b"\n"), tmp_path / "cache")
    assert fake_uv.calls == []


def test_a_lock_for_another_target_is_refused(tmp_path: Path, fake_uv: FakeUv) -> None:
    tool = '\n[tool.jhansi]\ninputs = "x"\ntarget = "cpython-3.99-x86_64-manylinux_2_36"\n'
    lock = make_lock(tmp_path / "pylock.toml", tool=tool)
    with pytest.raises(DependencyError) as caught:
        _install(lock, tmp_path / "cache")
    assert "cpython-3.99" in caught.value.message
    newer = make_lock(tmp_path / "pylock.toml", BODY.replace(f">={TARGET.python_minor}", ">=3.99"))
    with pytest.raises(DependencyError, match=r"requires Python >=3\.99"):
        _install(newer, tmp_path / "cache")
    assert fake_uv.calls == []


def test_an_incomplete_environment_is_replaced(tmp_path: Path, fake_uv: FakeUv) -> None:
    lock = make_lock(tmp_path / "pylock.toml")
    cache = tmp_path / "cache"
    key = environment_key(parse_lock(lock.content, lock.path), TARGET)
    broken = cache / "envs" / key
    (broken / "numpy").mkdir(parents=True)
    (broken / "numpy" / "evil.py").write_text("")
    make_read_only(broken)
    env = _install(lock, cache)
    assert env.reused is False
    assert is_complete(env.path)
    assert not (env.path / "numpy" / "evil.py").exists()
    assert sorted(p.name for p in (cache / "envs").iterdir()) == [key]


def test_old_leftovers_are_swept(tmp_path: Path, fake_uv: FakeUv) -> None:
    envs = tmp_path / "cache" / "envs"
    old = envs / ".tmp-killed"
    (old / "pkg").mkdir(parents=True)
    make_read_only(old)
    os.utime(old, (1, 1))
    fresh = envs / ".tmp-running"
    fresh.mkdir()
    _install(make_lock(tmp_path / "pylock.toml"), tmp_path / "cache")
    assert not old.exists()
    assert fresh.exists()


def test_no_wheel_at_install_names_package_version_and_target(
    tmp_path: Path, fake_uv: FakeUv
) -> None:
    fake_uv.error = ToolError(
        "cannot install",
        stderr="error: Package `numpy` can't be installed because it is marked as `--no-build` "
        "but has no binary distribution\n",
        exit_code=ExitCode.DEPENDENCIES,
    )
    cache = tmp_path / "cache"
    with pytest.raises(DependencyError) as caught:
        _install(make_lock(tmp_path / "pylock.toml"), cache)
    message = caught.value.message
    assert "numpy 2.4.6" in message
    assert TARGET.tags in message
    assert caught.value.exit_code == ExitCode.DEPENDENCIES
    assert list((cache / "envs").iterdir()) == []  # the half-done install is gone


def test_hash_mismatch_is_a_dependency_error(tmp_path: Path, fake_uv: FakeUv) -> None:
    fake_uv.error = ToolError(
        "cannot install: Failed to download `numpy==2.4.6`",
        stderr="error: Failed to download `numpy==2.4.6`\n  cause: Hash mismatch for "
        "`numpy==2.4.6`\n",
        exit_code=ExitCode.DEPENDENCIES,
    )
    with pytest.raises(DependencyError, match="does not match its hash"):
        _install(make_lock(tmp_path / "pylock.toml"), tmp_path / "cache")


def test_concurrent_installs_of_one_key_leave_one_environment(
    tmp_path: Path, fake_uv: FakeUv
) -> None:
    fake_uv.barrier = threading.Barrier(2)  # both finish installing before either renames
    lock = make_lock(tmp_path / "pylock.toml")
    cache = tmp_path / "cache"
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(_install(lock, cache))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(fake_uv.calls) == 2
    assert len({r.path for r in results}) == 1
    assert sorted(p.name for p in (cache / "envs").iterdir()) == [results[0].key]
    assert is_complete(results[0].path)


@pytest.mark.parametrize(
    ("spec", "version", "expected"),
    [
        (">=3.11", "3.11.2", True),
        (">=3.11", "3.10.13", False),
        (">=3.11.4", "3.11.2", False),
        (">=3.8,<3.13", "3.12.1", True),
        (">=3.8,<3.13", "3.13.0", False),
        ("==3.11.*", "3.11.9", True),
        ("==3.11.*", "3.12.0", False),
        ("!=3.11.*", "3.11.9", False),
        ("~=3.10", "3.12.0", True),
        ("~=3.10.2", "3.11.0", False),
        (">=3.11 , <4", "3.11.0", True),
        (">=3.11; weird", "3.11.0", None),
    ],
)
def test_python_satisfies(spec: str, version: str, expected: bool | None) -> None:
    assert python_satisfies(spec, version) is expected


def test_uv_installs_exactly_the_packages_jhansi_parsed_and_checked() -> None:
    # A lock whose multi-line requires-python hides packages from one reading and shows
    # them to another: uv must get a file written from jhansi's parse, never an edit.
    import tomllib

    from jhansi.deps.install import _for_install

    forged = (
        'lock-version = "1.0"\ncreated-by = "uv"\n'
        "requires-python = '''\n"
        '[[packages]]\nname = "evilpkg"\nversion = "1.0"\n'
        'wheels = [{ url = "http://127.0.0.1:9/evilpkg-1.0-py3-none-any.whl", '
        'hashes = { sha256 = "' + "0" * 64 + '" } }]\n'
        '[packages.tool.x]\nz = """\n'
        "'''\n"
        '[[packages]]\nname = "six"\nversion = "1.16.0"\nmarker = "python_version >= \'3\'"\n'
        'wheels = [{ url = "https://files.example/six-1.16.0-py2.py3-none-any.whl", '
        'hashes = { sha256 = "' + "a" * 64 + '", md5 = "' + "b" * 32 + '" } }]\n'
        '# """\n'
    )
    parsed = tomllib.loads(forged)
    assert [p["name"] for p in parsed["packages"]] == ["six"]  # what jhansi checked
    written = tomllib.loads(_for_install(parsed).decode())
    assert "requires-python" not in written
    assert [(p["name"], p["version"]) for p in written["packages"]] == [("six", "1.16.0")]
    (wheel,) = written["packages"][0]["wheels"]
    assert wheel == {
        "url": "https://files.example/six-1.16.0-py2.py3-none-any.whl",
        "hashes": {"sha256": "a" * 64},
    }
    assert written["packages"][0]["marker"] == "python_version >= '3'"
    assert b"evilpkg" not in _for_install(parsed)
