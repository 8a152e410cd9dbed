"""Cache files: written whole or not at all, and never a reason for a run to fail."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_cache_file(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically (a temporary file renamed into place).

    Returns False when the cache cannot be written: a cache that cannot be written only
    costs time next run, so the caller goes on.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return False
    return True
