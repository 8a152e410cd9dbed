"""What a sandbox's interpreter is, asked once and remembered.

A probe runs a few lines of standard-library Python in the target interpreter
(the host's for bwrap, the image's for docker). Answers depend only on that
interpreter, so they are cached on disk under a key that changes with it (the
binary's path, size, modification time and inode; the image's id).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path


def cached(cache_dir: Path | None, store: str, key: str, compute: Callable[[], object]) -> object:
    """``compute()``, remembered in ``<cache_dir>/<store>`` under ``key``.

    Without a cache directory it is computed every time. A cache that cannot be
    read or written is no error: it is a cache.
    """
    if cache_dir is None:
        return compute()
    path = cache_dir / store
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key in known:
        return known[key]
    answer = compute()
    prefix = key.split("|", 1)[0] + "|"
    known = {k: v for k, v in known.items() if not k.startswith(prefix)}
    known[key] = answer
    with contextlib.suppress(OSError):
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        tmp.replace(path)
    return answer


def binary_key(path: str) -> str:
    """A key for the binary at ``path`` that changes when the file does."""
    st = Path(path).stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
