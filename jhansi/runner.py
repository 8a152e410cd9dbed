"""The pipeline of one ``jhansi run``, as a readable list of steps.

``Runner.run(request)`` → read and check the script → find the project → hold
the named sandbox → choose the backend → build the :class:`SandboxSpec` →
snapshot the writable directories → run → diff → :class:`RunResult`.

Nothing here prints, prompts or exits: progress goes to the :class:`Reporter`,
refusals are :class:`~jhansi.errors.JhansiError`, and how the script ended is
data in the result.
"""

from __future__ import annotations

import ast
import io
import os
import re
import sys
import tempfile
import time
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

from jhansi.config import DEFAULT_MASK, Settings
from jhansi.deps.plan import DependencyPlan, plan, unresolved_error
from jhansi.deps.result import Dependencies
from jhansi.deps.target import Target
from jhansi.errors import InputError, JhansiError, LedgerError, SandboxError, UsageError
from jhansi.paths import Paths, ensure_private_dir
from jhansi.report import NullReporter, Reporter, Stream

# RunRequest and RunResult are public API: defined below the runner (:mod:`jhansi.records`
# reads them too), and importable from here as they always were.
from jhansi.request import RunRequest as RunRequest
from jhansi.request import Script
from jhansi.result import RunResult as RunResult
from jhansi.sandbox.changes import FileChange, Snapshot, budget_for, compare, shown_name, snapshot
from jhansi.sandbox.interface import (
    ENTRY_DIR,
    GATE_FD,
    HOME,
    PYTHON,
    SANDBOX_USER,
    WORKDIR,
    Backend,
    BackendInfo,
    ExecResult,
    ExecStatus,
    Limits,
    Mount,
    OutputTail,
    Overlay,
    SandboxSpec,
    XattrNamespace,
)
from jhansi.sandbox.masks import find_masked
from jhansi.sandbox.workspace import OpenSandbox, Workspace, default_name, validate_name

if TYPE_CHECKING:
    from datetime import timedelta

    from jhansi.deps.missing import MissingDependency
    from jhansi.deps.pylock import LockResult
    from jhansi.egress.session import EgressSession
    from jhansi.ledger.store import Ledger
    from jhansi.sandbox.docker import DockerBackend
    from jhansi.sandbox.layer import ApplyReport, Layer
    from jhansi.sandbox.overlay import LayerDirs
    from jhansi.supply.policy import SupplyCheck

ENTRY_SOURCE = Path(__file__).parent / "sandbox" / "entry.py"
ENTRY_TARGET = f"{ENTRY_DIR}/entry.py"
#: Where the locked environment is mounted (read-only) and put on the import path.
ENV_TARGET = f"{ENTRY_DIR}/env"
#: Where a script from outside the project (or from stdin) is mounted.
MAIN_DIR = f"{ENTRY_DIR}/main"
STDIN_NAME = "stdin.py"
#: How ``enforcement["work"]`` begins when no copy-on-write layer could be had (the
#: reason follows, then a closing parenthesis).
READ_ONLY_WORK = "read-only bind of the project (no copy-on-write layer: "
#: ``[sandbox] max_script_size``'s default.
DEFAULT_MAX_SCRIPT_SIZE = 1 << 20
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Warnings of one kind shown per run (refused egress, refused --rw changes); the rest
#: are counted in one more line and listed in the ledger.
_WARNED = 20
#: Seconds during which ``auto`` does not try again to pull an image whose pull failed
#: (it runs on bubblewrap meanwhile): an unreachable registry may take long to fail.
PULL_RETRY_AFTER = 600.0
#: Variables jhansi sets itself; ``--env`` may not replace them.
_RESERVED_ENV = frozenset({"HOME", "PATH", "PYTHONUNBUFFERED", "USER", "LOGNAME"})


@dataclass(frozen=True, slots=True)
class Cow:
    """A run's copy-on-write /work: the sandbox's layer over the project, and how the
    backend mounts it."""

    dirs: LayerDirs
    mechanism: str
    xattr: XattrNamespace


def new_run_id() -> str:
    """A sortable, unique run id: milliseconds since the epoch and 64 random bits."""
    return f"{int(time.time() * 1000):013x}-{os.urandom(8).hex()}"


def _decode(raw: bytes, where: str) -> str:
    if b"\x00" in raw:
        raise InputError(
            f"{where} is a binary file, not a Python script",
            hint="Pass the .py source file.",
        )
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        return raw.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        position = f" (byte {exc.start})" if isinstance(exc, UnicodeDecodeError) else ""
        raise InputError(
            f"{where} is not UTF-8 text{position}",
            hint="Save it as UTF-8, or declare its encoding in a `# -*- coding: ... -*-` line.",
        ) from None


def check_source(text: str, where: str) -> None:
    """Refuse code that does not parse, naming the line and column, before anything runs."""
    try:
        ast.parse(text, filename=where)
    except SyntaxError as exc:
        line = exc.lineno or 0
        column = exc.offset or 0
        raise InputError(
            f"{where}:{line}:{column}: syntax error: {exc.msg}",
            hint="Fix the script; nothing was run.",
        ) from None
    except ValueError as exc:  # e.g. null bytes after decoding
        raise InputError(f"{where}: {exc}", hint="Fix the script; nothing was run.") from None
    except (RecursionError, MemoryError):
        # CPython's parser gives up on expressions nested or chained thousands deep
        # (``x = ------...1``, ``1 + 1 + ...``): hostile or generated input, never a
        # script a person maintains. The size cap bounds what it costs to find out.
        raise InputError(
            f"{where}: the code nests too deeply for Python's parser",
            hint="Split the deeply nested or chained expression; nothing was run.",
        ) from None


def too_large(where: str, size: int | None, limit: int) -> InputError:
    """The refusal of a script over ``[sandbox] max_script_size`` (``size`` None: unknown,
    more than the limit)."""
    from jhansi.config import format_size

    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return InputError(
        f"{where} is {what}; scripts over {format_size(limit)} are refused unparsed",
        hint="Split it, or raise [sandbox] max_script_size (JHANSI_SANDBOX_MAX_SCRIPT_SIZE) "
        "if you mean to run it; nothing was run.",
    )


def read_script(path: Path, limit: int = DEFAULT_MAX_SCRIPT_SIZE) -> str:
    """The text of the script at ``path``, checked to be a readable, decodable file of at
    most ``limit`` bytes (read no further: a file may grow while it is read)."""
    if not path.exists():
        raise InputError(
            f"no such file: {path}",
            hint="Check the path, or run `jhansi run -` to read the code from stdin.",
        )
    if path.is_dir():
        candidate = path / "__main__.py"
        suggestion = candidate if candidate.is_file() else path / "main.py"
        raise InputError(
            f"{path} is a directory, not a script",
            hint=f"Name the Python file to run, for example `jhansi run {suggestion}`.",
        )
    if not path.is_file():
        raise InputError(f"{path} is not a regular file", hint="Pass a .py source file.")
    try:
        size = path.stat().st_size
        if size > limit:
            raise too_large(str(path), size, limit)
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise InputError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="Check the file's permissions.",
        ) from None
    if len(raw) > limit:
        raise too_large(str(path), None, limit)
    return _decode(raw, str(path))


