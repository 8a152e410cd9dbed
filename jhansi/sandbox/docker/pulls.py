"""Pulls that failed, remembered for a while, and what to do instead.

A failed pull is kept in the cache directory (per engine and image), so that
``auto``, which falls back to bubblewrap meanwhile, does not wait on an
unreachable registry every run; the engine is still asked for the image first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Final

from jhansi.errors import SandboxError
from jhansi.sandbox.engines import EngineInfo

#: The cache file (under the cache directory) where failed pulls are remembered.
PULL_FAILURES: Final = "pull-failures.json"
#: The alternative every "the engine cannot provide the image" error names.
BWRAP_ALTERNATIVE: Final = (
    "Or run on bubblewrap instead, which needs no image: --backend bwrap "
    '([sandbox] backend = "bwrap"; `jhansi doctor` says whether it works here).'
)


def _pull_key(engine: EngineInfo, image: str) -> str:
    return f"{engine.url}|{image}"


def _failed_pulls(cache_dir: Path | None) -> dict[str, Any]:
    if cache_dir is None:
        return {}
    try:
        known = json.loads((cache_dir / PULL_FAILURES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def failed_pull(
    cache_dir: Path | None, engine: EngineInfo, image: str, within: float
) -> SandboxError | None:
    """The error of a pull of ``image`` from ``engine`` that failed less than ``within``
    seconds ago (kept in ``cache_dir``)."""
    entry = _failed_pulls(cache_dir).get(_pull_key(engine, image))
    if not isinstance(entry, dict):
        return None
    at, error = entry.get("at"), entry.get("error")
    if not isinstance(at, (int, float)) or not isinstance(error, str):
        return None
    now = time.time()
    if not 0 <= now - at < within:
        return None
    when = time.strftime("%H:%M:%S UTC", time.gmtime(at))
    retry = time.strftime("%H:%M:%S UTC", time.gmtime(at + within))
    tool = "podman" if engine.name == "podman" else "docker"
    return SandboxError(
        f"{error} (at {when}; not tried again before {retry})",
        hint=f"Pull or load it yourself (`{tool} pull {image}`, `{tool} load`), or insist "
        f"on the engine with --backend docker, which pulls again. {BWRAP_ALTERNATIVE}",
    )


def remember_pull(
    cache_dir: Path | None, engine: EngineInfo, image: str, error: str | None
) -> None:
    """Note in ``cache_dir`` that a pull of ``image`` failed with ``error`` (``None``: it
    worked)."""
    if cache_dir is None:
        return
    from jhansi._cache import write_cache_file

    known = _failed_pulls(cache_dir)
    key = _pull_key(engine, image)
    if error is None:
        if key not in known:
            return
        del known[key]
    else:
        known[key] = {"at": time.time(), "error": error}
    write_cache_file(cache_dir / PULL_FAILURES, json.dumps(known).encode("utf-8"))
