"""jhansi.deps.warm: a dependency decision, reused when what it depends on is unchanged.

The key holds the requirement set, never the script: new code that needs what earlier
code needed reuses the lock, the verdict and the environment.

The objects stored are built by hand (a real lock, plan and policy verdict need the
package index; the integration tests run those for real); the cache itself is real:
files on disk, read back in a fresh decode.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jhansi.config import IgnoreRule, PolicySettings, load_settings
from jhansi.deps import warm
from jhansi.deps.install import MARKER, Environment
from jhansi.deps.plan import DependencyPlan, ImportDecision, Requirement
from jhansi.deps.pylock import LockedPackage, LockedWheel, LockResult
from jhansi.deps.result import Dependencies
from jhansi.deps.target import Target
from jhansi.supply.metadata import PackageMetadata
from jhansi.supply.policy import Finding, PolicyReport, SupplyCheck
from jhansi.supply.vulns.interface import AuditResult

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LOCK = b'lock-version = "1.0"\n[[packages]]\nname = "pyyaml"\nversion = "6.0.2"\n'


@pytest.fixture
def target() -> Target:
    return Target("3.11.7", "cpython", "x86_64", "glibc", "2.36", frozenset({"os", "sys"}))


@pytest.fixture
def policy() -> PolicySettings:
    return load_settings().policy


def _deps(tmp_path: Path, target: Target, *, until: float | None = None) -> Dependencies:
    env_dir = tmp_path / "envs" / "k"
    env_dir.mkdir(parents=True, exist_ok=True)
    (env_dir / MARKER).write_text("{}")
    wheel = LockedWheel("PyYAML-6.0.2-cp311.whl", "https://files.example/x.whl", ("sha256:ab",))
    return Dependencies(
        plan=DependencyPlan(
            requirements=(Requirement("pyyaml", "pyyaml", "map", "wheel top-level", ("yaml",)),),
            imports=(
                ImportDecision("yaml", "requirement", (1, 3), "pyyaml", "rank 20", ("x",)),
                ImportDecision("os", "stdlib", (2,)),
            ),
            requires_python=None,
            mode="detected",
        ),
        target=target,
        lock=LockResult(
            path=tmp_path / "pylock.s.toml",
            digest="d" * 64,
            packages=(LockedPackage("pyyaml", "6.0.2", wheels=(wheel,)),),
            reused=False,
            inputs_digest="i" * 64,
            requirements=("pyyaml",),
            content=LOCK,
        ),
        environment=Environment(key="k", path=env_dir, reused=False),
        supply=SupplyCheck(
            report=PolicyReport(
                findings=(
                    Finding("audit-unavailable", "warn", None, None, "audit-unavailable", "m", "e"),
                ),
                audit={"status": "ok", "source": "pypi"},
                packages=1,
            ),
            metadata={"pyyaml": PackageMetadata("pyyaml", "6.0.2", license="MIT", source="cache")},
            audit=AuditResult(source="pypi", available=True, location="https://x"),
            reuse_until=until,
        ),
    )


def _key(tmp_path: Path, base_target: Target, base_policy: PolicySettings, /, **change: Any) -> str:
    inputs: dict[str, Any] = {
        "requirements": ("pyyaml",),
        "target": base_target,
        "lock_bytes": LOCK,
        "frozen": False,
        "exclude_newer": None,
        "resolver": "[]",
        "policy": base_policy,
        "today": "2026-11-26",
    }
    inputs.update(change)
    return warm.decision_key(**inputs)


def _load(
    tmp_path: Path,
    key: str,
    deps: Dependencies,
    *,
    lock_bytes: bytes | None = LOCK,
    lock_path: Path | None = None,
    now: datetime = NOW,
) -> Dependencies | None:
    return warm.load(
        tmp_path / "cache",
        key,
        plan=deps.plan,
        target=deps.target,
        lock_path=lock_path or tmp_path / "pylock.s.toml",
        lock_bytes=lock_bytes,
        now=now,
    )


def test_a_stored_decision_reads_back_whole(
    tmp_path: Path, target: Target, policy: PolicySettings
) -> None:
    deps = _deps(tmp_path, target, until=NOW.timestamp() + 600)
    key = _key(tmp_path, target, policy)
    assert warm.store(tmp_path / "cache", key, deps, now=NOW)
    again = _load(tmp_path, key, deps)
    assert again is not None
    assert again.plan is deps.plan  # the run's own plan, never a stored one
    assert again.supply == deps.supply
    assert again.target is target
    assert again.lock is not None
    assert deps.lock is not None
    assert again.lock.content == LOCK
    assert again.lock.reused
    assert not deps.lock.reused
    assert replace(again.lock, reused=False) == deps.lock
    assert again.environment == replace(deps.environment, reused=True)  # type: ignore[type-var]


def test_another_script_with_the_same_needs_gets_the_decision_at_its_own_lock_path(
    tmp_path: Path, target: Target, policy: PolicySettings
) -> None:
    """What a new script needs was decided for another: its plan (other imports, other
    lines) is its own, the lock is the same one, at the new script's path."""
    deps = _deps(tmp_path, target)
    key = _key(tmp_path, target, policy)
    assert warm.store(tmp_path / "cache", key, deps, now=NOW)
    other_plan = replace(
        deps.plan, imports=(ImportDecision("yaml", "requirement", (7,), "pyyaml", "rank 20"),)
    )
    other = replace(deps, plan=other_plan)
    again = _load(tmp_path, key, other, lock_path=tmp_path / "pylock.other.toml")
    assert again is not None
    assert again.plan is other_plan
    assert again.lock is not None
    assert again.lock.path == tmp_path / "pylock.other.toml"


