"""``jhansi doctor``: what jhansi can use on this machine, and how to fix what it cannot.

Each check is frozen data (:class:`Check`); the CLI renders them. A check never
raises: a missing tool is a result, with the fix in ``hint``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from jhansi.config import Settings
from jhansi.errors import JhansiError
from jhansi.paths import Paths

if TYPE_CHECKING:
    from jhansi.sandbox.endpoints import Endpoint

MIN_PYTHON = (3, 11)


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    hint: str = ""
    backend: str | None = None
    """Set when this check decides whether a sandbox backend is usable."""


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """All checks, in the order they were made."""

    checks: tuple[Check, ...]

    @property
    def usable_backends(self) -> tuple[str, ...]:
        """The sandbox backends that can run a script here."""
        return tuple(c.backend for c in self.checks if c.backend and c.ok)

    @property
    def ok(self) -> bool:
        """True when at least one sandbox backend is usable."""
        return bool(self.usable_backends)


def check_python() -> Check:
    """jhansi's own interpreter."""
    version = ".".join(str(v) for v in sys.version_info[:3])
    ok = sys.version_info[:2] >= MIN_PYTHON
    return Check(
        "python",
        ok,
        f"{sys.implementation.name} {version} at {sys.executable}",
        "" if ok else "jhansi needs Python 3.11 or newer: install it and reinstall jhansi.",
    )


def check_uv() -> Check:
    """The uv binary from the ``uv`` package, which resolves and installs dependencies."""
    try:
        import uv

        path = uv.find_uv_bin()
        out = subprocess.run(
            [path, "--version"], capture_output=True, timeout=20, check=True
        ).stdout.decode()
    except (ImportError, FileNotFoundError, subprocess.SubprocessError, OSError) as exc:
        return Check(
            "uv",
            False,
            f"not usable: {exc}",
            "Reinstall jhansi so that its `uv` dependency is present: `pip install --force-"
            "reinstall jhansi`.",
        )
    return Check("uv", True, f"{out.strip()} at {path}")


