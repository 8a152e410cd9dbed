"""The secret store: where the real values of the secrets a sandbox may use come from.

Values live in the operating system's keyring (the ``keyring`` library, service
``jhansi``: Secret Service on Linux desktops, the macOS Keychain, the Windows
Credential Locker). A secret NAME that is not in the keyring comes from the
host environment variable NAME, which is also the only source on machines with
no usable keyring backend (CI runners, servers): there ``set`` and ``delete``
refuse and say so.

Keyrings cannot list their entries, so the *names* of stored secrets (never
their values) are kept in ``secrets.json`` in jhansi's configuration directory.
No value is ever written to a file by jhansi, printed, or put into an error.

``keyring`` is imported only when a store is first asked something: finding
the backend scans entry points and may talk to D-Bus.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from jhansi.errors import ConfigError, UsageError
from jhansi.paths import Paths, ensure_private_dir

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

#: The keyring service every secret is stored under (the secret's name is the "user").
SERVICE: Final = "jhansi"
#: Secret names are environment variable names: the sandbox sees NAME=<placeholder>.
NAME_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: The index of stored names, in the configuration directory.
INDEX_NAME: Final = "secrets.json"

Origin = Literal["keyring", "environment", "missing"]


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where the value of one secret would come from right now (never the value)."""

    name: str
    origin: Origin


def check_name(name: str) -> str:
    """``name`` if it is a valid secret name, else a :class:`UsageError`."""
    if not NAME_PATTERN.match(name):
        raise UsageError(
            f"{name!r} is not a valid secret name",
            hint="Use an environment variable name: letters, digits and _, not starting "
            "with a digit (for example STRIPE_KEY).",
        )
    return name


def _check_value(name: str, value: str, where: str) -> str:
    """``value`` if it can be sent in an HTTP header; the error never contains it."""
    if not value:
        raise UsageError(
            f"the value of secret {name} {where} is empty",
            hint=f"Give {name} a value: `jhansi secret set {name}`.",
        )
    if any(c in value for c in "\r\n\0"):
        raise UsageError(
            f"the value of secret {name} {where} contains a line break or a NUL byte",
            hint="Secrets are sent in HTTP headers, which cannot carry those: store the value "
            "on one line.",
        )
    return value


def _unusable(backend: KeyringBackend) -> bool:
    """Whether ``backend`` is keyring's way of saying there is no keyring."""
    from keyring.backends import chainer, fail, null

    if isinstance(backend, fail.Keyring | null.Keyring):
        return True
    return isinstance(backend, chainer.ChainerBackend) and not chainer.ChainerBackend.backends


def _backend_name(backend: KeyringBackend) -> str:
    from keyring.backends import chainer

    if isinstance(backend, chainer.ChainerBackend):
        return ", ".join(str(b.name) for b in chainer.ChainerBackend.backends)
    return str(backend.name)