def test_a_decision_made_without_a_lock_file_carries_the_lock(
    tmp_path: Path, target: Target, policy: PolicySettings
) -> None:
    """Keyed where no lock file existed, the entry holds the lock's bytes (a new script's
    lock file is written from them); without them, or with other bytes, it is not used."""
    import blake3

    deps = _deps(tmp_path, target)
    assert deps.lock is not None
    deps = replace(deps, lock=replace(deps.lock, digest=blake3.blake3(LOCK).hexdigest()))
    key = _key(tmp_path, target, policy, lock_bytes=None)
    assert warm.store(tmp_path / "cache", key, deps, with_lock=True, now=NOW)
    again = _load(tmp_path, key, deps, lock_bytes=None)
    assert again is not None
    assert again.lock is not None
    assert again.lock.content == LOCK
    # Stored without its bytes: nothing to write, so not reused.
    assert warm.store(tmp_path / "cache", key, deps, with_lock=False, now=NOW)
    assert _load(tmp_path, key, deps, lock_bytes=None) is None
    # Bytes that are not the lock it recorded: not reused.
    forged = replace(deps, lock=replace(deps.lock, content=LOCK + b"# other\n"))
    assert warm.store(tmp_path / "cache", key, forged, with_lock=True, now=NOW)
    assert _load(tmp_path, key, deps, lock_bytes=None) is None


def test_a_decision_without_requirements_reads_back(
    tmp_path: Path, target: Target, policy: PolicySettings
) -> None:
    deps = replace(_deps(tmp_path, target), lock=None, environment=None)
    key = _key(tmp_path, target, policy, requirements=(), lock_bytes=None)
    assert warm.store(tmp_path / "cache", key, deps, now=NOW)
    again = _load(tmp_path, key, deps, lock_bytes=None)
    assert again == deps


def test_every_input_changes_the_key(
    tmp_path: Path, target: Target, policy: PolicySettings
) -> None:
    base = _key(tmp_path, target, policy)
    changes: dict[str, Any] = {
        "requirements": {"requirements": ("pyyaml", "rich")},
        "a pin": {"requirements": ("pyyaml==6.0.2",)},
        "target": {"target": replace(target, python_version="3.12.1")},
        "stdlib": {"target": replace(target, stdlib=frozenset({"os"}))},
        "lock bytes": {"lock_bytes": LOCK + b"\n"},
        "no lock": {"lock_bytes": None},
        "--frozen": {"frozen": True},
        "--exclude-newer": {"exclude_newer": "2026-01-01"},
        "resolver": {"resolver": '[["UV_INDEX_URL", "https://index.invalid/simple"]]'},
        "policy": {"policy": replace(policy, vulnerabilities="warn")},
        "policy allow": {"policy": replace(policy, allow=("pyyaml",))},
        "policy ignore": {
            "policy": replace(policy, ignore=(IgnoreRule("CVE-1", "ok", date(2026, 12, 1)),))
        },
        "today": {"today": "2026-11-27"},
    }
    keys = {name: _key(tmp_path, target, policy, **change) for name, change in changes.items()}
    assert base not in keys.values()
    assert len(set(keys.values())) == len(keys)
    # An ignore entry's expiry date counts.
    later = replace(policy, ignore=(IgnoreRule("CVE-1", "ok", date(2026, 12, 2)),))
    assert _key(tmp_path, target, policy, policy=later) != keys["policy ignore"]


def test_the_key_is_the_requirement_set_not_its_order(
    tmp_path: Path, target: Target, policy: PolicySettings
) -> None:
    one = _key(tmp_path, target, policy, requirements=("numpy", "pyyaml"))
    assert _key(tmp_path, target, policy, requirements=("pyyaml", "numpy")) == one


def test_the_resolver_settings_are_the_users_indexes_and_uv_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jhansi.deps.uv import resolver_settings

    config = tmp_path / "uv.toml"
    config.write_text("[pip]\nprerelease = 'allow'\n")
    base = {"UV_CONFIG_FILE": str(config), "HOME": str(tmp_path)}
    first = resolver_settings(base)
    assert resolver_settings({**base, "PATH": "/elsewhere"}) == first  # not every variable
    assert resolver_settings({**base, "PIP_INDEX_URL": "https://index.invalid/simple"}) != first
    assert resolver_settings({**base, "UV_INDEX_STRATEGY": "unsafe-best-match"}) != first
    # What jhansi sets for uv itself is not the user's to change: not in the key.
    assert resolver_settings({**base, "UV_RESOLUTION": "lowest"}) == first
    config.write_text("[pip]\nprerelease = 'disallow'\n")
    assert resolver_settings(base) != first