def check_bwrap(settings: Settings) -> Check:
    """bubblewrap: present, and able to create user namespaces here."""
    from jhansi.sandbox.bwrap.binary import find_bwrap, userns_hint, userns_problem

    try:
        info = find_bwrap(settings.sandbox.bwrap)
    except JhansiError as exc:
        return Check("bwrap", False, exc.message, exc.hint, backend="bwrap")
    detail = f"bubblewrap {info.version} ({info.origin}) at {info.path}"
    try:
        problem = userns_problem(info)
    except (OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    if problem:
        return Check(
            "bwrap",
            False,
            f"{detail}: cannot create a sandbox: {problem}",
            userns_hint(),
            backend="bwrap",
        )
    return Check("bwrap", True, f"{detail}; user namespaces work", backend="bwrap")


def _engine_check(endpoint: Endpoint, runtime: str | None, *, selected: bool) -> tuple[Check, bool]:
    """The check for one endpoint, and whether an engine answered there at all."""
    from jhansi.sandbox.engines import connect, describe

    url, reason = endpoint.url, endpoint.reason
    name = "docker" if selected else "engine (also found)"
    backend = "docker" if selected else None
    try:
        client = connect(url, timeout=5, tls=endpoint.tls)
    except JhansiError as exc:
        return Check(name, False, f"{exc.message} ({reason})", exc.hint, backend=backend), False
    try:
        info = describe(client, url)
    finally:
        client.close()
    detail = f"{info.description} at {url} ({reason}); runtimes: {', '.join(info.runtimes)}"
    if runtime and runtime not in info.runtimes:
        return Check(
            name,
            False,
            f"{detail}; the runtime {runtime!r} from [sandbox] runtime is not registered",
            f"Register {runtime} in the engine's configuration (Docker: /etc/docker/daemon.json "
            '"runtimes") and restart it, or unset [sandbox] runtime.',
            backend=backend,
        ), True
    return Check(name, True, detail, backend=backend), True


def check_engines(settings: Settings) -> list[Check]:
    """Docker Engine API endpoints (Docker or Podman): the one ``run`` would use, then others.

    An endpoint named by the user (``[sandbox] engine_url`` or ``DOCKER_HOST``) is
    the only one ``run`` uses, so it decides whether the docker backend is usable;
    other sockets that exist are listed for information.
    """
    from jhansi.sandbox.endpoints import START_HINT, candidate_endpoints

    runtime = settings.sandbox.runtime
    try:
        wanted = candidate_endpoints(settings.sandbox.engine_url)
    except JhansiError as exc:  # a docker context that does not exist
        return [Check("docker", False, exc.message, exc.hint, backend="docker")]
    defaults = candidate_endpoints(
        None,
        {
            **{k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")},
            "DOCKER_CONTEXT": "default",
        },
    )
    present = [e for e in defaults if Path(e.url.removeprefix("unix://")).exists()]
    image = settings.sandbox.image
    if wanted[0].explicit:
        selected, _ = _engine_check(wanted[0], runtime, selected=True)
        return [
            selected,
            *([check_image(wanted[0].url, image)] if selected.ok else []),
            *(
                _engine_check(e, runtime, selected=False)[0]
                for e in present
                if e.url != wanted[0].url
            ),
        ]
    probed = [_engine_check(e, runtime, selected=False) for e in present]
    checks = [check for check, _ in probed]
    # `run` uses the first engine that answers, whatever else is wrong with it.
    first_ok = next((i for i, (_, answered) in enumerate(probed) if answered), None)
    if first_ok is None:
        tried = ", ".join(e.url for e in defaults)
        none = Check(
            "docker",
            False,
            f"no container engine answers (tried {tried})",
            START_HINT,
            backend="docker",
        )
        return [none, *checks]
    chosen = replace(checks.pop(first_ok), name="docker", backend="docker")
    if not chosen.ok:
        return [chosen, *checks]
    return [chosen, check_image(present[first_ok].url, image), *checks]


def check_image(url: str, image: str) -> Check:
    """Whether the engine ``run`` would use has the image (asked, never pulled).

    Not a backend check: without the image a run pulls it, and where that fails
    (no registry) ``auto`` runs on bubblewrap instead, with a warning.
    """
    from jhansi.sandbox.engines import connect

    tool = "docker"
    try:
        client = connect(url, timeout=5)
        found = client.image_inspect(image)
    except JhansiError as exc:
        return Check("image", False, f"{image}: {exc.message}", exc.hint)
    if "libpod-api-version" in client.ping_headers or client.server.lower().startswith("libpod"):
        tool = "podman"
    if found is None:
        return Check(
            "image",
            False,
            f"{image} is not in the engine at {url} ([sandbox] image)",
            f"Pull or load it (`{tool} pull {image}`, `{tool} load`). Without it a run "
            "pulls it first; where that fails (no registry), the default backend (auto) runs "
            "on bwrap with a warning, and --backend docker fails.",
        )
    digest = str(found.get("Id", ""))
    return Check("image", True, f"{image} ({digest[:19] or 'no id'}) is in the engine at {url}")


def check_data_dir(paths: Paths) -> Check:
    """The data directory, where the ledger and sandbox homes live, is writable."""
    target = paths.data
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "data directory",
            False,
            f"{target} is not writable: {exc.strerror or exc}",
            "Make it writable, or set JHANSI_HOME to a directory you own.",
        )
    mode = target.stat().st_mode & 0o777
    note = "" if mode & 0o077 == 0 else f" (mode {mode:o}: readable by others)"
    return Check("data directory", True, f"{target} is writable{note}")


def check_secrets(paths: Paths) -> Check:
    """Where secret values come from: the OS keyring, or (without one) environment variables."""
    from jhansi.egress.secrets import SecretStore

    try:
        store = SecretStore.from_paths(paths)
        where = store.backend_description()
    except JhansiError as exc:
        return Check("secrets", False, exc.message, exc.hint)
    if store.fallback:
        return Check(
            "secrets",
            True,
            "environment variables: no keyring backend",
            "A secret NAME is read from the variable NAME; `jhansi secret set` needs a keyring "
            "(Secret Service, macOS Keychain, Windows Credential Locker).",
        )
    return Check("secrets", True, where)


def diagnose(settings: Settings, paths: Paths | None = None) -> DoctorReport:
    """Run every check and return the report."""
    paths = paths or Paths.from_environment(dict(os.environ))
    checks = [
        check_python(),
        check_uv(),
        check_bwrap(settings),
        *check_engines(settings),
        check_data_dir(paths),
        check_secrets(paths),
    ]
    return DoctorReport(tuple(checks))
