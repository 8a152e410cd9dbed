"""A run's dependency decision, reused: no locking, policy or install work when nothing changed.

Agents send new code every time, and new code usually needs what earlier code
needed. So the decision is keyed by **what it depends on, never by the script's
bytes** (:func:`decision_key`); the script's own part, the plan (the AST scan,
PEP 723 block, import map), is made fresh for each run, and its requirement set
is what the key holds:

* jhansi's version, and the bundled data's files (size, mtime, inode): the import
  map, its overrides, the popular-projects list, the licence classifiers;
* the requirement set (the plan's PEP 508 strings, sorted: after detection,
  mapping, PEP 723, ``--with`` and ``--requirements``);
* the target (interpreter version, platform, standard-library names);
* the lock file's bytes, or its absence (not its path: a new script has a new
  lock path, and the lock it would get is the one made before for the same set);
* ``--frozen`` and ``--exclude-newer``, and the resolver's settings (the user's
  indexes, uv's and pip's ``UV_*``/``PIP_*`` variables, uv's config file);
* the policy settings (every field, ``ignore`` entries with their dates), the online
  audit's service address, the offline advisory data's fingerprint;
* today's date (UTC): an ``ignore`` entry's expiry, and "days ago" in evidence.

A decision made where no lock file existed carries the lock's bytes, so that a new
script with the same requirements gets the same lock written where it expects it
(:func:`load` returns them; the runner writes them), with no uv call.

An entry also carries the moment its evidence stops being reusable
(:attr:`~jhansi.supply.policy.SupplyCheck.reuse_until`: when the online audit's
answer must be asked again); after it, or when the environment is gone, the decision
is made again from scratch. A refused run (unresolved imports, a policy denial) is
never stored, so a refusal is always decided anew. ``--upgrade`` never uses an entry.

Entries are JSON under ``<cache>/warm/``, written atomically; anything that does not
read back exactly (a torn or edited file, an unknown class, lock bytes that are not
the ones recorded) is ignored and the decision is made the slow way. Only the result
classes listed in :data:`_CLASSES` can be built from an entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jhansi.config import PolicySettings
    from jhansi.deps.plan import DependencyPlan
    from jhansi.deps.result import Dependencies
    from jhansi.deps.target import Target

#: v3: the lock's classes are named by their module, jhansi.deps.pylock (v2 entries named
#: jhansi.deps.lock): an older entry is not looked up, its decision is made again.
FORMAT = "jhansi/warm-deps/v3"
DIRECTORY = "warm"

#: The only classes an entry may name: ``module`` -> class names.
_CLASSES: Mapping[str, frozenset[str]] = {
    "jhansi.deps.pylock": frozenset({"LockResult", "LockedPackage", "LockedWheel"}),
    "jhansi.deps.install": frozenset({"Environment"}),
    "jhansi.supply.policy": frozenset({"SupplyCheck", "PolicyReport", "Finding"}),
    "jhansi.supply.metadata": frozenset({"PackageMetadata"}),
    "jhansi.supply.vulns.interface": frozenset({"AuditResult", "Vulnerability"}),
}


class CorruptEntry(ValueError):
    """An entry that does not decode into what was stored."""


# -- the key --------------------------------------------------------------------------------


#: Data shipped with jhansi that decisions come from: the import map and its overrides,
#: the popular-projects list and licence classifiers. A release changes the version
#: (in the key too); a development checkout changes them in place.
_DATA_DIRS = (
    Path(__file__).parent / "data",
    Path(__file__).parent.parent / "supply" / "data",
)


def _data_state() -> list[Any]:
    state: list[Any] = []
    for directory in _DATA_DIRS:
        try:
            files = sorted(directory.iterdir())
        except OSError:
            state.append([str(directory), None])
            continue
        state.extend(_file_state(path) for path in files)
    return state


def _file_state(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns, st.st_ino]


def _target_fields(target: Target) -> list[Any]:
    return [
        target.python_version,
        target.implementation,
        target.machine,
        target.libc,
        target.libc_version,
        sorted(target.stdlib),
    ]


def _policy_fields(settings: PolicySettings) -> Any:
    from dataclasses import asdict

    return asdict(settings)


def _advisory_fingerprint(settings: PolicySettings) -> str | None:
    if not settings.advisory_db:
        return None
    from jhansi.supply.vulns.osv import _fingerprint

    db = Path(settings.advisory_db).absolute()
    try:
        return f"{db}\0{_fingerprint(db)[0]}"
    except OSError:
        return f"{db}\0unreadable"


def decision_key(
    *,
    requirements: tuple[str, ...],
    target: Target,
    lock_bytes: bytes | None,
    frozen: bool,
    exclude_newer: str | None,
    resolver: str,
    policy: PolicySettings,
    today: str,
) -> str:
    """The key of the decision for these inputs.

    ``requirements`` are the plan's PEP 508 strings; ``lock_bytes`` the lock file's
    content (``None``: no lock file yet); ``resolver`` what
    :func:`jhansi.deps.uv.resolver_settings` gives.
    """
    import blake3

    from jhansi._version import __version__

    document = [
        FORMAT,
        __version__,
        _data_state(),
        sorted(requirements),
        _target_fields(target),
        None if lock_bytes is None else blake3.blake3(lock_bytes).hexdigest(),
        frozen,
        exclude_newer,
        resolver,
        _policy_fields(policy),
        os.environ.get("PIP_AUDIT_OSV_URL"),
        _advisory_fingerprint(policy),
        today,
    ]
    text = json.dumps(document, sort_keys=True, default=str, ensure_ascii=True)
    return blake3.blake3(text.encode()).hexdigest()


# -- encoding -------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if cls.__name__ not in _CLASSES.get(cls.__module__, frozenset()):
            raise TypeError(f"{cls.__module__}.{cls.__name__} is not storable")
        return {
            "$": f"{cls.__module__}:{cls.__name__}",
            "f": {f.name: _encode(getattr(value, f.name)) for f in fields(value)},
        }
    if isinstance(value, tuple):
        return {"$t": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, frozenset):
        return {"$s": sorted(_encode(v) for v in value)}
    if isinstance(value, Path):
        return {"$p": str(value)}
    if isinstance(value, bytes):
        import base64

        return {"$b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return {"$m": [[_encode(k), _encode(v)] for k, v in value.items()]}
    raise TypeError(f"{type(value).__name__} is not storable")


def _decode(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise CorruptEntry("unexpected value")
    if "$t" in value:
        return tuple(_decode(v) for v in value["$t"])
    if "$s" in value:
        return frozenset(_decode(v) for v in value["$s"])
    if "$p" in value:
        return Path(value["$p"])
    if "$b" in value:
        import base64

        return base64.b64decode(value["$b"], validate=True)
    if "$m" in value:
        return {_decode(k): _decode(v) for k, v in value["$m"]}
    module, _, name = str(value.get("$", "")).partition(":")
    if name not in _CLASSES.get(module, frozenset()) or not isinstance(value.get("f"), dict):
        raise CorruptEntry(f"unexpected class {module}:{name}")
    import importlib

    cls = getattr(importlib.import_module(module), name)
    return cls(**{k: _decode(v) for k, v in value["f"].items()})


# -- entries --------------------------------------------------------------------------------


def _path(cache_dir: Path, key: str) -> Path:
    return cache_dir / DIRECTORY / f"{key[:48]}.json"


def store(
    cache_dir: Path,
    key: str,
    deps: Dependencies,
    *,
    with_lock: bool = False,
    now: datetime | None = None,
) -> bool:
    """Keep ``deps`` (an allowed, installed decision) under ``key``; ``False`` if not kept.

    Not kept: a decision with unresolved imports or denied by the policy, one without
    a policy verdict, and one whose evidence may not be reused (a time-bound finding).
    The plan is not kept (each run makes its own). ``with_lock``: keep the lock's bytes
    too, for a key made where no lock file existed (the lock a new script gets).
    """
    now = now or datetime.now(UTC)
    supply = deps.supply
    if deps.plan.unresolved or supply is None or supply.report.denied:
        return False
    if deps.lock is not None and deps.environment is None:
        return False
    until = supply.reuse_until
    if until is not None and until <= now.timestamp():
        return False
    path = _path(cache_dir, key)
    lock = deps.lock
    try:
        entry = {
            "format": FORMAT,
            "key": key,
            "reuse_until": until,
            # Otherwise the lock's bytes are the file's, read again (and keyed) by each run.
            "lock": _encode(replace(lock, content=b"")) if lock is not None else None,
            "lock_content": _encode(lock.content) if lock is not None and with_lock else None,
            "environment": _encode(deps.environment),
            "supply": _encode(supply),
        }
        from jhansi.paths import ensure_private_dir

        ensure_private_dir(path.parent)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(entry, separators=(",", ":")), encoding="utf-8")
        partial.replace(path)
    except (OSError, TypeError):
        return False  # an unwritable cache only costs time
    return True


def load(
    cache_dir: Path,
    key: str,
    *,
    plan: DependencyPlan,
    target: Target,
    lock_path: Path,
    lock_bytes: bytes | None,
    now: datetime | None = None,
) -> Dependencies | None:
    """The decision stored under ``key``, still valid now, for this run's ``plan``, or ``None``.

    Its lock is at ``lock_path`` with ``lock_bytes``; where those are ``None`` (no lock
    file yet) the entry's own bytes are returned in :attr:`LockResult.content` for the
    caller to write there.
    """
    path = _path(cache_dir, key)
    try:
        entry = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        return _rebuild(entry, key, plan, target, lock_path, lock_bytes, now or datetime.now(UTC))
    except (CorruptEntry, TypeError, ValueError, KeyError, AttributeError, ImportError):
        return None


def _rebuild(
    entry: Any,
    key: str,
    plan: DependencyPlan,
    target: Target,
    lock_path: Path,
    lock_bytes: bytes | None,
    now: datetime,
) -> Dependencies | None:
    from jhansi.supply.policy import SupplyCheck

    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        return None
    until = entry["reuse_until"]
    if until is not None and float(until) <= now.timestamp():
        return None
    lock = _decode(entry["lock"]) if entry["lock"] is not None else None
    environment = _decode(entry["environment"])
    supply = _decode(entry["supply"])
    if not isinstance(supply, SupplyCheck):
        raise CorruptEntry("not a decision")
    if lock is not None:  # the lock's and environment's modules are loaded by decoding them
        import blake3

        from jhansi.deps.install import is_complete
        from jhansi.deps.pylock import LockResult

        if not isinstance(lock, LockResult) or environment is None:
            raise CorruptEntry("not a decision")
        content = lock_bytes
        if content is None:
            kept = entry.get("lock_content")
            content = _decode(kept) if kept is not None else None
            if not isinstance(content, bytes) or blake3.blake3(content).hexdigest() != lock.digest:
                raise CorruptEntry("no lock bytes for a new lock file")
        if not is_complete(environment.path):
            return None  # removed (pruned): installed again the slow way
        lock = replace(lock, path=lock_path, content=content, reused=True)
        environment = replace(environment, reused=True)
    from jhansi.deps.result import Dependencies

    return Dependencies(plan=plan, target=target, lock=lock, environment=environment, supply=supply)
