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
from typing import TYPE_CHECKING, Any

from jhansi.errors import UsageError

if TYPE_CHECKING:
    from jhansi.config import Settings
    from jhansi.paths import Paths
    from jhansi.report import Reporter
    from jhansi.request import RunRequest
    from jhansi.result import RunResult

__all__ = ["make_request", "run", "run_settings"]


#: :func:`run`'s keywords whose :class:`~jhansi.request.RunRequest` field has another name.
_FIELD_OF = {"requirements": "with_requirements", "allowed_hosts": "allow_hosts"}
#: Keywords that take a path as ``str`` or :class:`~pathlib.Path`.
_PATHS = frozenset({"script", "project", "requirements_file"})


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
) -> RunRequest:
    """The :class:`~jhansi.request.RunRequest` for one run, checked.

    The keywords are :func:`run`'s (its settings included, as the request's
    :class:`~jhansi.request.SettingsOverrides`). Exactly one of ``script`` (a
    path) and ``code`` (the source text, as ``jhansi run -`` reads it from stdin)
    must be given. ``requirements`` are added to what the script declares or
    imports (``--with``); ``requirements_file`` replaces import detection
    (``--requirements``). Raises :class:`~jhansi.errors.UsageError` for
    arguments that cannot be run.
    """
    # The parameters are the declaration: each becomes the field of its name (or of
    # _FIELD_OF's), so that adding an option touches nothing in this body. First, while
    # the parameters are the only local names.
    given: dict[str, Any] = dict(locals())
    from dataclasses import fields

    from jhansi.request import RunRequest, SettingsOverrides

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
    overrides = SettingsOverrides(
        **{spec.name: given.pop(spec.name, None) for spec in fields(SettingsOverrides)}
    )
    given["env"] = tuple((env or {}).items())
    values: dict[str, Any] = {}
    for name, value in given.items():
        if name in _PATHS and isinstance(value, str | Path):
            value = Path(value)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            value = tuple(value)
        values[_FIELD_OF.get(name, name)] = value
    return RunRequest(overrides=overrides, **values)


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
    overrides: dict[str, Any] = dict(locals())  # first: the parameters only
    del overrides["start"], overrides["paths"]
    from jhansi.config import load_settings
    from jhansi.request import SettingsOverrides

    flags = SettingsOverrides(**overrides).flags()
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
    # Every keyword but the last two is an option of the request, as make_request's
    # (first: while the parameters are the only local names).
    options: dict[str, Any] = dict(locals())
    del options["reporter"], options["start"]
    from jhansi.overrides import settings_for
    from jhansi.runner import Runner

    request = make_request(**options)
    settings = settings_for(request, start=start)
    return Runner.from_settings(settings, reporter=reporter).run(request)
