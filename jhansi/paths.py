"""Where jhansi keeps its data, configuration, cache and runtime files.

The platform's conventions come from platformdirs. ``JHANSI_HOME`` relocates all
four under one directory (``data/``, ``config/``, ``cache/``, ``run/``), which is
what tests and throwaway CI machines use.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "jhansi"


@dataclass(frozen=True, slots=True)
class Paths:
    """The four directories jhansi uses; none is created until it is needed."""

    data: Path
    """Ledger, named sandboxes, signing keys: what must outlive a cache wipe."""
    config: Path
    """The user configuration file ``config.toml``."""
    cache: Path
    """Environments and other content-addressed caches: safe to delete."""
    runtime: Path
    """Sockets and locks of running sandboxes."""

    @property
    def user_config_file(self) -> Path:
        """The user-level configuration file."""
        return self.config / "config.toml"

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Paths:
        """The directories for this user, honouring ``JHANSI_HOME`` when it is set."""
        env = os.environ if environ is None else environ
        home = env.get("JHANSI_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(
                data=root / "data",
                config=root / "config",
                cache=root / "cache",
                runtime=root / "run",
            )
        import platformdirs

        dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
        # platformdirs warns and falls back to a shared /tmp path without
        # XDG_RUNTIME_DIR (cron, CI, su): use a per-user directory instead.
        xdg_runtime = env.get("XDG_RUNTIME_DIR")
        if xdg_runtime:
            runtime = Path(xdg_runtime) / APP_NAME
        else:
            runtime = Path(tempfile.gettempdir()) / f"{APP_NAME}-{os.getuid()}"
        return cls(
            data=Path(dirs.user_data_dir),
            config=Path(dirs.user_config_dir),
            cache=Path(dirs.user_cache_dir),
            runtime=runtime,
        )


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 if missing; return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
