"""The settings one run asks for, laid over the configuration.

A :class:`~jhansi.request.RunRequest` carries what the user asked for, settings
included (:class:`~jhansi.request.SettingsOverrides`). This is where they become
:class:`~jhansi.config.Settings`: parsed and checked like the configuration's
own values, as its top layer (the "command line": an invalid one is a
:class:`~jhansi.errors.ConfigError`), before a
:class:`~jhansi.runner.Runner` is made with them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from jhansi.config import Settings, flag_layer, load_settings, resolve

if TYPE_CHECKING:
    from jhansi.paths import Paths
    from jhansi.request import RunRequest, SettingsOverrides

__all__ = ["settings_for", "with_overrides"]


def settings_for(
    request: RunRequest,
    *,
    start: Path | None = None,
    paths: Paths | None = None,
    strict: bool = True,
) -> Settings:
    """The settings ``request`` runs with: every layer, its overrides on top.

    The project configuration is looked for from ``start`` upwards (default: the
    request's project, else its script's directory, else the current directory).
    ``strict=False`` leaves out what an untrusted project file may not set (see
    :func:`~jhansi.config.load_settings`).
    """
    if start is None:
        if request.project is not None:
            start = request.project
        elif request.script is not None:
            start = request.script.absolute().parent
    return load_settings(start=start, flags=request.overrides.flags(), paths=paths, strict=strict)


def with_overrides(settings: Settings, overrides: SettingsOverrides) -> Settings:
    """``settings`` (loaded once, as a long-lived server does) with ``overrides`` on top.

    Each value is parsed as the top layer of :func:`~jhansi.config.load_settings`
    would parse it, so that a run gets the same settings either way.
    """
    flags = overrides.flags()
    if not flags:
        return settings
    top = resolve([flag_layer(flags)])
    changed: dict[str, dict[str, object]] = {}
    sources = dict(settings.sources)
    for section, key in flags:
        changed.setdefault(section, {})[key] = getattr(getattr(top, section), key)
        sources[f"{section}.{key}"] = top.sources[f"{section}.{key}"]
    sections = {
        name: replace(getattr(settings, name), **values) for name, values in changed.items()
    }
    return replace(settings, sources=sources, **sections)
