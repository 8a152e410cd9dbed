"""A keyring backend standing in for the OS keyring, which this headless machine lacks.

There is no Secret Service, Keychain or Credential Locker here (``keyring``
detects only its "fail" backend), and the brief forbids new dependencies such as
``keyrings.alt``; so the tests use this real subclass of
:class:`keyring.backend.KeyringBackend`. It keeps entries in memory, or, when
``JHANSI_TEST_KEYRING_FILE`` names a file, in that file, so that separate
``jhansi`` processes (selected with ``PYTHON_KEYRING_BACKEND``) share them. It
writes values in clear text: it is a test double for the OS's encrypted store,
and only ever lives under a test's temporary directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import PasswordDeleteError

#: What ``PYTHON_KEYRING_BACKEND`` names to make a ``jhansi`` subprocess use it.
IMPORT_PATH = "tests.unit.egress.keyring_stand_in.StandInKeyring"
FILE_VARIABLE = "JHANSI_TEST_KEYRING_FILE"


class StandInKeyring(KeyringBackend):
    """Entries by (service, username), in memory or in ``JHANSI_TEST_KEYRING_FILE``."""

    @properties.classproperty
    def priority(cls) -> float:
        """Viable only where a test selects it: never picked by keyring's own detection."""
        if not os.environ.get(FILE_VARIABLE):
            raise RuntimeError("the tests' stand-in keyring is only used when selected")
        return 1.0

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        env = os.environ.get(FILE_VARIABLE)
        self.path = path if path is not None else (Path(env) if env else None)
        self.entries: dict[str, str] = {}
        self.calls: list[tuple[str, str, str]] = []
        """(operation, service, username): what jhansi asked, for assertions."""

    def _load(self) -> dict[str, str]:
        if self.path is None:
            return self.entries
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        assert isinstance(data, dict)
        return {str(k): str(v) for k, v in data.items()}

    def _save(self, entries: dict[str, str]) -> None:
        if self.path is None:
            self.entries = entries
        else:
            self.path.write_text(json.dumps(entries))

    def get_password(self, service: str, username: str) -> str | None:
        self.calls.append(("get", service, username))
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        self.calls.append(("set", service, username))
        entries = self._load()
        entries[f"{service}\0{username}"] = password
        self._save(entries)

    def delete_password(self, service: str, username: str) -> None:
        self.calls.append(("delete", service, username))
        entries = self._load()
        if entries.pop(f"{service}\0{username}", None) is None:
            raise PasswordDeleteError("no such entry")
        self._save(entries)
