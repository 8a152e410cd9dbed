"""The runner's decisions, checked against a recording backend.

The backend here is a real :class:`Backend` subclass that records the spec it is
given instead of isolating anything: these tests are about what the runner asks
for (mounts, masks, environment, refusals). Whether the sandboxes enforce it is
what tests/integration and tests/security check, on the real engines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from jhansi.config import load_settings
from jhansi.deps.target import Target
from jhansi.errors import ExitCode, InputError, UsageError
from jhansi.paths import Paths
from jhansi.report import NullReporter
from jhansi.runner import Runner, RunRequest, find_project
from jhansi.sandbox.interface import (
    HOME,
    PYTHON,
    Backend,
    BackendInfo,
    ExecResult,
    ExecStatus,
    OutputSink,
    OutputTail,
    SandboxSpec,
)


class RecordingBackend(Backend):
    """Records each spec; ``effect`` may change the home, as a script would."""

    name = "recording"

    def __init__(self, effect: Callable[[Path], None] | None = None) -> None:
        self.specs: list[SandboxSpec] = []
        self.effect = effect

    def info(self, spec: SandboxSpec) -> BackendInfo:
        return BackendInfo("bwrap", {"fake": "yes"})

    def target(self, spec: SandboxSpec) -> Target:
        return Target(
            "3.11.7", "cpython", "x86_64", "glibc", "2.36", frozenset(sys.stdlib_module_names)
        )

    def run(
        self,
        spec: SandboxSpec,
        output: OutputSink,
        *,
        stdin: BinaryIO | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> ExecResult:
        if before_start is not None:
            before_start()
        self.specs.append(spec)
        home = next(m.source for m in spec.mounts if m.target == HOME)
        if self.effect:
            self.effect(home)
        output.write("stdout", b"hi\n")
        empty = OutputTail(b"", 0, False)
        return ExecResult(ExecStatus.SUCCEEDED, 0, None, 5, OutputTail(b"hi\n", 3, False), empty)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "main.py").write_text("print('hi')\n")
    (root / "helper.py").write_text("X = 1\n")
    (root / ".env").write_text("SECRET=1\n")
    (root / ".env.prod").write_text("SECRET=2\n")
    (root / "sub" / "id_rsa").write_text("key\n")
    (root / "sub" / "cert.pem").write_text("pem\n")
    (root / "sub" / "data.csv").write_text("a,b\n")
    (root / "private").mkdir()
    (root / "private" / "x.txt").write_text("x\n")
    return root


def _runner(backend: Backend, tmp_path: Path, **env: str) -> Runner:
    paths = Paths.from_environment({"JHANSI_HOME": str(tmp_path / "home")})
    settings = load_settings(start=tmp_path, environ=env, paths=paths)
    return Runner(settings=settings, paths=paths, reporter=NullReporter(), backend=backend)


def test_spec_mounts_project_read_only_and_masks_secrets(project: Path, tmp_path: Path) -> None:
    backend = RecordingBackend()
    runner = _runner(backend, tmp_path, JHANSI_SANDBOX_MASK="private")
    result = runner.run(RunRequest(script=project / "main.py", args=("a", "--b")))
    spec = backend.specs[0]
    assert spec.argv[0] == PYTHON
    assert spec.argv[-3:] == ("/work/main.py", "a", "--b")
    by_target = {m.target: m for m in spec.mounts}
    assert by_target["/work"].source == project
    assert by_target["/work"].read_only
    assert by_target[HOME].read_only is False
    masked = {m.target for m in spec.mounts if m.kind == "empty"}
    assert masked == {
        "/work/.git",
        "/work/.env",
        "/work/.env.prod",
        "/work/sub/id_rsa",
        "/work/sub/cert.pem",
        "/work/private",
    }
    assert result.status == "succeeded"
    assert result.project == str(project)


def test_environment_is_built_not_inherited(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_CANARY", "leak")
    backend = RecordingBackend()
    _runner(backend, tmp_path).run(
        RunRequest(script=project / "main.py", env=(("GREETING", "hello"),))
    )
    env = backend.specs[0].env
    assert "HOST_CANARY" not in env
    assert env["HOME"] == HOME
    assert env["GREETING"] == "hello"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["MPLBACKEND"] == "Agg"


@pytest.mark.parametrize("key", ["HOME", "PATH", "1BAD", "A-B"])
def test_bad_env_is_refused(project: Path, tmp_path: Path, key: str) -> None:
    with pytest.raises(UsageError):
        _runner(RecordingBackend(), tmp_path).run(
            RunRequest(script=project / "main.py", env=((key, "x"),))
        )


def test_rw_writes_a_layer_that_is_applied_after_the_run(project: Path, tmp_path: Path) -> None:
    work: list[Path] = []

    def effect(home: Path) -> None:
        layer = work[0] = backend.specs[0].mounts[1].source
        assert layer != project
        assert not (project / "out.txt").exists()
        (home / "counter").write_text("1")
        (layer / "out.txt").write_text("new")
        (layer / "sub" / "data.csv").write_text("changed,more\n")
        (layer / "jhansi.toml").write_text("[sandbox]\npython = 'x'\n")
        assert (layer / ".env").read_text() == ""  # a masked stand-in

    work.append(project)
    backend = RecordingBackend(effect)
    result = _runner(backend, tmp_path).run(RunRequest(script=project / "main.py", rw=True))
    mount = {m.target: m for m in backend.specs[0].mounts}["/work"]
    assert not mount.read_only
    assert mount.owned
    assert mount.source == work[0]
    assert {m.target for m in backend.specs[0].mounts if m.kind == "empty"} >= {"/work/.env"}
    changes = {(c.area, c.path, c.change) for c in result.files_changed}
    assert changes == {
        (HOME, "counter", "added"),
        ("/work", "out.txt", "added"),
        ("/work", "sub/data.csv", "modified"),
        ("/work", "jhansi.toml", "added"),
    }
    counter = next(c for c in result.files_changed if c.path == "counter")
    import blake3

    assert counter.blake3 == blake3.blake3(b"1").hexdigest()
    assert (project / "out.txt").read_text() == "new"
    assert (project / "sub" / "data.csv").read_text() == "changed,more\n"
    assert not (project / "jhansi.toml").exists()
    assert result.rw is not None
    assert [o.path for o in result.rw.by("refused")] == ["jhansi.toml"]
    assert not work[0].exists()  # applied: the staging copy is gone


def test_named_sandbox_home_persists_and_ephemeral_does_not(project: Path, tmp_path: Path) -> None:
    homes: list[Path] = []
    backend = RecordingBackend(lambda home: homes.append(home))
    runner = _runner(backend, tmp_path)
    first = runner.run(RunRequest(script=project / "main.py"))
    second = runner.run(RunRequest(script=project / "main.py"))
    assert first.sandbox == second.sandbox
    assert first.sandbox.startswith("proj-")
    assert homes[0] == homes[1]
    assert homes[0].is_dir()
    third = runner.run(RunRequest(script=project / "main.py", ephemeral=True))
    assert third.ephemeral
    assert not homes[2].exists()
    listed = {s.name: s for s in runner.workspace.entries()}
    assert listed[first.sandbox].runs == 2


def test_stdin_code_is_mounted_apart_and_imports_from_work(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    backend = RecordingBackend()
    result = _runner(backend, tmp_path).run(RunRequest(script=None, code="print(1)\n"))
    spec = backend.specs[0]
    assert "--path0" in spec.argv
    assert spec.argv[-1] == "/opt/jhansi/main/stdin.py"
    source = next(m.source for m in spec.mounts if m.target == "/opt/jhansi/main/stdin.py")
    assert not source.exists()  # removed after the run
    assert result.script == "<stdin>"


def test_home_directory_is_never_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_home = tmp_path / "user"
    fake_home.mkdir()
    (fake_home / "notes.txt").write_text("private")
    (fake_home / "script.py").write_text("print(1)\n")
    monkeypatch.setenv("HOME", str(fake_home))
    backend = RecordingBackend()
    result = _runner(backend, tmp_path).run(RunRequest(script=fake_home / "script.py"))
    targets = {m.target: m for m in backend.specs[0].mounts}
    assert "/work" not in targets
    assert targets["/work/script.py"].source == fake_home / "script.py"
    assert result.project is None


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"print(\n", "syntax error"),
        (b"x = '\xff\xfe'\n", "not UTF-8"),
        (b"\x00\x01binary", "binary file"),
        (b"x = " + b"-" * 200_000 + b"1\n", "nests too deeply"),
        (b"x = 1" + b" + 1" * 50_000 + b"\n", "nests too deeply"),
        (b"x = 1\n" * 300_000, "are refused unparsed"),
        (b"# /// script\n# dependencies = " + b"[" * 100_000 + b"\n# ///\n", "PEP 723"),
        (
            b"# /// script\n# dependencies = [\"requests; python_version > '3.8\\u0000'\"]\n"
            b"# ///\nimport requests\n",
            "control character",
        ),
    ],
)
def test_bad_scripts_are_refused_before_any_sandbox(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    script = tmp_path / "bad.py"
    script.write_bytes(content)
    backend = RecordingBackend()
    with pytest.raises(InputError) as caught:
        _runner(backend, tmp_path).run(RunRequest(script=script))
    assert fragment in caught.value.message
    assert caught.value.exit_code == ExitCode.INPUT
    assert backend.specs == []


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("x = 1\ny = (\n")
    with pytest.raises(InputError, match=r"bad\.py:2:\d+: syntax error"):
        _runner(RecordingBackend(), tmp_path).run(RunRequest(script=script))


def test_missing_and_directory(tmp_path: Path) -> None:
    runner = _runner(RecordingBackend(), tmp_path)
    with pytest.raises(InputError, match="no such file"):
        runner.run(RunRequest(script=tmp_path / "nope.py"))
    with pytest.raises(InputError, match="is a directory") as caught:
        runner.run(RunRequest(script=tmp_path))
    assert "jhansi run" in caught.value.hint


def test_coding_cookie_is_honoured(tmp_path: Path) -> None:
    script = tmp_path / "latin.py"
    script.write_bytes(b"# -*- coding: latin-1 -*-\nname = '\xe9'\n")
    assert _runner(RecordingBackend(), tmp_path).run(RunRequest(script=script)).exit_code == 0


def test_find_project(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "pyproject.toml").write_text("")
    assert find_project(tmp_path / "a" / "b") == tmp_path / "a"


def test_invalid_sandbox_name(project: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid sandbox name"):
        _runner(RecordingBackend(), tmp_path).run(
            RunRequest(script=project / "main.py", sandbox="../etc")
        )


def test_no_start_record_means_nothing_runs(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exec.start is written through the backend's ``before_start``: if it cannot be,
    the backend never runs the command, and no exec.end is written for it.

    The disk failure is simulated (the ledger's append raises for exec.start): a
    real full disk cannot be arranged for one record here.
    """
    from jhansi.errors import LedgerError

    backend = RecordingBackend()
    runner = _runner(backend, tmp_path)
    ledger = runner.ledger
    real_append = ledger.append

    def append(kind: str, body: dict[str, object]) -> object:
        if kind == "exec.start":
            raise LedgerError("no space left on device", hint="Free some space.")
        return real_append(kind, body)

    monkeypatch.setattr(ledger, "append", append)
    with pytest.raises(LedgerError, match="no space left"):
        runner.run(RunRequest(script=project / "main.py"))
    assert backend.specs == []  # the command never ran
    monkeypatch.undo()
    from jhansi.ledger.read import iter_records

    kinds = [record.kind for record in iter_records(ledger.directory)]
    assert "exec.start" not in kinds
    assert "exec.end" not in kinds