def find_project(start: Path) -> Path:
    """The nearest ancestor of ``start`` holding ``pyproject.toml`` or ``.git``, else ``start``."""
    start = start.absolute()
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").exists() or (directory / ".git").exists():
            return directory
    return start


def unsafe_project(project: Path) -> str | None:
    """Why ``project`` must not be mounted as a whole, or ``None``."""
    resolved = project.resolve()
    if resolved == Path("/"):
        return "the root directory"
    home = Path.home().resolve()
    if resolved == home:
        return "your home directory"
    if resolved in home.parents:
        return f"a parent of your home directory ({resolved})"
    return None


def sandbox_env(extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The complete environment inside the sandbox: nothing comes from the host."""
    env = {
        "HOME": HOME,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        "TMPDIR": "/tmp",  # noqa: S108 - the sandbox's own private tmpfs
    }
    for key, value in extra:
        if not _ENV_KEY.match(key):
            raise UsageError(
                f"--env {key}=...: {key!r} is not a valid variable name",
                hint="Use letters, digits and '_', not starting with a digit.",
            )
        if key in _RESERVED_ENV:
            raise UsageError(
                f"--env {key}=... would replace a variable jhansi sets itself",
                hint=f"Leave {key} to jhansi (it is {env[key]!r} in the sandbox).",
            )
        env[key] = value
    return env


def select_backend(
    settings: Settings,
    reporter: Reporter,
    paths: Paths,
    *,
    make_engine: Callable[[], DockerBackend] | None = None,
    make_bwrap: Callable[[], Backend] | None = None,
) -> Backend:
    """The backend named by ``[sandbox] backend``; ``auto``: an engine that has (or can
    pull) the image, else bubblewrap.

    ``auto`` says why in :attr:`Backend.selection` (recorded with each run). An engine
    that answers but cannot provide the image (not present, and the pull fails: no
    registry here) is passed over with one warning, since the user may well have
    expected it; having no engine at all is the ordinary bubblewrap case and is one
    step line. Asking for the image costs nothing on the warm path: the engine's
    answer is kept by the backend, which asks for it on every run anyway. A failed
    pull is not tried again for :data:`PULL_RETRY_AFTER` seconds.

    ``make_engine`` and ``make_bwrap`` build the backends (default: from ``settings``).
    """
    engine_backend = make_engine or (lambda: _docker(settings, paths))
    bwrap_backend = make_bwrap or (lambda: _bwrap(settings, paths))
    choice = settings.sandbox.backend
    if choice == "bwrap":
        return bwrap_backend()
    if choice == "docker":
        return engine_backend()
    try:
        engine = engine_backend()
    except SandboxError as engine_error:
        backend = _bwrap_instead(bwrap_backend, engine_error)
        why = engine_error.message
        from jhansi.sandbox.engines import NO_ENGINE_RUNNING

        if why.startswith(NO_ENGINE_RUNNING):
            why = NO_ENGINE_RUNNING  # where it looked is in the record and in `jhansi doctor`
        reporter.step("backend", f"bwrap ({why})")
        backend.selection = f"auto: {engine_error.message}"
        return backend
    image = settings.sandbox.image
    where = f"{engine.engine.description} at {engine.engine.url}"
    try:
        engine.image(image, skip_pull_failed_within=PULL_RETRY_AFTER)
    except SandboxError as image_error:
        from jhansi.sandbox.docker import BWRAP_ALTERNATIVE

        detail = image_error.message
        pulled = f"cannot pull the image {image}: "
        if detail.startswith(pulled):
            detail = "the pull failed: " + detail.removeprefix(pulled)
        why = f"the container engine ({where}) cannot provide the image {image}: {detail}"
        hint = image_error.hint.replace(BWRAP_ALTERNATIVE, "").strip()
        backend = _bwrap_instead(bwrap_backend, SandboxError(why, hint=hint))
        reporter.warning(
            f"{why}; running on bwrap instead (--backend docker insists on the engine, "
            '[sandbox] backend = "bwrap" makes bwrap the choice, or pull or load the image)'
        )
        backend.selection = f"auto: {why}"
        return backend
    engine.selection = f"auto: the container engine ({where}) has the image {image}"
    return engine


def _bwrap_instead(make_bwrap: Callable[[], Backend], engine_error: SandboxError) -> Backend:
    """bubblewrap, since the engine cannot serve (``engine_error``); both reasons if neither."""
    try:
        return make_bwrap()
    except SandboxError as bwrap_error:
        raise SandboxError(
            f"no sandbox backend is usable: {engine_error.message}; {bwrap_error.message}",
            hint=f"{bwrap_error.hint} Or: {engine_error.hint} (`jhansi doctor` checks both.)",
        ) from None


def _bwrap(settings: Settings, paths: Paths) -> Backend:
    from jhansi.sandbox.bwrap import BwrapBackend

    return BwrapBackend.from_settings(
        settings.sandbox.bwrap, settings.sandbox.python, cache_dir=paths.cache
    )


def _docker(settings: Settings, paths: Paths) -> DockerBackend:
    from jhansi.sandbox.docker import DockerBackend

    return DockerBackend.from_settings(settings.sandbox.engine_url, cache_dir=paths.cache)


class _Sink:
    """Adapts the reporter to the backends' output sink, scrubbing secrets when bound."""

    def __init__(self, reporter: Reporter, egress: EgressSession | None = None) -> None:
        self._reporter = reporter
        self._scrubbers = (
            {"stdout": egress.scrubber(), "stderr": egress.scrubber()} if egress else None
        )

    def write(self, stream: Stream, data: bytes) -> None:
        if self._scrubbers is not None:
            data = self._scrubbers[stream].feed(data)
            if not data:
                return
        self._reporter.output(stream, data)

    def flush(self) -> None:
        """Pass on what the scrubbers held back (a possible start of a secret)."""
        if self._scrubbers is None:
            return
        for stream in ("stdout", "stderr"):
            rest = self._scrubbers[stream].flush()
            if rest:
                self._reporter.output(stream, rest)


class Runner:
    """Runs scripts with one set of settings."""

    def __init__(
        self,
        *,
        settings: Settings,
        paths: Paths,
        reporter: Reporter,
        backend: Backend | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.settings = settings
        self.paths = paths
        self.reporter = reporter
        self._backend = backend
        self._ledger = ledger
        self.workspace = Workspace.from_paths(paths)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        paths: Paths | None = None,
        reporter: Reporter | None = None,
        backend: Backend | None = None,
        ledger: Ledger | None = None,
    ) -> Runner:
        """A runner for ``settings``; the backend is chosen on first use unless given, and
        the ledger is the one the settings name unless given."""
        return cls(
            settings=settings,
            paths=paths or Paths.from_environment(),
            reporter=reporter or NullReporter(),
            backend=backend,
            ledger=ledger,
        )

    @property
    def ledger(self) -> Ledger:
        """Where every run and refusal is recorded."""
        if self._ledger is None:
            from jhansi.ledger.store import Ledger

            self._ledger = Ledger.from_settings(self.settings, paths=self.paths)
        return self._ledger

    @property
    def backend(self) -> Backend:
        """The sandbox backend (chosen once, on first use)."""
        if self._backend is None:
            self._backend = select_backend(self.settings, self.reporter, self.paths)
        return self._backend

    def limits(self) -> Limits:
        """The resource limits from the settings."""
        s = self.settings.sandbox
        return Limits(
            memory=s.memory,
            cpus=s.cpus,
            pids=s.pids,
            tmp_size=s.tmp_size,
            timeout=s.timeout,
            output_limit=s.output_limit,
        )

    def run(self, request: RunRequest) -> RunResult:
        """Run one script (or an interactive interpreter) in its sandbox, recorded."""
        run_id = new_run_id()
        # 0. the ledger can be written, or nothing runs (fail closed)
        ledger = self.ledger
        ledger.preflight()
        script: Script | None = None
        deps: Dependencies | None = None
        try:
            # 1. the script: read and parsed on the host, so bad input never starts a sandbox
            script, project = self._prepare_script(request, run_id)
            # 2. dependencies: planned, locked and installed before any sandbox starts
            if not request.interactive:
                deps = self._dependencies(request, script, run_id, refuse_unresolved=False)
                if deps.plan.unresolved:
                    raise unresolved_error(deps.plan, script.display)
            # 3. the named sandbox, held for the whole run, and the run itself (recorded
            #    as exec.start before and exec.end after)
            return self._in_sandbox(request, run_id, script, project, deps)
        except JhansiError as refusal:
            deps = getattr(refusal, "dependencies", None) or deps
            if not refusal.recorded and not isinstance(refusal, LedgerError):
                from jhansi.records import denied_body

                ledger.append(
                    "exec.denied",
                    denied_body(
                        request,
                        run_id,
                        script,
                        refusal,
                        deps,
                        ledger.put_blob,
                        config=[f.as_record() for f in self.settings.provenance],
                    ),
                )
                ledger.checkpoint()
            raise
        finally:
            if script is not None and script.from_stdin:
                _remove_quietly(script.host_path)

    def refuse(self, request: RunRequest, refusal: JhansiError) -> NoReturn:
        """Record ``refusal``, which came before the run could start (an untrusted project
        configuration: these settings are the user's own, without it), then raise it."""
        from jhansi.records import denied_body

        ledger = self.ledger
        ledger.preflight()
        ledger.append(
            "exec.denied",
            denied_body(
                request,
                new_run_id(),
                None,
                refusal,
                None,
                ledger.put_blob,
                config=[f.as_record() for f in self.settings.provenance],
            ),
        )
        ledger.checkpoint()
        refusal.recorded = True
        raise refusal

    def dependencies(
        self,
        request: RunRequest,
        *,
        install: bool = False,
        refuse_unresolved: bool = True,
        policy: bool = False,
    ) -> Dependencies:
        """Plan and lock (and with ``install``, install) what a script needs; run nothing.

        Without ``refuse_unresolved``, unresolved imports are returned in the plan
        (nothing is locked then) instead of raised: ``jhansi deps`` shows them. With
        ``policy``, the lock is checked against the policy and the verdict returned in
        :attr:`Dependencies.supply` (a denial is data here, not an error: ``jhansi check``).
        """
        run_id = new_run_id()
        script, _ = self._prepare_script(request, run_id)
        try:
            return self._dependencies(
                request,
                script,
                run_id,
                install=install,
                refuse_unresolved=refuse_unresolved,
                policy="report" if policy else "skip",
            )
        finally:
            if script.from_stdin:
                _remove_quietly(script.host_path)

    def sbom(self, request: RunRequest) -> bytes:
        """The CycloneDX SBOM of what ``request`` would run (planned, locked, checked)."""
        run_id = new_run_id()
        script, _ = self._prepare_script(request, run_id)
        try:
            deps = self._dependencies(request, script, run_id, install=False, policy="report")
            return self._sbom(script, deps, None)
        finally:
            if script.from_stdin:
                _remove_quietly(script.host_path)

    def _sbom(self, script: Script, deps: Dependencies, info: BackendInfo | None) -> bytes:
        from jhansi.supply.sbom_cache import cached_sbom

        # The document kept for these inputs, or made from the template kept for the same
        # dependencies (a new script): without the builder or the CycloneDX library.
        kept = cached_sbom(
            script_name=script.display,
            script_bytes=script.text.encode("utf-8"),
            deps=deps,
            backend=info,
            image=self.settings.sandbox.image,
            cache_dir=self.paths.cache,
        )
        if kept is not None:
            return kept
        from jhansi.supply.sbom import sbom_for_run

        return sbom_for_run(
            script_name=script.display,
            script_bytes=script.text.encode("utf-8"),
            deps=deps,
            backend=info,
            image=self.settings.sandbox.image,
            cache_dir=self.paths.cache,
        )

    def _bare_spec(self, run_id: str) -> SandboxSpec:
        """A spec naming only the interpreter: enough to ask what the target is."""
        s = self.settings.sandbox
        return SandboxSpec(
            run_id=run_id,
            argv=(PYTHON,),
            mounts=(),
            env=sandbox_env(()),
            limits=self.limits(),
            image=s.image,
            python=Path(s.python) if s.python else None,
            runtime=s.runtime if self.backend.name == "docker" else None,
        )

    def _dependencies(
        self,
        request: RunRequest,
        script: Script,
        run_id: str,
        *,
        install: bool = True,
        refuse_unresolved: bool = True,
        policy: Literal["enforce", "report", "skip"] = "enforce",
    ) -> Dependencies:
        target = self.backend.target(self._bare_spec(run_id))
        roots: tuple[Path, ...] = (
            (script.host_path.parent,) if not script.from_stdin else (Path.cwd(),)
        )
        if request.project is not None:
            roots = (*roots, request.project)
        # The script's own part: the only per-script work when its needs were met before.
        decided = plan(
            script.text,
            where=script.display,
            target=target,
            local_roots=roots,
            with_requirements=request.with_requirements,
            requirements_file=request.requirements_file,
        )
        warm = (
            install
            and policy == "enforce"
            and not request.upgrade
            and decided.requirements
            and not decided.unresolved
        )
        if not warm:
            return self._decide(
                request, script, decided, target, install, refuse_unresolved, policy
            )
        # What it needs was decided before (for this script or another): the lock, the
        # verdict and the environment are reused with no uv call (deps/warm.py).
        from jhansi.deps import warm as warm_cache
        from jhansi.deps.uv import resolver_settings

        today = time.strftime("%Y-%m-%d", time.gmtime())
        lock_path = self._lock_path(request, script, decided, target)
        try:
            lock_bytes: bytes | None = lock_path.read_bytes()
        except OSError:
            lock_bytes = None
        resolver = resolver_settings()

        def key_for(content: bytes | None) -> str:
            return warm_cache.decision_key(
                requirements=decided.specs,
                target=target,
                lock_bytes=content,
                frozen=request.frozen,
                exclude_newer=request.exclude_newer,
                resolver=resolver,
                policy=self.settings.policy,
                today=today,
            )

        key = key_for(lock_bytes)
        reused = warm_cache.load(
            self.paths.cache,
            key,
            plan=decided,
            target=target,
            lock_path=lock_path,
            lock_bytes=lock_bytes,
        )
        if reused is not None and lock_bytes is None and reused.lock is not None:
            # A new script: the lock made before for the same needs, where it expects it.
            from jhansi.deps.lock import write_atomically

            try:
                write_atomically(lock_path, reused.lock.content)
            except OSError:
                reused = None  # the slow way says what is wrong with the place
        if reused is not None:
            self._replay(reused)
            return reused
        checked = self._decide(
            request, script, decided, target, install, refuse_unresolved, policy, lock_path
        )
        if today == time.strftime("%Y-%m-%d", time.gmtime()):
            after = checked.lock.content if checked.lock is not None else lock_bytes
            warm_cache.store(self.paths.cache, key, checked, with_lock=lock_bytes is None)
            if after != lock_bytes:
                warm_cache.store(self.paths.cache, key_for(after), checked)
        return checked

    def _replay(self, deps: Dependencies) -> None:
        """Tell the reporter what deciding ``deps`` anew would have told it."""
        if deps.lock is not None:
            self.reporter.step(
                "lock", f"{len(deps.plan.requirements)} requirement(s) for {deps.target.describe()}"
            )
            self.reporter.step("policy", f"checking {len(deps.lock.packages)} locked package(s)")
        if deps.supply is not None:
            for finding in deps.supply.report.warnings:
                self.reporter.warning(f"policy: {finding.message}")

    def _decide(
        self,
        request: RunRequest,
        script: Script,
        decided: DependencyPlan,
        target: Target,
        install: bool,
        refuse_unresolved: bool,
        policy: Literal["enforce", "report", "skip"],
        lock_path: Path | None = None,
    ) -> Dependencies:
        """Lock, check and install what ``decided`` needs (the slow way, every step done)."""
        if decided.unresolved:
            if refuse_unresolved:
                raise unresolved_error(decided, script.display)
            return Dependencies(plan=decided, target=target)
        if not decided.requirements:
            return Dependencies(plan=decided, target=target, supply=self._policy(None, policy))
        from jhansi.deps.lock import lock

        self.reporter.step(
            "lock", f"{len(decided.requirements)} requirement(s) for {target.describe()}"
        )
        locked = lock(
            decided.specs,
            target,
            lock_file=lock_path or self._lock_path(request, script, decided, target),
            frozen=request.frozen,
            upgrade=request.upgrade,
            exclude_newer=request.exclude_newer,
            reporter=self.reporter,
            fix_command=f"jhansi lock {script.display}",
            cache_dir=self.paths.cache,
        )
        supply = self._policy(locked, policy)
        checked = Dependencies(plan=decided, target=target, lock=locked, supply=supply)
        if policy == "enforce" and supply is not None and supply.report.denied:
            from jhansi.supply.policy import PolicyDenied

            denial = PolicyDenied(supply.report, script.display)
            denial.dependencies = checked
            raise denial
        if policy == "enforce" and supply is not None:
            for finding in supply.report.warnings:
                self.reporter.warning(f"policy: {finding.message}")
        if not install:
            return checked
        from jhansi.deps.install import install as install_environment

        environment = install_environment(
            locked, target, cache_dir=self.paths.cache, reporter=self.reporter
        )
        return replace(checked, environment=environment)

    def _policy(
        self, locked: LockResult | None, mode: Literal["enforce", "report", "skip"]
    ) -> SupplyCheck | None:
        """The policy's verdict on a lock (before anything is installed)."""
        if mode == "skip":
            return None
        from jhansi.supply.policy import check_lock

        return check_lock(
            locked,
            settings=self.settings.policy,
            cache_dir=self.paths.cache,
            reporter=self.reporter,
        )

    def _lock_path(
        self, request: RunRequest, script: Script, decided: DependencyPlan, target: Target
    ) -> Path:
        if request.lock_file is not None:
            return request.lock_file.absolute()
        if script.from_stdin:
            # Code from stdin has no place of its own: its lock is kept in the cache, one
            # per requirement set and target (every new snippet that needs numpy shares it).
            from jhansi.deps.lock import inputs_digest, normalize_requirement

            needs = sorted({normalize_requirement(r) for r in decided.specs})
            digest = inputs_digest(needs, target, request.exclude_newer)[:16]
            return ensure_private_dir(self.paths.cache / "locks") / f"pylock.stdin-{digest}.toml"
        # PEP 751 names are pylock.<name>.toml with no dots in <name>.
        name = script.host_path.stem.replace(".", "-")
        return script.host_path.with_name(f"pylock.{name}.toml")

    def _in_sandbox(
        self,
        request: RunRequest,
        run_id: str,
        script: Script,
        project: Path | None,
        deps: Dependencies | None,
    ) -> RunResult:
        """Hold the named (or an ephemeral) sandbox and run in it."""
        name = validate_name(request.sandbox) if request.sandbox else None
        opener = (
            self.workspace.ephemeral()
            if request.ephemeral
            else self.workspace.open(
                name or default_name(project or (script.host_path.parent)),
                project=project,
                on_wait=lambda message: self.reporter.step("waiting", message),
                on_warning=self.reporter.warning,
            )
        )
        egress, egress_note = self._egress(request)
        try:
            with opener as sandbox:
                return self._run_in(
                    request, run_id, script, project, sandbox, deps, egress, egress_note
                )
        finally:
            if egress is not None:
                egress.close()

    def _report_refusals(self, egress: EgressSession) -> None:
        """Say what the proxy refused: a client library shows only "403 Forbidden".

        Not for a run with no network: what it tried is said once the run is over, in
        the front end's own words (:mod:`jhansi.egress.attempts`).
        """
        if egress.no_network:
            return
        from jhansi.egress.attempts import shown

        seen: set[str] = set()
        more = 0
        for event in egress.events():
            if event.get("decision") != "refused":
                continue
            host = shown(str(event.get("host")), 100)
            reason = shown(str(event.get("reason")), 300)
            line = f"egress refused {host}:{event.get('port')}: {reason}"
            if line in seen:
                continue
            if len(seen) >= _WARNED:
                more += 1
                continue
            seen.add(line)
            self.reporter.warning(line)
        if more:
            self.reporter.warning(
                f"egress refused {more} more connection(s); `jhansi ledger show` lists them all"
            )

    def _egress(self, request: RunRequest) -> tuple[EgressSession | None, str]:
        """The run's egress proxy, started, and what ``enforcement`` says of egress.

        With no host allowed, the proxy refuses and records every attempt
        (:func:`~jhansi.egress.session.open_no_network`); where that cannot be set up
        (a gVisor runtime that cannot reach a host socket), the run goes on without it,
        as one with no network always did, and ``enforcement`` says so.
        """
        from datetime import timedelta

        lifetime = timedelta(seconds=self.settings.sandbox.timeout + 600)
        wanted = request.secrets or request.allow_hosts
        if not (wanted or self.settings.secrets or self.settings.network.allow):
            return self._no_network(lifetime)
        from jhansi.egress.session import build_policy, open_session, parse_secret_flag

        policy = build_policy(
            self.settings,
            secrets=[parse_secret_flag(s) for s in request.secrets],
            allow_hosts=request.allow_hosts,
            paths=self.paths,
        )
        if policy is None:
            return self._no_network(lifetime)
        session = open_session(policy, runtime_dir=self.paths.runtime, lifetime=lifetime)
        hosts = [str(h) for h in policy.allow] + [
            f"{s.name}@{','.join(s.hosts)}" for s in policy.secrets
        ]
        self.reporter.step("egress", "through the proxy to " + ", ".join(hosts))
        return session, ""

    def _no_network(self, lifetime: timedelta) -> tuple[EgressSession | None, str]:
        """The proxy that only refuses and records, unless it cannot be had (then the
        run goes on with no network, its attempts unrecorded, and says why)."""
        unseen = "no host allowed; what the script tries is not recorded"
        try:
            from jhansi.egress.session import open_no_network

            session = open_no_network(runtime_dir=self.paths.runtime, lifetime=lifetime)
        except (JhansiError, OSError) as exc:
            why = exc.message if isinstance(exc, JhansiError) else (exc.strerror or str(exc))
            return None, f"{unseen} (the proxy could not be set up: {why})"
        try:
            reached = self.backend.reaches_host_sockets(
                self.settings.sandbox.runtime, session.socket
            )
        except (JhansiError, OSError):
            reached = False  # the run itself will say what is wrong with the backend
        except BaseException:
            session.close()
            raise
        if not reached:
            session.close()
            return None, f"{unseen} (the sandbox could not reach the proxy's socket here)"
        return session, (
            "no host allowed; clients that use the proxy variables (HTTPS_PROXY ...) reach "
            "jhansi's proxy on the host, which refuses and records each destination"
        )

    def _prepare_script(self, request: RunRequest, run_id: str) -> tuple[Script, Path | None]:
        if request.interactive:
            script = Script(Path(os.devnull), "<interactive>", from_stdin=False)
            start = request.project or Path.cwd()
        elif request.script is None:
            code = request.code or ""
            limit = self.settings.sandbox.max_script_size
            try:
                size = len(code.encode("utf-8"))
            except UnicodeEncodeError as exc:  # stdin's undecodable bytes (surrogateescape)
                raise InputError(
                    f"<stdin> is not UTF-8 text (character {exc.start})",
                    hint="Send the code as UTF-8.",
                ) from None
            if size > limit:
                raise too_large("<stdin>", size, limit)
            check_source(code, "<stdin>")
            script = Script(self._stdin_file(run_id, code), "<stdin>", from_stdin=True, text=code)
            start = request.project or Path.cwd()
        else:
            path = request.script.absolute()
            text = read_script(path, self.settings.sandbox.max_script_size)
            check_source(text, str(request.script))
            script = Script(path, str(request.script), from_stdin=False, text=text)
            start = request.project or path.parent
        project = (request.project or find_project(start)).absolute()
        if not project.is_dir():
            raise UsageError(
                f"--project {project}: not a directory", hint="Name the project's directory."
            )
        why = unsafe_project(project)
        if why:
            self.reporter.warning(
                f"not mounting {why} as the project: only the script is visible at {WORKDIR}; "
                "pass --project DIR to mount a project directory"
            )
            return script, None
        return script, project

    def _stdin_file(self, run_id: str, code: str) -> Path:
        # Read by the sandbox user, so world-readable inside a private directory.
        base = ensure_private_dir(self.paths.runtime)
        directory = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=base))
        directory.chmod(0o755)
        path = directory / STDIN_NAME
        path.write_text(code, encoding="utf-8")
        path.chmod(0o644)
        return path

    def _masked(self, project: Path) -> list[Path]:
        return list(find_masked(project, DEFAULT_MASK + self.settings.sandbox.mask))

    def _mounts(
        self,
        request: RunRequest,
        script: Script,
        project: Path | None,
        home: Path,
        layer: Layer | None = None,
        cow: Cow | None = None,
    ) -> tuple[list[Mount], str, list[str], str]:
        """The mounts, the script's path inside, top-level names masked in /work, and the
        directory the script imports from when it is not its own (``""``).

        With a ``layer`` (``--rw``), /work is the layer's staging directory, owned by
        the sandbox; the project itself is not mounted at all. With ``cow``, /work is
        the sandbox's copy-on-write layer over the project, masks included.
        """
        mounts = [Mount(ENTRY_SOURCE, ENTRY_TARGET)]
        masked_top: list[str] = []
        inside: str
        path0 = ""
        if project is not None:
            if layer is not None:
                mounts.append(Mount(layer.root, WORKDIR, read_only=False, owned=True))
                # The stand-ins are the layer's own empty entries: covered read-only too.
                masked = [layer.root / rel for rel in sorted(layer.masked)]
                base = layer.root
            elif cow is not None:
                dirs = cow.dirs
                overlay = Overlay((dirs.masks, dirs.project), dirs.upper, dirs.work, cow.xattr)
                mounts.append(
                    Mount(dirs.project, WORKDIR, read_only=False, kind="overlay", overlay=overlay)
                )
                masked = []  # stand-ins in the mask layer: nothing is mounted below /work
                base = project
            else:
                mounts.append(Mount(project, WORKDIR))
                masked = self._masked(project)
                base = project
            for path in masked:
                rel = path.relative_to(base).as_posix()
                mounts.append(Mount(path, f"{WORKDIR}/{rel}", kind="empty"))
                if "/" not in rel:
                    masked_top.append(rel)
            if request.interactive:
                inside = ""
            elif not script.from_stdin and script.host_path.is_relative_to(project):
                rel = script.host_path.relative_to(project).as_posix()
                inside = f"{WORKDIR}/{rel}"
                if cow is not None and _shadowed(cow.dirs, rel):
                    # What runs is the file jhansi read, hashed and recorded, never the
                    # layer's own version of it: bound on its own, importing from its place.
                    self.reporter.warning(
                        f"the sandbox's layer has its own {shown_name(rel)} (or deleted it): "
                        f"running the project's from {MAIN_DIR}"
                    )
                    path0 = inside.rpartition("/")[0]
                    inside = f"{MAIN_DIR}/{script.host_path.name}"
                    mounts.append(Mount(script.host_path, inside))
            else:
                inside = f"{MAIN_DIR}/{script.host_path.name}"
                mounts.append(Mount(script.host_path, inside))
        elif request.interactive:
            inside = ""
        else:
            inside = f"{WORKDIR}/{script.host_path.name}"
            mounts.append(Mount(script.host_path, inside))
        mounts.append(Mount(home, HOME, read_only=False, owned=True))
        return mounts, inside, masked_top, path0

    def _run_in(
        self,
        request: RunRequest,
        run_id: str,
        script: Script,
        project: Path | None,
        sandbox: OpenSandbox,
        deps: Dependencies | None,
        egress: EgressSession | None = None,
        egress_note: str = "",
    ) -> RunResult:
        backend = self.backend
        runtime = self.settings.sandbox.runtime
        if runtime and backend.name != "docker":
            raise SandboxError(
                f"the OCI runtime {runtime!r} needs the docker backend, not {backend.name}",
                hint="Run with --backend docker (an engine with that runtime registered), "
                "or unset [sandbox] runtime.",
            )
        layer = (
            self._make_layer(project, sandbox, run_id)
            if project is not None and request.rw
            else None
        )
        cow: Cow | None = None
        work = ""
        if layer is not None:
            work = "a copy of the project (--rw), applied to the project when the run ends"
        elif project is not None:
            found = self._copy_on_write(project, sandbox, run_id)
            if isinstance(found, Cow):
                cow = found
            else:
                # Said in enforcement, and in the hint when a write fails (not before
                # every run: most scripts never write there, and -q stays quiet).
                work = f"{READ_ONLY_WORK}{found})"
        try:
            return self._run_with(
                request,
                run_id,
                script,
                project,
                sandbox,
                deps,
                egress,
                backend,
                layer,
                egress_note,
                cow,
                work,
            )
        except BaseException:
            if layer is not None:
                self._abandon_layer(layer, sandbox, run_id)
            raise
        finally:
            if cow is not None:
                from jhansi.sandbox.overlay import finish_run

                finish_run(cow.dirs)

    def _copy_on_write(self, project: Path, sandbox: OpenSandbox, run_id: str) -> Cow | str:
        """The sandbox's layer over ``project``, ready for a run, or why /work cannot be
        copy-on-write here (the backend has no way, the layer would be in the project)."""
        from jhansi.sandbox.overlay import layer_dirs, misplaced, prepare

        if sandbox.directory is None:  # pragma: no cover - every OpenSandbox has one
            return "the sandbox has no directory for a layer"
        dirs = layer_dirs(sandbox.directory, project)
        why = misplaced(dirs)
        if why:
            return why
        try:
            dirs.root.parent.mkdir(mode=0o711, exist_ok=True)
        except OSError as exc:
            return f"cannot make {dirs.root.parent}: {exc.strerror or exc}"
        hint = replace(self._bare_spec(run_id), labels={"jhansi.sandbox": sandbox.name})
        support = self.backend.copy_on_write(hint, dirs.root.parent, dirs.project)
        if isinstance(support, str):
            return support
        try:
            prepare(dirs, self._masked(dirs.project), support.xattr)
        except OSError as exc:
            return f"cannot prepare the sandbox's layer in {dirs.root}: {exc.strerror or exc}"
        return Cow(dirs, support.mechanism, support.xattr)

    def _run_with(
        self,
        request: RunRequest,
        run_id: str,
        script: Script,
        project: Path | None,
        sandbox: OpenSandbox,
        deps: Dependencies | None,
        egress: EgressSession | None,
        backend: Backend,
        layer: Layer | None,
        egress_note: str = "",
        cow: Cow | None = None,
        work: str = "",
    ) -> RunResult:
        runtime = self.settings.sandbox.runtime
        mounts, inside, masked_top, path0 = self._mounts(
            request, script, project, sandbox.home, layer, cow
        )
        argv: list[str] = [PYTHON, "-I", "-S", ENTRY_TARGET, "--gate", GATE_FD]
        env = sandbox_env(request.env)
        if egress is not None:
            mounts.extend(egress.mounts.mounts)
            argv += egress.mounts.entry_args
            env.update(egress.mounts.env)
        environment = deps.environment if deps else None
        if environment is not None:
            mounts.append(Mount(environment.path, ENV_TARGET))
            argv += ["--path", ENV_TARGET]
        if script.from_stdin:
            argv += ["--path0", WORKDIR]
        elif path0:
            argv += ["--path0", path0]
        if request.interactive:
            argv.append("--interactive")
        else:
            argv += ["--", inside, *request.args]
        spec = SandboxSpec(
            run_id=run_id,
            argv=tuple(argv),
            mounts=tuple(mounts),
            env=env,
            limits=self.limits(),
            image=self.settings.sandbox.image,
            python=Path(self.settings.sandbox.python) if self.settings.sandbox.python else None,
            labels={"jhansi.sandbox": sandbox.name},
            runtime=runtime,
            interactive=request.interactive,
        )
        info = backend.info(spec)
        if backend.selection:
            info = replace(info, details={**info.details, "selected": backend.selection})
        self.reporter.step(
            "sandbox",
            f"{sandbox.name}{' (ephemeral)' if sandbox.ephemeral else ''} on {info.backend}",
        )
        watched: list[tuple[Path, str, tuple[str, ...]]] = [(sandbox.home, HOME, ())]
        if layer is not None:
            watched.append((layer.root, WORKDIR, tuple(masked_top)))
        elif cow is not None:
            watched.append((cow.dirs.upper, WORKDIR, ()))
        before: list[Snapshot] = []
        stdin = sys.stdin.buffer if request.interactive else None
        state = {"started": False, "failed": False}

        def record_start() -> None:
            """Snapshot what the run may change and write exec.start: before any of the
            script's code runs, while the sandbox may already be booting (at its gate)."""
            if state["started"]:
                return
            from jhansi.records import sandbox_fields, start_body

            try:
                # Bounded (entries, depth, time): the home may hold what an earlier run
                # left to make this one slow; past the budget the list is incomplete.
                budget = budget_for(spec.limits.timeout)
                before[:] = [
                    snapshot(root, area, skip=skip, budget=budget) for root, area, skip in watched
                ]
                ledger = self.ledger
                where = sandbox_fields(sandbox.name, sandbox.ephemeral, spec, info)
                sbom = self._sbom(script, deps, info) if deps is not None else None
                if sbom is not None and request.sbom is not None:
                    write_file(request.sbom, sbom)
                ledger.append(
                    "exec.start",
                    start_body(
                        request,
                        run_id,
                        script,
                        deps,
                        where,
                        ledger.put_blob,
                        sbom=sbom,
                        secrets=egress.secrets() if egress else [],
                        egress=egress.record() if egress and not egress.no_network else None,
                        config=[f.as_record() for f in self.settings.provenance],
                    ),
                )
            except BaseException:
                state["failed"] = True
                raise
            state["started"] = True

        # Nothing to scrub where no secret is bound (a run with no network, or hosts only).
        scrub = egress if egress is not None and egress.has_secrets else None
        sink = _Sink(self.reporter, scrub)
        try:
            result: ExecResult = backend.run(spec, sink, stdin=stdin, before_start=record_start)
            # A backend that gave up before starting anything (an engine error) still
            # ran through the ledger: its start and its end are recorded.
            record_start()
            sink.flush()
            if egress_note:
                result = replace(result, enforcement={**result.enforcement, "egress": egress_note})
            if scrub is not None:
                result = _scrub_result(result, scrub)
            if egress is not None:
                self._report_refusals(egress)
        except (KeyboardInterrupt, JhansiError) as stopped:
            if state["failed"]:
                raise  # exec.start could not be written: nothing ran, nothing to end
            # Started, so it ends in the ledger too: never an unpaired start we caused
            # (and a failure before the start is recorded as a start and its end).
            record_start()
            empty = OutputTail(b"", 0, False)
            why = "interrupted (Ctrl-C)" if isinstance(stopped, KeyboardInterrupt) else str(stopped)
            status = (
                ExecStatus.FAILED
                if isinstance(stopped, KeyboardInterrupt)
                else (ExecStatus.ENGINE_ERROR)
            )
            ended = ExecResult(status, None, None, 0, empty, empty, error=why)
            self._record_end(run_id, script, project, sandbox, info, ended, [], deps, egress, None)
            # (the layer, if any, is kept or removed by _run_in: nothing is applied)
            if isinstance(stopped, JhansiError):
                stopped.recorded = True
            raise
        changes, incomplete = self._changes(
            before, watched, spec.limits.timeout, cow.dirs if cow is not None else None
        )
        missing = missing_dependency(result, deps)
        if missing is not None:
            self.reporter.warning(missing.message())
        if cow is not None:
            from jhansi.sandbox.overlay import note_baselines

            try:
                note_baselines(cow.dirs, [c.path for c in changes if c.area == WORKDIR])
            except OSError as exc:
                self.reporter.warning(f"cannot note what the project held: {exc}")
        if work and "work" not in result.enforcement:
            result = replace(result, enforcement={**result.enforcement, "work": work})
        applied = None
        if layer is not None:
            try:
                applied = self._apply_layer(layer, sandbox, run_id)
            except OSError as exc:  # keeping the layer failed (disk full): it stays put
                from jhansi.sandbox.layer import ApplyReport

                applied = ApplyReport(kept=layer.root, error=f"{exc.strerror or exc}")
        return self._record_end(
            run_id,
            script,
            project,
            sandbox,
            info,
            result,
            changes,
            deps,
            egress,
            applied,
            incomplete=incomplete,
            missing=missing,
            layer=str(cow.dirs.upper) if cow is not None else None,
        )

    def _changes(
        self,
        before: list[Snapshot],
        watched: list[tuple[Path, str, tuple[str, ...]]],
        timeout: float,
        layer: LayerDirs | None = None,
    ) -> tuple[list[FileChange], str]:
        """What the run changed in the watched directories, and why that list may be
        incomplete. Within one budget (:func:`~jhansi.sandbox.changes.budget_for`: a
        quarter of the timeout, 5-60 s) for the snapshots, the diff and the hashing;
        never raises for what the script left behind (the run must still be recorded).
        With a copy-on-write ``layer``, /work's changes are read from its upper directory
        and said as the sandbox saw /work (:func:`~jhansi.sandbox.overlay.merged_changes`).
        """
        budget = budget_for(timeout)
        changes: list[FileChange] = []
        reasons: list[str] = []
        for old, (root, area, skip) in zip(before, watched, strict=True):
            try:
                after = snapshot(root, area, skip=skip, budget=budget)
                found = compare(old, after, budget)
                if layer is not None and area == WORKDIR:
                    from jhansi.sandbox.overlay import merged_changes

                    found = replace(found, changes=merged_changes(layer, found.changes, old, after))
            except (OSError, ValueError, RecursionError, MemoryError) as exc:
                reasons.append(f"{area}: the changes could not be listed ({exc})")
                continue
            changes += found.changes
            if found.incomplete:
                reasons.append(f"{area}: {found.incomplete}")
            if found.not_hashed:
                self.reporter.warning(
                    f"{area}: {found.not_hashed} changed file(s) not hashed (over the hashing "
                    "budget, or changed while read): recorded with their size and why"
                )
        if reasons:
            self.reporter.warning("the list of changed files is incomplete: " + "; ".join(reasons))
        return changes, "; ".join(reasons)

    def _layer_dir(self, sandbox: OpenSandbox, run_id: str) -> Path:
        if sandbox.directory is None:  # pragma: no cover - every OpenSandbox has one
            raise SandboxError("the sandbox has no directory for a --rw layer", hint="")
        return sandbox.directory / f"rw-{run_id}"

    def _make_layer(self, project: Path, sandbox: OpenSandbox, run_id: str) -> Layer:
        """Copy the project into the sandbox's staging directory (mounted at /work)."""
        from jhansi.sandbox.layer import make_layer

        def progress(files: int, size: int) -> None:
            self.reporter.step("rw", f"copying the project: {files} files, {size >> 20} MiB")

        root = self._layer_dir(sandbox, run_id)
        try:
            # As root, every backend runs the sandbox as another uid (1000, or a rootless
            # engine's subordinate uid), to whom the copy is handed: it must not show
            # what the read-only project would not.
            layer = make_layer(
                project,
                root,
                self._masked(project),
                progress=progress,
                others_only=os.getuid() == 0,
            )
        except OSError as exc:
            from jhansi.sandbox.workspace import remove_tree

            remove_tree(root)
            raise SandboxError(
                f"--rw: cannot copy the project into {root}: {exc.strerror or exc}",
                hint="Free space in jhansi's data directory, or run without --rw.",
            ) from None
        self.reporter.step(
            "rw",
            f"/work is a copy of the project ({layer.files} files, {layer.bytes >> 20} MiB, "
            f"{layer.seconds:.2f} s); its changes are applied when the run ends",
        )
        return layer

    def _keep(self, layer: Layer, sandbox: OpenSandbox, run_id: str) -> Path:
        """Where a layer that must outlive the run is kept (an ephemeral sandbox's
        directory is deleted, so its layer moves to the data directory)."""
        if not sandbox.ephemeral:
            return layer.root
        import shutil

        target = ensure_private_dir(self.paths.data / "rw-kept") / run_id
        shutil.move(layer.root, target)
        return target

    def _abandon_layer(self, layer: Layer, sandbox: OpenSandbox, run_id: str) -> None:
        """The run did not finish: apply nothing; keep the layer only if it holds changes."""
        from jhansi.sandbox.layer import plan_changes
        from jhansi.sandbox.workspace import remove_tree

        try:
            pending = plan_changes(layer)
        except OSError:
            pending = []
        if not pending:
            remove_tree(layer.root)
            return
        where = self._keep(layer, sandbox, run_id)
        self.reporter.warning(
            f"--rw: the run did not finish, so none of its {len(pending)} change(s) to /work "
            f"were applied; they are in {where}"
        )

    def _apply_layer(self, layer: Layer, sandbox: OpenSandbox, run_id: str) -> ApplyReport:
        """Apply the layer's changes to the project as the invoking user, and say what
        was refused or conflicted; remove the layer unless something must be kept."""
        from jhansi.sandbox.layer import ApplyReport, apply_changes, plan_changes
        from jhansi.sandbox.workspace import remove_tree

        try:
            report = apply_changes(layer, plan_changes(layer))
        except OSError as exc:
            report = ApplyReport(error=f"{exc.strerror or exc}")
        refused = report.by("refused")
        for outcome in refused[:_WARNED]:
            self.reporter.warning(
                f"--rw: not applied: {shown_name(outcome.path)} ({outcome.reason})"
            )
        if len(refused) > _WARNED:
            self.reporter.warning(
                f"--rw: {len(refused) - _WARNED} more change(s) not applied (refused); "
                "`jhansi ledger show` lists them all"
            )
        conflicts = report.by("conflict")
        if not conflicts and not report.error:
            remove_tree(layer.root)
            return report
        where = self._keep(layer, sandbox, run_id)
        for outcome in conflicts[:_WARNED]:
            self.reporter.warning(
                f"--rw: not applied: {shown_name(outcome.path)} ({outcome.reason}); the "
                f"sandbox's version is in {shown_name(str(where / outcome.path))}"
            )
        if len(conflicts) > _WARNED:
            self.reporter.warning(
                f"--rw: {len(conflicts) - _WARNED} more conflict(s); the sandbox's versions "
                f"are in {shown_name(str(where))}"
            )
        if report.error:
            self.reporter.warning(
                f"--rw: applying the changes stopped ({report.error}); what was not applied "
                f"is in {where}: fix the cause, copy what you need from there, then delete it"
            )
        return replace(report, kept=where)

    def _record_end(
        self,
        run_id: str,
        script: Script,
        project: Path | None,
        sandbox: OpenSandbox,
        info: BackendInfo,
        result: ExecResult,
        changes: list[FileChange],
        deps: Dependencies | None,
        egress: EgressSession | None = None,
        rw: ApplyReport | None = None,
        *,
        incomplete: str = "",
        missing: MissingDependency | None = None,
        layer: str | None = None,
    ) -> RunResult:
        """The result, once its ``exec.end`` record and a signed checkpoint are on disk.

        Whatever the script did, the record is written or this raises a
        :class:`LedgerError` (two lines, exit 5): a body that still cannot be recorded
        (a bug: :func:`~jhansi.records.end_body` bounds lists and escapes names) is
        stored whole as a blob, referenced from a minimal ``exec.end``.
        """
        from jhansi.records import end_body, fallback_end_body

        outcome = RunResult(
            run_id=run_id,
            status=result.status.value,
            exit_code=result.exit_code,
            signal=result.signal,
            duration_ms=result.duration_ms,
            script=script.display,
            project=str(project) if project else None,
            sandbox=sandbox.name,
            ephemeral=sandbox.ephemeral,
            home=str(sandbox.home),
            backend=info,
            stdout=result.stdout,
            stderr=result.stderr,
            files_changed=tuple(changes),
            enforcement=result.enforcement,
            error=result.error,
            dependencies=deps,
            ledger=str(self.ledger.directory),
            egress=tuple(egress.events()) if egress is not None else (),
            rw=rw,
            files_incomplete=incomplete,
            egress_dropped=egress.dropped_events() if egress is not None else 0,
            missing_dependency=missing,
            layer=layer,
        )
        ledger = self.ledger
        try:
            try:
                record = ledger.append("exec.end", end_body(outcome, ledger.put_blob))
            except (ValueError, TypeError) as problem:
                record = ledger.append(
                    "exec.end", fallback_end_body(outcome, ledger.put_blob, str(problem))
                )
            ledger.checkpoint()
        except JhansiError as exc:
            raise LedgerError(
                f"the run finished ({outcome.status}, exit {outcome.exit_code}) but its end "
                f"record could not be written: {exc.message}",
                hint="The ledger has an unpaired exec.start for run "
                f"{run_id}; fix the ledger's disk ({exc.hint}) before running again.",
            ) from exc
        except OSError as exc:  # a write the ledger did not wrap (disk full mid-append)
            raise LedgerError(
                f"the run finished ({outcome.status}, exit {outcome.exit_code}) but its end "
                f"record could not be written: {exc.strerror or exc}",
                hint="The ledger has an unpaired exec.start for run "
                f"{run_id}; free space on the ledger's disk, then run `jhansi ledger verify`.",
            ) from None
        return replace(outcome, record=record.hash)


