"""The secret store, with a keyring and with the real "no keyring backend" state of this machine.

The keyring is :class:`StandInKeyring` (see its module: this headless machine has
no OS keyring); the environment fallback runs on keyring's own ``fail`` backend,
which is exactly what ``keyring`` detects here.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.core
import pytest
from keyring.backends import chainer, fail, null
from keyring.errors import KeyringLocked

from jhansi.egress.secrets import INDEX_NAME, SERVICE, SecretSource, SecretStore
from jhansi.errors import ConfigError, ExitCode, UsageError
from jhansi.paths import Paths
from tests.unit.egress.keyring_stand_in import StandInKeyring

VALUE = "sk_live_0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _restore_keyring() -> Iterator[None]:
    """Leave keyring's process-wide backend as the test found it."""
    saved = keyring.core._keyring_backend
    yield
    keyring.core._keyring_backend = saved


@pytest.fixture
def paths() -> Paths:
    return Paths.from_environment()


@pytest.fixture
def ring() -> StandInKeyring:
    return StandInKeyring()


def store(paths: Paths, backend: object = None, **environ: str) -> SecretStore:
    return SecretStore(
        index=paths.config / INDEX_NAME,
        backend=backend,  # type: ignore[arg-type]
        environ=environ,
    )


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


# -- with a keyring ----------------------------------------------------------------------------


def test_set_get_delete_through_the_keyring(
    paths: Paths, ring: StandInKeyring, jhansi_home: Path
) -> None:
    secrets = store(paths, ring)
    assert not secrets.fallback
    assert secrets.backend_description() == "keyring: keyring stand in StandInKeyring"
    secrets.set("STRIPE_KEY", VALUE)
    assert ring.entries == {f"{SERVICE}\0STRIPE_KEY": VALUE}
    assert secrets.get("STRIPE_KEY") == VALUE
    assert secrets.names() == ["STRIPE_KEY"]
    assert secrets.origin("STRIPE_KEY") == "keyring"
    # The index names the secret and holds no value; nothing jhansi wrote does.
    index = paths.config / INDEX_NAME
    assert "STRIPE_KEY" in index.read_text()
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    assert files_containing(jhansi_home, VALUE) == []
    secrets.delete("STRIPE_KEY")
    assert ring.entries == {}
    assert secrets.names() == []
    with pytest.raises(ConfigError):
        secrets.get("STRIPE_KEY")


def test_names_stay_sorted_and_unique_across_stores(paths: Paths, ring: StandInKeyring) -> None:
    store(paths, ring).set("B_KEY", "b")
    store(paths, ring).set("A_KEY", "a")
    store(paths, ring).set("B_KEY", "b2")
    assert store(paths, ring).names() == ["A_KEY", "B_KEY"]
    assert store(paths, ring).get("B_KEY") == "b2"


def test_the_keyring_comes_before_the_environment(paths: Paths, ring: StandInKeyring) -> None:
    secrets = store(paths, ring, STRIPE_KEY="from-env", OTHER="other-env")
    secrets.set("STRIPE_KEY", VALUE)
    assert secrets.get("STRIPE_KEY") == VALUE
    assert secrets.get("OTHER") == "other-env"
    assert secrets.origin("OTHER") == "environment"
    assert secrets.sources(("OTHER", "NOPE")) == [
        SecretSource("NOPE", "missing"),
        SecretSource("OTHER", "environment"),
        SecretSource("STRIPE_KEY", "keyring"),
    ]


def test_a_missing_secret_says_how_to_provide_it(paths: Paths, ring: StandInKeyring) -> None:
    with pytest.raises(ConfigError) as caught:
        store(paths, ring).get("MISSING_KEY")
    assert caught.value.exit_code == ExitCode.USAGE
    assert caught.value.message == (
        "secret MISSING_KEY is not set: neither the keyring (keyring stand in StandInKeyring) "
        "nor the environment has it"
    )
    assert caught.value.hint == (
        "Store it with `jhansi secret set MISSING_KEY`, or export MISSING_KEY in the "
        "environment jhansi runs in."
    )


@pytest.mark.parametrize("name", ["", "1KEY", "MY-KEY", "A B", "KEY=1", "ÄKEY", "KEY\n"])
def test_invalid_names_are_refused(paths: Paths, ring: StandInKeyring, name: str) -> None:
    secrets = store(paths, ring)
    for call in (secrets.get, secrets.delete, lambda n: secrets.set(n, "v")):
        with pytest.raises(UsageError, match="not a valid secret name"):
            call(name)
    assert ring.calls == []


