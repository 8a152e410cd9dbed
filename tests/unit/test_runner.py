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
from jhansi.errors import ExitCode, InputError, SandboxError, UsageError
from jhansi.paths import Paths
from jhansi.report import NullReporter
from jhansi.runner import Runner, RunRequest
from jhansi.runner.script import find_project
from jhansi.sandbox.docker import DockerBackend
from jhansi.sandbox.engine_client import EngineClient
from jhansi.sandbox.engines import EngineInfo
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


# -- choosing the backend -----------------------------------------------------------


class Notes(NullReporter):
    """A reporter that keeps jhansi's own lines."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.warnings: list[str] = []

    def step(self, name: str, detail: str = "") -> None:
        self.steps.append(f"{name}: {detail}")

    def warning(self, message: str) -> None:
        self.warnings.append(message)


class RegistryLessClient(EngineClient):
    """An engine's client whose engine has only ``present`` and reaches no registry.

    A stand-in for the wire (the real engine with no registry is in
    tests/integration/test_backend_choice.py): these tests are about the decision.
    """

    def __init__(self, present: set[str]) -> None:
        # No SDK client behind it: every method these tests reach is overridden below.
        super().__init__("unix:///nowhere/engine.sock", api=None, closer=lambda: None)
        self.present = present
        self.inspected: list[str] = []
        self.pulled: list[str] = []

    def image_inspect(self, image: str) -> dict[str, object] | None:
        self.inspected.append(image)
        return {"Id": f"sha256:{image}"} if image in self.present else None

    def image_pull(self, image: str, progress: object = None) -> None:
        self.pulled.append(image)
        raise SandboxError(
            f"cannot pull the image {image}: dial tcp: lookup registry: no such host",
            hint=f"Check the image name and your network (`docker pull {image}`).",
        )


ENGINE = EngineInfo(
    url="unix:///nowhere/engine.sock",
    name="docker",
    version="24.0",
    api_version="1.41",
    rootless=False,
    runtimes=("runc",),
    default_runtime="runc",
    security_options=(),
    cgroup_version="2",
)


def _choose(
    tmp_path: Path,
    client: RegistryLessClient,
    *,
    backend: str = "auto",
    bwrap: Callable[[], Backend] = RecordingBackend,
    reporter: Notes | None = None,
) -> tuple[Backend, Notes]:
    from jhansi.runner.backend import select_backend

    paths = Paths.from_environment({"JHANSI_HOME": str(tmp_path / "home")})
    settings = load_settings(
        start=tmp_path,
        environ={"JHANSI_SANDBOX_BACKEND": backend, "JHANSI_SANDBOX_IMAGE": "python:3.12-slim"},
        paths=paths,
    )
    notes = reporter or Notes()
    chosen = select_backend(
        settings,
        notes,
        paths,
        make_engine=lambda: DockerBackend(client, ENGINE, cache_dir=paths.cache),
        make_bwrap=bwrap,
    )
    return chosen, notes


def test_auto_takes_the_engine_that_has_the_image_asking_once(tmp_path: Path) -> None:
    client = RegistryLessClient({"python:3.12-slim"})
    chosen, notes = _choose(tmp_path, client)
    assert chosen.name == "docker"
    assert notes.warnings == []
    assert "has the image python:3.12-slim" in chosen.selection
    # The answer is kept: the run's own questions about the image cost no more calls.
    assert isinstance(chosen, DockerBackend)
    chosen.image("python:3.12-slim")
    assert client.inspected == ["python:3.12-slim"]
    assert client.pulled == []


def test_auto_runs_on_bwrap_when_the_engine_cannot_get_the_image(tmp_path: Path) -> None:
    client = RegistryLessClient(set())
    chosen, notes = _choose(tmp_path, client)
    assert isinstance(chosen, RecordingBackend)
    assert client.pulled == ["python:3.12-slim"]
    assert len(notes.warnings) == 1
    warning = notes.warnings[0]
    assert "cannot provide the image python:3.12-slim" in warning
    assert "no such host" in warning
    assert "--backend docker" in warning
    assert '[sandbox] backend = "bwrap"' in warning
    assert chosen.selection.startswith("auto: the container engine (docker 24.0 (rootful) at ")
    assert "no such host" in chosen.selection


def test_a_failed_pull_is_not_tried_again_soon_but_a_loaded_image_is_used(
    tmp_path: Path,
) -> None:
    client = RegistryLessClient(set())
    _choose(tmp_path, client)
    again, notes = _choose(tmp_path, client)
    assert isinstance(again, RecordingBackend)
    assert client.pulled == ["python:3.12-slim"]  # remembered, not pulled twice
    assert "not tried again before" in notes.warnings[0]
    # The engine is still asked first: an image loaded since is used at once.
    client.present.add("python:3.12-slim")
    loaded, notes = _choose(tmp_path, client)
    assert loaded.name == "docker"
    assert notes.warnings == []


def test_docker_named_is_strict_and_its_error_names_bwrap(tmp_path: Path) -> None:
    client = RegistryLessClient(set())
    _choose(tmp_path, client)  # auto remembered a failed pull: --backend docker pulls again
    chosen, notes = _choose(tmp_path, client, backend="docker")
    assert chosen.name == "docker"
    assert chosen.selection == ""
    assert isinstance(chosen, DockerBackend)
    with pytest.raises(SandboxError, match=r"cannot pull the image python:3\.12-slim") as raised:
        chosen.image("python:3.12-slim")  # what the run's target and info ask first
    assert raised.value.exit_code == ExitCode.SANDBOX
    assert "--backend bwrap" in raised.value.hint
    assert client.pulled == ["python:3.12-slim", "python:3.12-slim"]
    assert notes.warnings == []


def test_neither_backend_gives_both_reasons(tmp_path: Path) -> None:
    def no_bwrap() -> Backend:
        raise SandboxError("bubblewrap (bwrap) is not installed", hint="Install bubblewrap.")

    with pytest.raises(SandboxError) as raised:
        _choose(tmp_path, RegistryLessClient(set()), bwrap=no_bwrap)
    message = raised.value.message
    assert message.startswith("no sandbox backend is usable: ")
    assert "cannot provide the image python:3.12-slim" in message
    assert "bwrap) is not installed" in message
    assert "Install bubblewrap." in raised.value.hint
    assert "docker pull python:3.12-slim" in raised.value.hint
    assert "--backend bwrap" not in raised.value.hint  # the one alternative that failed


def test_why_auto_chose_is_recorded_with_the_run(project: Path, tmp_path: Path) -> None:
    from jhansi.ledger.read import iter_records

    backend = RecordingBackend()
    backend.selection = "auto: the container engine cannot provide the image x: no registry"
    runner = _runner(backend, tmp_path)
    result = runner.run(RunRequest(script=project / "main.py"))
    assert result.backend.details["selected"] == backend.selection
    start = next(r for r in iter_records(runner.ledger.directory) if r.kind == "exec.start")
    assert start.body["sandbox"]["details"]["selected"] == backend.selection


class KnockingBackend(RecordingBackend):
    """Does what a script's HTTP client does through the sandbox's forwarder: sends
    ``CONNECT`` to the proxy's socket (bound into the spec), and reads the answer.

    ``reaches`` stands for a backend that cannot reach a host socket (gVisor without
    ``--host-uds=open``), which cannot be had without that runtime.
    """

    def __init__(self, targets: tuple[str, ...], *, reaches: bool = True) -> None:
        super().__init__()
        self.targets = targets
        self.reaches = reaches
        self.answers: list[bytes] = []

    def reaches_host_sockets(self, runtime: str | None, socket: Path | None = None) -> bool:
        return self.reaches

    def run(
        self,
        spec: SandboxSpec,
        output: OutputSink,
        *,
        stdin: BinaryIO | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> ExecResult:
        import socket

        sockets = [m.source for m in spec.mounts if m.kind == "socket"]
        for target in self.targets if sockets else ():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(20)
                conn.connect(str(sockets[0]))
                conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                self.answers.append(conn.recv(65536).split(b"\r\n")[0])
        return super().run(spec, output, stdin=stdin, before_start=before_start)


def test_a_run_with_no_network_gets_a_proxy_that_refuses_and_records(
    project: Path, tmp_path: Path
) -> None:
    backend = KnockingBackend(("api.github.com:443", "api.github.com:443", "pypi.example:8443"))
    runner = _runner(backend, tmp_path)
    result = runner.run(RunRequest(script=project / "main.py"))
    spec = backend.specs[0]
    (sock,) = [m for m in spec.mounts if m.kind == "socket"]
    assert sock.target == "/opt/jhansi/egress/proxy.sock"
    assert not [m for m in spec.mounts if "ca-bundle" in m.target]  # no CA: nothing tunnelled
    assert spec.env["HTTPS_PROXY"] == spec.env["http_proxy"] == "http://127.0.0.1:3128"
    assert spec.env["NO_PROXY"] == "localhost,127.0.0.1,::1,127.0.0.0/8"  # its own loopback
    assert "SSL_CERT_FILE" not in spec.env
    assert spec.argv[spec.argv.index("--egress-socket") + 1] == sock.target
    assert backend.answers == [b"HTTP/1.1 403 Forbidden (jhansi: no network)"] * 3
    assert [(e["host"], e["port"], e["decision"], e["address"]) for e in result.egress] == [
        ("api.github.com", 443, "refused", None),
        ("api.github.com", 443, "refused", None),
        ("pypi.example", 8443, "refused", None),
    ]
    assert "refuses and records" in result.enforcement["egress"]
    assert not sock.source.exists()  # the socket and its directory are gone with the run
    assert list((tmp_path / "home" / "run").glob("egress-*")) == []
    from jhansi.ledger.read import iter_records

    records = list(iter_records(runner.ledger.directory))
    start = next(r.body for r in records if r.kind == "exec.start")
    end = next(r.body for r in records if r.kind == "exec.end")
    assert start["egress"] is None  # nothing was allowed
    assert [e["host"] for e in end["egress"]] == ["api.github.com"] * 2 + ["pypi.example"]


def test_what_a_run_with_no_network_tried_is_its_error_in_each_front_end(
    project: Path, tmp_path: Path
) -> None:
    """``--json``'s ``error`` in the CLI's words, the MCP tool's in its own; past five
    destinations the rest are counted."""
    from jhansi.mcp_server import run_error
    from jhansi.result import result_document

    backend = KnockingBackend(tuple(f"h{i}.example:443" for i in range(7)))
    result = _runner(backend, tmp_path).run(RunRequest(script=project / "main.py"))
    assert result.error == ""  # the sandbox itself had nothing to say
    cli = result_document(result)["error"].splitlines()
    assert cli[0] == (
        "the script tried to reach h0.example:443 (refused: no network); "
        "allow it with --allow-host h0.example"
    )
    assert cli[5] == (
        "the script tried 2 more destinations (refused: no network); "
        f"`jhansi ledger show {result.run_id}` lists them all"
    )
    assert len(cli) == 6
    mcp = run_error(result).splitlines()
    assert mcp[0] == (
        "the code tried to reach h0.example:443 (refused: no network); "
        'allow it with allowed_hosts=["h0.example"]'
    )
    assert "--allow-host" not in run_error(result)
    assert mcp[5].endswith("the run's ledger record lists them all")


def test_a_run_that_never_connects_builds_no_proxy(project: Path, tmp_path: Path) -> None:
    backend = KnockingBackend(())
    result = _runner(backend, tmp_path).run(RunRequest(script=project / "main.py"))
    assert result.egress == ()
    assert [m.kind for m in backend.specs[0].mounts].count("socket") == 1


def test_where_the_socket_cannot_be_reached_the_run_goes_on_unrecorded(
    project: Path, tmp_path: Path
) -> None:
    backend = KnockingBackend(("api.github.com:443",), reaches=False)
    result = _runner(backend, tmp_path).run(RunRequest(script=project / "main.py"))
    spec = backend.specs[0]
    assert [m for m in spec.mounts if m.kind == "socket"] == []
    assert "HTTPS_PROXY" not in spec.env
    assert "--egress-socket" not in spec.argv
    assert result.egress == ()
    assert result.enforcement["egress"] == (
        "no host allowed; what the script tries is not recorded (the sandbox could not reach "
        "the proxy's socket here)"
    )
    assert list((tmp_path / "home" / "run").glob("egress-*")) == []


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