class ImportFailingBackend(RecordingBackend):
    """A script that dies of an import the scan could not see (real stderr, verbatim)."""

    def run(
        self,
        spec: SandboxSpec,
        output: OutputSink,
        *,
        stdin: BinaryIO | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> ExecResult:
        super().run(spec, output, stdin=stdin, before_start=before_start)
        stderr = (Path(__file__).parent.parent / "fixtures/stderr/dynamic_yaml.txt").read_bytes()
        tail = OutputTail(stderr, len(stderr), False)
        return ExecResult(ExecStatus.FAILED, 1, None, 5, OutputTail(b"", 0, False), tail)


class WarningsReporter(NullReporter):
    """Keeps the warnings it is given."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def test_a_failed_import_ends_with_the_requirement_that_adds_it(
    project: Path, tmp_path: Path
) -> None:
    paths = Paths.from_environment({"JHANSI_HOME": str(tmp_path / "home")})
    reporter = WarningsReporter()
    runner = Runner(
        settings=load_settings(start=tmp_path, environ={}, paths=paths),
        paths=paths,
        reporter=reporter,
        backend=ImportFailingBackend(),
    )
    result = runner.run(RunRequest(script=project / "main.py"))
    assert result.status == "failed"
    assert result.missing_dependency is not None
    assert result.missing_dependency.requirement == "pyyaml"
    assert reporter.warnings == [
        "the script needs pyyaml; add it with --with pyyaml or a PEP 723 line"
    ]
    # A run that succeeded is not read for hints.
    assert (
        _runner(RecordingBackend(), tmp_path)
        .run(RunRequest(script=project / "main.py"))
        .missing_dependency
        is None
    )