@pytest.mark.parametrize("value", ["", "line1\nline2", "with\rcr", "nul\0byte"])
def test_values_that_cannot_travel_in_a_header_are_refused(
    paths: Paths, ring: StandInKeyring, value: str
) -> None:
    with pytest.raises(UsageError) as caught:
        store(paths, ring).set("KEY", value)
    assert ring.entries == {}
    if value:
        assert value not in caught.value.message + caught.value.hint
    # The same holds for a value that comes from the environment.
    if value:
        with pytest.raises(UsageError):
            store(paths, ring, KEY=value).get("KEY")


def test_deleting_an_unknown_secret_is_an_error(paths: Paths, ring: StandInKeyring) -> None:
    with pytest.raises(ConfigError, match="no secret NOPE in the keyring"):
        store(paths, ring).delete("NOPE")


def test_a_name_whose_value_vanished_from_the_keyring_can_still_be_removed(
    paths: Paths, ring: StandInKeyring
) -> None:
    secrets = store(paths, ring)
    secrets.set("GONE", "v")
    ring.entries.clear()  # removed with the OS's own keyring tool
    assert secrets.origin("GONE") == "missing"
    secrets.delete("GONE")
    assert secrets.names() == []


class LockedKeyring(StandInKeyring):
    """A keyring that is locked (the user is not logged in to its session)."""

    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringLocked("Failed to unlock the collection!")


def test_a_locked_keyring_is_a_clear_error(paths: Paths) -> None:
    with pytest.raises(ConfigError) as caught:
        store(paths, LockedKeyring(), KEY="env").get("KEY")
    assert "failed reading KEY: KeyringLocked" in caught.value.message
    assert "Unlock the keyring" in caught.value.hint


def test_a_damaged_index_is_reported(paths: Paths, ring: StandInKeyring) -> None:
    index = paths.config / INDEX_NAME
    index.parent.mkdir(parents=True)
    index.write_text("{not json")
    with pytest.raises(ConfigError, match="is damaged"):
        store(paths, ring).names()


# -- without a keyring -------------------------------------------------------------------------


def test_no_backend_falls_back_to_the_environment(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring.set_keyring(fail.Keyring())  # what keyring detects on this machine
    monkeypatch.setenv("STRIPE_KEY", VALUE)
    secrets = SecretStore.from_paths(paths)
    assert secrets.fallback
    assert secrets.backend_description() == "environment variables (no keyring backend)"
    assert secrets.get("STRIPE_KEY") == VALUE
    assert secrets.origin("STRIPE_KEY") == "environment"
    with pytest.raises(ConfigError) as caught:
        secrets.get("OTHER_KEY")
    assert "no keyring backend" in caught.value.message
    assert "export OTHER_KEY" in caught.value.hint


def test_no_backend_refuses_to_store_or_delete(paths: Paths) -> None:
    keyring.set_keyring(fail.Keyring())
    secrets = SecretStore.from_paths(paths, environ={})
    with pytest.raises(UsageError) as caught:
        secrets.set("STRIPE_KEY", VALUE)
    assert "Export STRIPE_KEY in the environment" in caught.value.hint
    assert VALUE not in caught.value.message + caught.value.hint
    with pytest.raises(UsageError, match="can only come from the environment"):
        secrets.delete("STRIPE_KEY")
    assert not (paths.config / INDEX_NAME).exists()


@pytest.mark.parametrize(
    "backend", [null.Keyring(), chainer.ChainerBackend()], ids=["null", "empty-chainer"]
)
def test_null_and_empty_chainer_backends_mean_no_keyring(paths: Paths, backend: object) -> None:
    # The chainer is empty here for real: this machine has no viable keyring backend.
    keyring.set_keyring(backend)  # type: ignore[arg-type]
    assert SecretStore.from_paths(paths, environ={}).fallback


def test_the_detected_backend_on_this_machine(paths: Paths) -> None:
    keyring.core._keyring_backend = None  # detect afresh, as a new process does
    secrets = SecretStore.from_paths(paths, environ={})
    detected = keyring.get_keyring()
    assert secrets.fallback is isinstance(detected, fail.Keyring | null.Keyring)


def test_a_broken_backend_setting_is_a_config_error(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "no_such_module.Keyring")
    keyring.core._keyring_backend = None
    with pytest.raises(ConfigError, match="keyring backend cannot be loaded"):
        SecretStore.from_paths(paths).get("KEY")


def test_importing_the_store_does_not_import_keyring() -> None:
    code = "import sys, jhansi.egress.secrets; print('keyring' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    ).stdout
    assert out.strip() == "False"
