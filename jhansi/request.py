"""What one run is asked to do: :class:`RunRequest`, and the :class:`Script` read for it.

Each interface (the CLI, :func:`jhansi.run`, the MCP server) builds the request;
:class:`~jhansi.runner.Runner` carries it out and reads the script
(:func:`jhansi.runner.read_script`) before any sandbox starts. Defined here, below
the runner, so that what records a run (:mod:`jhansi.records`) can name them
without importing the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunRequest", "Script"]


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What to run and how; everything else comes from :class:`~jhansi.config.Settings`."""

    script: Path | None
    """The script on the host; ``None`` when ``code`` is given (``jhansi run -``)."""
    code: str | None = None
    args: tuple[str, ...] = ()
    project: Path | None = None
    """The project directory mounted at /work (default: found from the script)."""
    sandbox: str | None = None
    """The named sandbox (default: the project's own)."""
    ephemeral: bool = False
    rw: bool = False
    """Let the script write the project itself: /work is a copy of the project, applied to
    it when the run ends (:mod:`jhansi.sandbox.layer`; configuration, locks, ``.git`` and
    masked paths never). Without it /work is the sandbox's copy-on-write layer over the
    project (:mod:`jhansi.sandbox.overlay`), which ``jhansi sandbox apply`` brings out."""
    env: tuple[tuple[str, str], ...] = ()
    interactive: bool = False
    """Run an interactive interpreter instead of a script (``jhansi sandbox shell``)."""
    with_requirements: tuple[str, ...] = ()
    """``--with``: requirements added to whatever the script declares or imports."""
    requirements_file: Path | None = None
    """``--requirements``: replaces import detection."""
    lock_file: Path | None = None
    """Where the lock goes (default: ``pylock.<script stem>.toml`` beside the script)."""
    frozen: bool = False
    """Refuse to create or change a lock (CI)."""
    upgrade: bool = False
    exclude_newer: str | None = None
    prompt: str | None = None
    """The prompt that produced the code (recorded in the ledger)."""
    model: str | None = None
    """The model that wrote the code (recorded in the ledger)."""
    sbom: Path | None = None
    """Also write the run's CycloneDX SBOM to this file (it is always recorded)."""
    secrets: tuple[str, ...] = ()
    """``--secret NAME@HOST[,HOST…]`` (or ``NAME``, bound in ``[secrets.NAME]``)."""
    allow_hosts: tuple[str, ...] = ()
    """``--allow-host HOST[:PORT]``: plain egress (no secret) to these hosts."""


@dataclass(frozen=True, slots=True)
class Script:
    """A script read and checked on the host before any sandbox starts."""

    host_path: Path
    display: str
    from_stdin: bool
    text: str = ""