class SecretStore:
    """Secret values by name: the keyring first, then the environment.

    ``backend`` is a keyring backend to use instead of the one ``keyring``
    detects (tests); ``environ`` the environment to fall back on (default: the
    process's).
    """

    def __init__(
        self,
        *,
        index: Path,
        backend: KeyringBackend | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.index = index
        """The file that lists the names of stored secrets."""
        self._given = backend
        self._environ = os.environ if environ is None else environ
        self._resolved = False
        self._backend: KeyringBackend | None = None

    @classmethod
    def from_paths(cls, paths: Paths, *, environ: Mapping[str, str] | None = None) -> SecretStore:
        """The store of this user: the detected keyring, the index in ``paths.config``."""
        return cls(index=paths.config / INDEX_NAME, environ=environ)

    # -- the backend ----------------------------------------------------------------------

    def _keyring(self) -> KeyringBackend | None:
        """The usable keyring backend, or ``None`` when there is none (environment only)."""
        if not self._resolved:
            backend = self._given
            if backend is None:
                import keyring

                try:
                    backend = keyring.get_keyring()
                except Exception as exc:  # third-party backends fail in their own ways
                    raise ConfigError(
                        f"the keyring backend cannot be loaded: {exc}",
                        hint="Check PYTHON_KEYRING_BACKEND and keyring's keyringrc.cfg "
                        "(`keyring diagnose` shows where it is).",
                    ) from None
            self._backend = None if _unusable(backend) else backend
            self._resolved = True
        return self._backend

    @property
    def fallback(self) -> bool:
        """True when there is no usable keyring: values come from the environment only."""
        return self._keyring() is None

    def backend_description(self) -> str:
        """Where values come from, in a few words (``doctor``, ``secret ls``)."""
        backend = self._keyring()
        if backend is None:
            return "environment variables (no keyring backend)"
        return f"keyring: {_backend_name(backend)}"

    def _the_keyring(self) -> str:
        backend = self._keyring()
        return f"the keyring ({_backend_name(backend)})" if backend else "the keyring"

    def _keyring_error(self, doing: str, exc: Exception) -> ConfigError:
        return ConfigError(
            f"{self._the_keyring()} failed {doing}: {type(exc).__name__}: {exc}",
            hint="Unlock the keyring (log in to the session that owns it), or export the "
            "secret as an environment variable of the same name.",
        )

    # -- values ---------------------------------------------------------------------------

    def _stored(self, name: str) -> str | None:
        from keyring.errors import KeyringError

        backend = self._keyring()
        if backend is None:
            return None
        try:
            value = backend.get_password(SERVICE, name)
        except KeyringError as exc:
            raise self._keyring_error(f"reading {name}", exc) from None
        return None if value is None else str(value)

    def origin(self, name: str) -> Origin:
        """Where the value of ``name`` would come from (may ask the keyring)."""
        check_name(name)
        if self._stored(name) is not None:
            return "keyring"
        return "environment" if self._environ.get(name) else "missing"

    def get(self, name: str) -> str:
        """The value of secret ``name``: from the keyring, else the environment variable."""
        check_name(name)
        value = self._stored(name)
        if value is not None:
            return _check_value(name, value, "in the keyring")
        value = self._environ.get(name)
        if value:
            return _check_value(name, value, "in the environment")
        where = (
            "there is no keyring backend here and the environment has no such variable"
            if self.fallback
            else f"neither {self._the_keyring()} nor the environment has it"
        )
        raise ConfigError(
            f"secret {name} is not set: {where}",
            hint=f"Store it with `jhansi secret set {name}`, or export {name} in the "
            "environment jhansi runs in.",
        )

    def writable_keyring(self, name: str) -> KeyringBackend:
        """The keyring that :meth:`set` would store ``name`` in; a :class:`UsageError` when
        there is none (so a command can refuse before it asks for the value)."""
        check_name(name)
        backend = self._keyring()
        if backend is None:
            raise UsageError(
                "there is no keyring backend here, so jhansi cannot store secrets",
                hint=f"Export {name} in the environment jhansi runs in (jhansi reads it from "
                "there), or install a keyring backend (Secret Service, macOS Keychain, "
                "Windows Credential Locker).",
            )
        return backend

    def set(self, name: str, value: str) -> None:
        """Store ``value`` as secret ``name`` in the keyring (refused without one)."""
        from keyring.errors import KeyringError

        _check_value(check_name(name), value, "given")
        backend = self.writable_keyring(name)
        try:
            backend.set_password(SERVICE, name, value)
        except KeyringError as exc:
            raise self._keyring_error(f"storing {name}", exc) from None
        self._update_index(add=name)

    def delete(self, name: str) -> None:
        """Remove secret ``name`` from the keyring (and its name from the index)."""
        from keyring.errors import KeyringError, PasswordDeleteError

        check_name(name)
        backend = self._keyring()
        if backend is None:
            raise UsageError(
                f"there is no keyring backend here: {name} can only come from the environment",
                hint=f"Unset {name} in the environment jhansi runs in.",
            )
        try:
            backend.delete_password(SERVICE, name)
        except PasswordDeleteError:
            if name not in self.names():
                raise ConfigError(
                    f"there is no secret {name} in {self._the_keyring()}",
                    hint="`jhansi secret ls` lists the stored secrets.",
                ) from None
        except KeyringError as exc:
            raise self._keyring_error(f"deleting {name}", exc) from None
        self._update_index(remove=name)

    # -- the index of names ---------------------------------------------------------------

    def names(self) -> list[str]:
        """The names of the secrets stored with :meth:`set`, sorted."""
        try:
            raw = self.index.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(
                f"cannot read the secret index {self.index}: {exc.strerror or exc}",
                hint="Make it readable, or delete it (the values stay in the keyring).",
            ) from None
        try:
            data = json.loads(raw)
            names = data["names"]
            if not isinstance(names, list):
                raise TypeError("names is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"the secret index {self.index} is damaged: {exc}",
                hint="Delete it; `jhansi secret set` writes it again (the values stay in the "
                "keyring).",
            ) from None
        return sorted({str(n) for n in names if NAME_PATTERN.match(str(n))})

    def sources(self, extra: tuple[str, ...] = ()) -> list[SecretSource]:
        """Where each stored (and each ``extra``, e.g. configured) secret comes from."""
        names = sorted({*self.names(), *(check_name(n) for n in extra)})
        return [SecretSource(name, self.origin(name)) for name in names]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the index's directory while the index is rewritten."""
        import fcntl

        directory = ensure_private_dir(self.index.parent)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _update_index(self, *, add: str | None = None, remove: str | None = None) -> None:
        with self._locked():
            names = set(self.names())
            if add is not None:
                names.add(add)
            if remove is not None:
                names.discard(remove)
            body = json.dumps({"version": 1, "names": sorted(names)}, indent=2) + "\n"
            temporary = self.index.with_name(f".{self.index.name}.{os.getpid()}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(body)
                    handle.flush()
                    os.fsync(handle.fileno())
                temporary.replace(self.index)
            except BaseException:
                with contextlib.suppress(OSError):
                    temporary.unlink()
                raise