def missing_dependency(result: ExecResult, deps: Dependencies | None) -> MissingDependency | None:
    """For a failed run, the distribution its ImportError names and it did not have."""
    data = result.stderr.data
    if result.status is not ExecStatus.FAILED or (
        b"ImportError" not in data and b"ModuleNotFoundError" not in data
    ):
        return None
    from jhansi.deps.missing import recognize

    locked = deps.lock.packages if deps is not None and deps.lock is not None else ()
    return recognize(data, installed=[package.name for package in locked])


def _scrub_result(result: ExecResult, egress: EgressSession) -> ExecResult:
    """The result with every form of a secret's value replaced in the kept output."""
    scrubber = egress.scrubber()
    return replace(
        result,
        stdout=replace(result.stdout, data=scrubber.scrub(result.stdout.data)),
        stderr=replace(result.stderr, data=scrubber.scrub(result.stderr.data)),
        error=scrubber.scrub(result.error.encode()).decode("utf-8", "replace"),
    )


def _shadowed(dirs: LayerDirs, rel: str) -> bool:
    """Whether /work/``rel`` in the sandbox is not the project's file (the layer changed,
    deleted or hid it)."""
    from jhansi.sandbox.overlay import shadows

    try:
        return shadows(dirs, rel)
    except OSError:
        return True


def write_file(path: Path, data: bytes) -> None:
    """Write a file the user asked for, atomically, or explain why it cannot be."""
    target = path.absolute()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(target)
    except OSError as exc:
        raise UsageError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="Choose a writable path for the file.",
        ) from None


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        path.parent.rmdir()
    except OSError:
        pass
