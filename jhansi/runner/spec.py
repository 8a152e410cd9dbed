"""The sandbox a run gets: its :class:`SandboxSpec`, mounts and environment.

/work is the project (read-only, masks covered by empty stand-ins), the sandbox's
copy-on-write layer over it (:class:`Cow`), or with ``--rw`` a copy applied when
the run ends; the script jhansi read and recorded is what runs; nothing of the
host's environment comes in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from jhansi.config import DEFAULT_MASK, Settings
from jhansi.errors import UsageError
from jhansi.report import Reporter
from jhansi.request import RunRequest, Script
from jhansi.sandbox.changes import shown_name
from jhansi.sandbox.interface import (
    ENTRY_DIR,
    GATE_FD,
    HOME,
    PYTHON,
    SANDBOX_USER,
    WORKDIR,
    Backend,
    Limits,
    Mount,
    Overlay,
    SandboxSpec,
    XattrNamespace,
)
from jhansi.sandbox.masks import find_masked, masked_kept
from jhansi.sandbox.workspace import OpenSandbox

if TYPE_CHECKING:
    from jhansi.deps.result import Dependencies
    from jhansi.egress.session import EgressSession
    from jhansi.sandbox.layer import Layer
    from jhansi.sandbox.overlay import LayerDirs

ENTRY_SOURCE = Path(__file__).parent.parent / "sandbox" / "entry.py"
ENTRY_TARGET = f"{ENTRY_DIR}/entry.py"
#: Where the locked environment is mounted (read-only) and put on the import path.
ENV_TARGET = f"{ENTRY_DIR}/env"
#: Where a script from outside the project (or from stdin) is mounted.
MAIN_DIR = f"{ENTRY_DIR}/main"
#: How ``enforcement["work"]`` begins when no copy-on-write layer could be had (the
#: reason follows, then a closing parenthesis).
READ_ONLY_WORK = "read-only bind of the project (no copy-on-write layer: "
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Variables jhansi sets itself; ``--env`` may not replace them.
_RESERVED_ENV = frozenset({"HOME", "PATH", "PYTHONUNBUFFERED", "USER", "LOGNAME"})


@dataclass(frozen=True, slots=True)
class Cow:
    """A run's copy-on-write /work: the sandbox's layer over the project, and how the
    backend mounts it."""

    dirs: LayerDirs
    mechanism: str
    xattr: XattrNamespace


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


def run_limits(settings: Settings) -> Limits:
    """The resource limits from the settings."""
    s = settings.sandbox
    return Limits(
        memory=s.memory,
        cpus=s.cpus,
        pids=s.pids,
        tmp_size=s.tmp_size,
        timeout=s.timeout,
        output_limit=s.output_limit,
    )


def bare_spec(settings: Settings, backend: Backend, run_id: str) -> SandboxSpec:
    """A spec naming only the interpreter: enough to ask what the target is."""
    s = settings.sandbox
    return SandboxSpec(
        run_id=run_id,
        argv=(PYTHON,),
        mounts=(),
        env=sandbox_env(()),
        limits=run_limits(settings),
        image=s.image,
        python=Path(s.python) if s.python else None,
        runtime=s.runtime if backend.name == "docker" else None,
    )


def masked_paths(settings: Settings, project: Path) -> list[Path]:
    """The paths of ``project`` the sandbox must not see (built-in and configured masks)."""
    return list(find_masked(project, DEFAULT_MASK + settings.sandbox.mask))


def copy_on_write(
    project: Path, sandbox: OpenSandbox, run_id: str, *, settings: Settings, backend: Backend
) -> Cow | str:
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
    hint = replace(bare_spec(settings, backend, run_id), labels={"jhansi.sandbox": sandbox.name})
    support = backend.copy_on_write(hint, dirs.root.parent, dirs.project)
    if isinstance(support, str):
        return support
    try:
        # Kept with the layer, reused while the project's directories are as they were.
        patterns = DEFAULT_MASK + settings.sandbox.mask
        masked = masked_kept(dirs.project, patterns, dirs.walks / "masks.json")
        prepare(dirs, masked, support.xattr)
    except OSError as exc:
        return f"cannot prepare the sandbox's layer in {dirs.root}: {exc.strerror or exc}"
    return Cow(dirs, support.mechanism, support.xattr)


def build_spec(
    request: RunRequest,
    run_id: str,
    script: Script,
    project: Path | None,
    sandbox: OpenSandbox,
    deps: Dependencies | None,
    egress: EgressSession | None,
    *,
    settings: Settings,
    reporter: Reporter,
    layer: Layer | None,
    cow: Cow | None,
) -> tuple[SandboxSpec, list[str]]:
    """The run's spec, and the top-level names masked in /work (not changes of the
    script's when a ``--rw`` layer is compared)."""
    runtime = settings.sandbox.runtime
    mounts, inside, masked_top, path0 = _mounts(
        request, script, project, sandbox.home, settings, reporter, layer, cow
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
        limits=run_limits(settings),
        image=settings.sandbox.image,
        python=Path(settings.sandbox.python) if settings.sandbox.python else None,
        labels={"jhansi.sandbox": sandbox.name},
        runtime=runtime,
        interactive=request.interactive,
    )
    return spec, masked_top


def _mounts(
    request: RunRequest,
    script: Script,
    project: Path | None,
    home: Path,
    settings: Settings,
    reporter: Reporter,
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
            masked = masked_paths(settings, project)
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
                reporter.warning(
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


def _shadowed(dirs: LayerDirs, rel: str) -> bool:
    """Whether /work/``rel`` in the sandbox is not the project's file (the layer changed,
    deleted or hid it)."""
    from jhansi.sandbox.overlay import shadows

    try:
        return shadows(dirs, rel)
    except OSError:
        return True