def test_the_online_audit_and_osv_data_change_the_key(
    tmp_path: Path, target: Target, policy: PolicySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _key(tmp_path, target, policy)
    monkeypatch.setenv("PIP_AUDIT_OSV_URL", "https://osv.invalid/v1")
    assert _key(tmp_path, target, policy) != base
    monkeypatch.delenv("PIP_AUDIT_OSV_URL")
    db = tmp_path / "advisories"
    (db / "PYSEC").mkdir(parents=True)
    (db / "PYSEC" / "PYSEC-1.yaml").write_text("id: PYSEC-1\n")
    offline = replace(policy, advisory_db=str(db))
    first = _key(tmp_path, target, offline)
    (db / "PYSEC" / "PYSEC-2.yaml").write_text("id: PYSEC-2\n")
    assert _key(tmp_path, target, offline) != first


def test_expired_evidence_is_not_reused(
    tmp_path: Path, target: Target, policy: PolicySettings
) -> None:
    deps = _deps(tmp_path, target, until=NOW.timestamp() + 600)
    key = _key(tmp_path, target, policy)
    assert warm.store(tmp_path / "cache", key, deps, now=NOW)
    later = NOW + timedelta(seconds=601)
    assert _load(tmp_path, key, deps, now=later) is None


def test_a_removed_environment_is_not_reused(
    tmp_path: Path, target: Target, policy: PolicySettings
) -> None:
    deps = _deps(tmp_path, target)
    key = _key(tmp_path, target, policy)
    assert warm.store(tmp_path / "cache", key, deps, now=NOW)
    assert deps.environment is not None
    (deps.environment.path / MARKER).unlink()
    assert _load(tmp_path, key, deps) is None


@pytest.mark.parametrize(
    "what",
    ["denied", "unresolved", "volatile", "no verdict"],
)
def test_refusals_and_volatile_verdicts_are_not_stored(
    tmp_path: Path, target: Target, policy: PolicySettings, what: str
) -> None:
    deps = _deps(tmp_path, target)
    assert deps.supply is not None
    if what == "denied":
        denial = Finding("vulnerability", "deny", "pyyaml", "6.0.2", "PYSEC-1", "bad", "osv")
        report = replace(deps.supply.report, findings=(denial,))
        deps = replace(deps, supply=replace(deps.supply, report=report))
    elif what == "unresolved":
        lost = ImportDecision("nosuchthing", "unresolved", (1,))
        deps = replace(deps, plan=replace(deps.plan, imports=(lost,)))
    elif what == "volatile":
        deps = replace(deps, supply=replace(deps.supply, reuse_until=NOW.timestamp()))
    else:
        deps = replace(deps, supply=None)
    key = _key(tmp_path, target, policy)
    assert not warm.store(tmp_path / "cache", key, deps, now=NOW)
    assert not (tmp_path / "cache" / warm.DIRECTORY).exists()


def _stored(tmp_path: Path, target: Target, policy: PolicySettings) -> tuple[str, Path]:
    key = _key(tmp_path, target, policy)
    assert warm.store(tmp_path / "cache", key, _deps(tmp_path, target), now=NOW)
    (path,) = (tmp_path / "cache" / warm.DIRECTORY).iterdir()
    return key, path


@pytest.mark.parametrize(
    "damage",
    ["truncated", "not json", "unknown class", "other key", "wrong type", "empty"],
)
def test_a_corrupt_entry_is_ignored(
    tmp_path: Path, target: Target, policy: PolicySettings, damage: str
) -> None:
    key, path = _stored(tmp_path, target, policy)
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "not json":
        path.write_bytes(b"\x00\xff garbage")
    elif damage == "empty":
        path.write_text("")
    else:
        entry = json.loads(text)
        if damage == "unknown class":
            entry["supply"]["$"] = "os:system"
        elif damage == "other key":
            entry["key"] = "0" * 64
        else:
            entry["supply"] = entry["environment"]
        path.write_text(json.dumps(entry))
    assert _load(tmp_path, key, _deps(tmp_path, target)) is None


def test_entries_are_private(tmp_path: Path, target: Target, policy: PolicySettings) -> None:
    _, path = _stored(tmp_path, target, policy)
    assert path.parent.stat().st_mode & 0o077 == 0


def test_changed_bundled_data_changes_the_key(
    tmp_path: Path, target: Target, policy: PolicySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import map or the popular-projects list edited in place (a development
    checkout) is not covered by the version: its files' state is in the key."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "top-packages.txt").write_text("numpy\n")
    monkeypatch.setattr(warm, "_DATA_DIRS", (data,))
    before = _key(tmp_path, target, policy)
    (data / "top-packages.txt").write_text("numpy\nrequests\n")
    assert _key(tmp_path, target, policy) != before


def test_the_real_bundled_data_is_in_the_key() -> None:
    names = {Path(entry[0]).name for entry in warm._data_state()}
    assert {"import_map.json", "import_overrides.toml", "top-packages.txt"} <= names
