"""The Python API: ``jhansi.run(...)``, the same pipeline as ``jhansi run``, without a terminal.

::

    import jhansi

    result = jhansi.run(code="print(6 * 7)", sandbox="demo")
    print(result.status, result.exit_code, result.stdout.data.decode())

A run goes through :class:`~jhansi.runner.Runner` exactly as the CLI's does:
settings are layered the same way (defaults < user config < project config <
``JHANSI_*`` environment < the keyword arguments here), dependencies are planned,
locked and installed, the sandbox is hardened the same way, and every run and
every refusal is recorded in the ledger.

How the *script* ended is data (``result.status``, ``result.exit_code``): a script
that fails is not an exception. What jhansi *refuses* to run is raised, as a
subclass of :class:`~jhansi.errors.JhansiError` carrying ``message``, ``hint`` and
the ``exit_code`` the CLI would use:

- :class:`~jhansi.errors.UsageError`, :class:`~jhansi.errors.ConfigError` (2): bad
  arguments, an invalid setting or configuration file;
- :class:`~jhansi.errors.PolicyError` (3): refused by policy;
- :class:`~jhansi.errors.SandboxError` (4): no usable backend, or the engine failed;
- :class:`~jhansi.errors.LedgerError` (5): the ledger cannot be written (nothing ran);
- :class:`~jhansi.errors.InputError` (6): the script is missing, unreadable, not
  UTF-8, or does not parse;
- :class:`~jhansi.errors.DependencyError` (7): an import nobody is known to provide,
  or the dependencies cannot be locked or installed.

Nothing here prints: progress goes to the ``reporter`` (default: none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jhansi.errors import UsageError

if TYPE_CHECKING:
    from jhansi.config import Settings
    from jhansi.paths import Paths
    from jhansi.report import Reporter
    from jhansi.request import RunRequest
    from jhansi.result import RunResult

__all__ = ["make_request", "run", "run_settings"]


def make_request(
    script: str | Path | None = None,
    *,
    code: str | None = None,
    args: Sequence[str] = (),
    sandbox: str | None = None,
    ephemeral: bool = False,
    requirements: Sequence[str] = (),
    requirements_file: str | Path | None = None,
    project: str | Path | None = None,
    rw: bool = False,
    env: Mapping[str, str] | None = None,
    frozen: bool = False,
    prompt: str | None = None,
    model: str | None = None,
    allowed_hosts: Sequence[str] = (),
    secrets: Sequence[str] = (),
) -> RunRequest:
    """The :class:`~jhansi.request.RunRequest` for one run, checked.

    Exactly one of ``script`` (a path) and ``code`` (the source text, as
    ``jhansi run -`` reads it from stdin) must be given. ``requirements`` are
    added to what the script declares or imports (``--with``);
    ``requirements_file`` replaces import detection (``--requirements``).
    Raises :class:`~jhansi.errors.UsageError` for arguments that cannot be run.
    """
    from jhansi.request import RunRequest

    if (script is None) == (code is None):
        raise UsageError(
            "give either a script path or code to run, not both and not neither",
            hint="Call jhansi.run('script.py') or jhansi.run(code='print(1)').",
        )
    if isinstance(args, str) or isinstance(requirements, str):
        raise UsageError(
            "args and requirements are sequences of strings, not one string",
            hint="Pass a list, for example args=['--verbose'] or requirements=['requests'].",
        )
    if isinstance(allowed_hosts, str) or isinstance(secrets, str):
        raise UsageError(
            "allowed_hosts and secrets are sequences of strings, not one string",
            hint="Pass a list, for example secrets=['API_KEY@api.example.com'].",
        )
    return RunRequest(
        script=Path(script) if script is not None else None,
        code=code,
        args=tuple(args),
        project=Path(project) if project is not None else None,
        sandbox=sandbox,
        ephemeral=ephemeral,
        rw=rw,
        env=tuple((env or {}).items()),
        with_requirements=tuple(requirements),
        requirements_file=Path(requirements_file) if requirements_file is not None else None,
        frozen=frozen,
        prompt=prompt,
        model=model,
        secrets=tuple(secrets),
        allow_hosts=tuple(allowed_hosts),
    )


def run_settings(
    *,
    start: Path | None = None,
    paths: Paths | None = None,
    backend: str | None = None,
    image: str | None = None,
    python: str | None = None,
    runtime: str | None = None,
    engine_url: str | None = None,
    timeout: float | str | None = None,
    memory: int | str | None = None,
    cpus: float | str | None = None,
    pids: int | None = None,
    tmp_size: int | str | None = None,
    output_limit: int | str | None = None,
    ledger: str | Path | None = None,
) -> Settings:
    """The layered settings, with the given values as the top layer (like CLI flags).

    ``None`` leaves a setting to the lower layers. The project configuration is
    looked for from ``start`` upwards (default: the current directory). Values are
    validated like the configuration's: an invalid one is a
    :class:`~jhansi.errors.ConfigError`.
    """
    from jhansi.config import load_settings

    flags: dict[tuple[str, str], object] = {
        ("sandbox", "backend"): backend,
        ("sandbox", "image"): image,
        ("sandbox", "python"): python,
        ("sandbox", "runtime"): runtime,
        ("sandbox", "engine_url"): engine_url,
        ("sandbox", "timeout"): timeout,
        ("sandbox", "memory"): memory,
        ("sandbox", "cpus"): cpus,
        ("sandbox", "pids"): pids,
        ("sandbox", "tmp_size"): tmp_size,
        ("sandbox", "output_limit"): output_limit,
        ("ledger", "path"): str(ledger) if ledger is not None else None,
    }
    return load_settings(start=start, flags=flags, paths=paths)


def run(
    script: str | Path | None = None,
    *,
    code: str | None = None,
    args: Sequence[str] = (),
    sandbox: str | None = None,
    ephemeral: bool = False,
    requirements: Sequence[str] = (),
    requirements_file: str | Path | None = None,
    project: str | Path | None = None,
    rw: bool = False,
    env: Mapping[str, str] | None = None,
    frozen: bool = False,
    prompt: str | None = None,
    model: str | None = None,
    allowed_hosts: Sequence[str] = (),
    secrets: Sequence[str] = (),
    backend: str | None = None,
    image: str | None = None,
    python: str | None = None,
    runtime: str | None = None,
    engine_url: str | None = None,
    timeout: float | str | None = None,
    memory: int | str | None = None,
    cpus: float | str | None = None,
    pids: int | None = None,
    tmp_size: int | str | None = None,
    output_limit: int | str | None = None,
    ledger: str | Path | None = None,
    reporter: Reporter | None = None,
    start: Path | None = None,
) -> RunResult:
    """Run a script (a path) or ``code`` (source text) in its sandbox; return how it ended.

    The arguments mirror ``jhansi run``'s options: ``args`` go to the script,
    ``sandbox`` names a persistent sandbox (default: the project's own),
    ``ephemeral`` gives a throwaway home, ``requirements`` are added to what the
    script declares or imports. ``backend`` (``auto``, ``docker``, ``bwrap``),
    ``timeout`` (seconds, or ``"5m"``), ``memory`` (bytes, or ``"2g"``) and the
    other settings override the configuration for this run only. ``start`` is
    where the project configuration is looked for (default: the project, else
    the script's directory, else the current directory).

    ``allowed_hosts`` (``HOST[:PORT]``) may be reached through the egress proxy;
    ``secrets`` (``NAME@HOST[,HOST…]``, or ``NAME`` bound in ``[secrets.NAME]``) are
    set in the sandbox as placeholders that the proxy swaps for the real value only
    on requests to their hosts.

    Returns the frozen :class:`~jhansi.result.RunResult` (``status``,
    ``exit_code``, ``stdout``/``stderr`` tails, ``files_changed``, ``run_id``,
    ``record``: the hash of its ledger record). Raises a
    :class:`~jhansi.errors.JhansiError` subclass when jhansi refuses to run it
    (see the module's documentation for which and when).
    """
    from jhansi.runner import Runner

    request = make_request(
        script,
        code=code,
        args=args,
        sandbox=sandbox,
        ephemeral=ephemeral,
        requirements=requirements,
        requirements_file=requirements_file,
        project=project,
        rw=rw,
        env=env,
        frozen=frozen,
        prompt=prompt,
        model=model,
        allowed_hosts=allowed_hosts,
        secrets=secrets,
    )
    if start is None:
        if request.project is not None:
            start = request.project
        elif request.script is not None:
            start = request.script.absolute().parent
    settings = run_settings(
        start=start,
        backend=backend,
        image=image,
        python=python,
        runtime=runtime,
        engine_url=engine_url,
        timeout=timeout,
        memory=memory,
        cpus=cpus,
        pids=pids,
        tmp_size=tmp_size,
        output_limit=output_limit,
        ledger=ledger,
    )
    return Runner.from_settings(settings, reporter=reporter).run(request)
