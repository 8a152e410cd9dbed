"""What one run is asked to do: :class:`RunRequest`, and the :class:`Script` read for it.

The request is everything the user asked for, in one frozen object: each
interface (the CLI, :func:`jhansi.run`, the MCP server) only builds it, and
:class:`~jhansi.runner.Runner` carries it out and reads the script
(:func:`jhansi.runner.script.read_script`) before any sandbox starts. The settings it
asks for (``--memory``, ``backend=``, ``timeout_seconds``) are in it too, as
:class:`SettingsOverrides`: :mod:`jhansi.overrides` lays them over the
configuration. Adding an option touches its declaration in each interface that
offers it, a field here, and the code that uses it.

Defined here, below the runner, so that what records a run (:mod:`jhansi.records`)
can name them without importing the runner; and light (dataclasses only), because
the CLI's fast path imports it on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path, PurePath

__all__ = ["RunRequest", "Script", "SettingsOverrides"]

#: The :class:`SettingsOverrides` fields that are not the ``[sandbox]`` key of their name.
SETTING_OF: dict[str, tuple[str, str]] = {
    "ledger": ("ledger", "path"),
    "advisory_db": ("policy", "advisory_db"),
}


@dataclass(frozen=True, slots=True)
class SettingsOverrides:
    """The settings asked for this run, laid over the configuration (``None``: not given).

    Values are as the user gave them (``"2g"``, ``512 << 20``, ``"5m"``, ``30.0``):
    they are parsed and checked like the configuration's own, as its top layer
    (the "command line"), by :func:`jhansi.overrides.settings_for`.
    """

    backend: str | None = None
    image: str | None = None
    python: str | None = None
    runtime: str | None = None
    engine_url: str | None = None
    memory: int | str | None = None
    cpus: float | str | None = None
    pids: int | str | None = None
    tmp_size: int | str | None = None
    timeout: float | str | None = None
    output_limit: int | str | None = None
    ledger: str | Path | None = None
    advisory_db: str | Path | None = None

    def flags(self) -> dict[tuple[str, str], object]:
        """The values given, by ``(section, key)``, as the configuration's top layer takes
        them (a path as its text)."""
        out: dict[tuple[str, str], object] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                out[SETTING_OF.get(spec.name, ("sandbox", spec.name))] = (
                    str(value) if isinstance(value, PurePath) else value
                )
        return out


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What the user asked for one run: what to run, how, and which settings to change.

    Everything it does not say comes from :class:`~jhansi.config.Settings`.
    """

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
    overrides: SettingsOverrides = SettingsOverrides()
    """The settings asked for this run (``--memory``, ``backend=``, ``timeout_seconds``):
    applied to the settings the runner is made with, never read by the runner itself."""
    replay_of: str | None = None
    """The run this one replays (``jhansi replay``): recorded as ``replay_of``."""
    replay_notes: tuple[str, ...] = ()
    """What the replay knowingly ran differently from the recorded run (recorded with it)."""


@dataclass(frozen=True, slots=True)
class Script:
    """A script read and checked on the host before any sandbox starts."""

    host_path: Path
    display: str
    from_stdin: bool
    text: str = ""
