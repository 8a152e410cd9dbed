"""Offline OSV data: ``--advisory-db PATH`` with no network at all.

``PATH`` is either a directory tree of OSV records in JSON or YAML (for example a
checkout of pypa/advisory-database; the layout does not matter, hidden
directories are skipped) or an OSV ecosystem export ``all.zip`` (JSON records).
Only ``affected[]`` entries whose ecosystem is ``PyPI`` count; withdrawn records
are ignored.

Parsing thousands of YAML files takes seconds, so the data is indexed once into
``cache_dir/osv/<key>/``: a ``meta.json`` and one small JSON file per normalised
package name holding that package's compact records. ``<key>`` is the BLAKE3 of
the data's path plus a fingerprint of its file names, sizes and modification
times (only ``stat``, no content hashing), so a warm audit costs one directory
walk and one small file per package asked about, and any change to the data
builds a new index. The index is built in a temporary directory and renamed
into place, so a concurrent reader never sees half of one.

Range semantics follow the OSV schema's evaluation: the ``ECOSYSTEM`` events of
each range are sorted by version (``introduced: "0"`` first) and walked;
``introduced`` opens, ``fixed`` closes at that version, ``last_affected`` closes
after it, and ``limit`` events bound the whole range. A version is affected if
any range or the explicit ``versions`` list says so. Versions are PEP 440
(``packaging``). Where a bound cannot be parsed the choice is never silently
clean: an unparsable ``introduced`` opens from the start, an unparsable
``fixed``/``last_affected``/``limit`` is dropped (the range stays open), and is
still shown as a fix version.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jhansi.errors import ConfigError
from jhansi.supply.vulns.interface import (
    AuditResult,
    Package,
    Vulnerability,
    VulnerabilitySource,
    merge_aliases,
    one_line,
)

if TYPE_CHECKING:
    from datetime import datetime

    from packaging.version import Version

SOURCE_NAME = "offline-osv"
INDEX_FORMAT = 1
"""Bumped whenever the index layout or its semantics change (old indexes are then ignored)."""
RECORD_SUFFIXES = (".json", ".yaml", ".yml")
ACCEPTED_FORMS = "a directory of OSV records (JSON or YAML) or an OSV all.zip"

_INTRODUCED, _FIXED, _LAST_AFFECTED, _LIMIT = "i", "f", "l", "m"
_EVENT_KINDS = {
    "introduced": _INTRODUCED,
    "fixed": _FIXED,
    "last_affected": _LAST_AFFECTED,
    "limit": _LIMIT,
}
# At one version: open before closing, so that ``introduced: X, fixed: X`` is empty.
_KIND_ORDER = {_INTRODUCED: 0, _LAST_AFFECTED: 1, _FIXED: 2, _LIMIT: 3}
_SAFE_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,120}")


def normalize_name(name: str) -> str:
    """The PEP 503 normalised form of a project name."""
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def _parse_version(text: str) -> Version | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def _normalize_version(text: str) -> str:
    """A form under which PEP 440-equal versions are equal strings (``5.03.0`` -> ``5.3``).

    Unparsable versions stay as they are (and then only match themselves).
    """
    from packaging.utils import canonicalize_version

    return canonicalize_version(text, strip_trailing_zero=True)


@dataclass(frozen=True, slots=True)
class Record:
    """One advisory as it concerns one package: the compact form kept in the index.

    ``ranges`` holds each ECOSYSTEM range's events as ``(kind, version)`` pairs,
    already cleaned and sorted (kinds: ``i`` introduced, ``f`` fixed, ``l``
    last_affected, ``m`` limit; ``("i", "0")`` is "from the start").
    ``versions`` are the explicit affected versions, normalised. ``fixed`` are
    every ``fixed`` event's version as published, oldest first.
    """

    id: str
    aliases: tuple[str, ...]
    summary: str
    modified: str
    published: str
    ranges: tuple[tuple[tuple[str, str], ...], ...]
    versions: tuple[str, ...]
    fixed: tuple[str, ...]

    def affects(self, version: str) -> bool:
        """Whether ``version`` (as installed) is affected."""
        if _normalize_version(version) in self.versions:
            return True
        parsed = _parse_version(version)
        if parsed is None:
            return False
        return any(_in_range(parsed, events) for events in self.ranges)

    def fixes_for(self, version: str) -> tuple[str, ...]:
        """The fix versions worth upgrading to from ``version``: those above it."""
        parsed = _parse_version(version)
        out: list[str] = []
        for fix in self.fixed:
            fix_version = _parse_version(fix)
            if parsed is None or fix_version is None or fix_version > parsed:
                out.append(fix)
        return tuple(out)

    def to_json(self) -> list[Any]:
        """The compact list stored in the index."""
        return [
            self.id,
            list(self.aliases),
            self.summary,
            self.modified,
            self.published,
            [[list(event) for event in events] for events in self.ranges],
            list(self.versions),
            list(self.fixed),
        ]

    @classmethod
    def from_json(cls, data: list[Any]) -> Record:
        """The inverse of :meth:`to_json`."""
        ident, aliases, summary, modified, published, ranges, versions, fixed = data
        return cls(
            id=ident,
            aliases=tuple(aliases),
            summary=summary,
            modified=modified,
            published=published,
            ranges=tuple(tuple((kind, ver) for kind, ver in events) for events in ranges),
            versions=tuple(versions),
            fixed=tuple(fixed),
        )

    def as_osv(self, package: str) -> dict[str, Any]:
        """This record in OSV schema form (what an OSV API answers), for ``package``."""
        names = {v: k for k, v in _EVENT_KINDS.items()}
        affected: dict[str, Any] = {
            "package": {"name": package, "ecosystem": "PyPI", "purl": f"pkg:pypi/{package}"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{names[kind]: ver} for kind, ver in events]}
                for events in self.ranges
            ],
            "versions": list(self.versions),
        }
        record: dict[str, Any] = {
            "schema_version": "1.6.0",
            "id": self.id,
            "modified": self.modified,
            "aliases": list(self.aliases),
            "summary": self.summary,
            "affected": [affected],
        }
        if self.published:
            record["published"] = self.published
        return record


def _in_range(version: Version, events: tuple[tuple[str, str], ...]) -> bool:
    """OSV's evaluation of one sorted ECOSYSTEM range for ``version``."""
    limits = [_parse_version(ver) for kind, ver in events if kind == _LIMIT]
    if limits and not any(limit is not None and version < limit for limit in limits):
        return False
    affected = False
    for kind, ver in events:
        if kind == _INTRODUCED:
            bound = None if ver == "0" else _parse_version(ver)
            if bound is None or version >= bound:
                affected = True
            else:
                # Sorted: no later event can be at or below ``version``.
                break
        elif kind == _FIXED:
            bound = _parse_version(ver)
            if bound is not None and version >= bound:
                affected = False
        elif kind == _LAST_AFFECTED:
            bound = _parse_version(ver)
            if bound is not None and version > bound:
                affected = False
    return affected


def _clean_events(raw_events: object) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """Sorted, parseable ``(kind, version)`` events of one range, and its raw fixed versions."""
    from packaging.version import Version

    events: list[tuple[tuple[int, Version, int], tuple[str, str]]] = []
    fixed: list[str] = []
    zero = Version("0")
    has_introduced = False
    for event in raw_events if isinstance(raw_events, list) else ():
        if not isinstance(event, dict):
            continue
        for key, value in event.items():
            kind = _EVENT_KINDS.get(key)
            if kind is None or not isinstance(value, str | int | float):
                continue
            text = str(value)
            if kind == _FIXED:
                fixed.append(text)
            if kind == _INTRODUCED:
                has_introduced = True
                if text == "0" or _parse_version(text) is None:
                    # Unparsable start: affected from the start, never silently clean.
                    events.append(((0, zero, 0), (_INTRODUCED, "0")))
                    continue
            if kind == _LIMIT and text == "*":
                continue
            parsed = _parse_version(text)
            if parsed is None:
                continue  # an unparsable end leaves the range open
            events.append(((1, parsed, _KIND_ORDER[kind]), (kind, text)))
    if not has_introduced and events:
        events.append(((0, zero, 0), (_INTRODUCED, "0")))
    events.sort(key=lambda item: item[0])
    return tuple(pair for _, pair in events), fixed


def _sort_versions(versions: list[str]) -> list[str]:
    """Versions oldest first, unparsable ones last in their given order (no duplicates)."""
    parsed = [(v, _parse_version(v)) for v in dict.fromkeys(versions)]
    good = sorted((p, v) for v, p in parsed if p is not None)
    return [v for _, v in good] + [v for v, p in parsed if p is None]


def compact_records(osv: object) -> dict[str, Record]:
    """The :class:`Record` per normalised package name of one parsed OSV record.

    Empty for anything that is not a live OSV record with PyPI entries (other
    ecosystems, withdrawn records, unrelated JSON/YAML files).
    """
    if not isinstance(osv, dict) or not isinstance(osv.get("id"), str) or osv.get("withdrawn"):
        return {}
    affected = osv.get("affected")
    if not isinstance(affected, list):
        return {}
    per_package: dict[str, tuple[list[tuple[tuple[str, str], ...]], list[str], list[str]]] = {}
    for entry in affected:
        if not isinstance(entry, dict):
            continue
        package = entry.get("package")
        if not isinstance(package, dict) or package.get("ecosystem") != "PyPI":
            continue
        name = package.get("name")
        if not isinstance(name, str) or not name:
            continue
        ranges, versions, fixed = per_package.setdefault(normalize_name(name), ([], [], []))
        raw_ranges = entry.get("ranges")
        for raw_range in raw_ranges if isinstance(raw_ranges, list) else ():
            if not isinstance(raw_range, dict) or raw_range.get("type") != "ECOSYSTEM":
                continue  # GIT and SEMVER ranges say nothing about PyPI versions
            events, range_fixed = _clean_events(raw_range.get("events"))
            if events:
                ranges.append(events)
            fixed.extend(range_fixed)
        raw_versions = entry.get("versions")
        for version in raw_versions if isinstance(raw_versions, list) else ():
            if isinstance(version, str | int | float):
                versions.append(_normalize_version(str(version)))
    if not per_package:
        return {}
    summary = osv.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        details = osv.get("details")
        summary = details if isinstance(details, str) else ""
    raw_aliases = osv.get("aliases")
    aliases = (
        tuple(a for a in raw_aliases if isinstance(a, str)) if isinstance(raw_aliases, list) else ()
    )
    ident, summary = osv["id"], one_line(summary)
    modified, published = _date_text(osv.get("modified")), _date_text(osv.get("published"))
    return {
        name: Record(
            id=ident,
            aliases=aliases,
            summary=summary,
            modified=modified,
            published=published,
            ranges=tuple(ranges),
            versions=tuple(sorted(set(versions))),
            fixed=tuple(_sort_versions(fixed)),
        )
        for name, (ranges, versions, fixed) in per_package.items()
    }


def _date_text(value: object) -> str:
    from datetime import datetime

    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, str) else ""


def _date_key(text: str) -> datetime | None:
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_advisory_db(path: Path) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a readable directory or zip file."""
    hint = f"--advisory-db takes {ACCEPTED_FORMS}"
    try:
        if path.is_dir():
            with os.scandir(path):
                return
        if path.is_file():
            import zipfile

            if zipfile.is_zipfile(path):
                return
            raise ConfigError(
                f"advisory database {path} is a file but not a zip archive", hint=hint
            )
    except OSError as exc:
        raise ConfigError(
            f"advisory database {path} cannot be read: {exc.strerror or exc}", hint=hint
        ) from exc
    raise ConfigError(f"advisory database {path} does not exist", hint=hint)


def _record_files(root: Path) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of every record file under ``root``, sorted."""
    found: list[tuple[str, int, int]] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(root / relative if relative else root) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir():
                    pending.append(rel)
                elif entry.name.endswith(RECORD_SUFFIXES) and entry.is_file():
                    stat = entry.stat()
                    found.append((rel, stat.st_size, stat.st_mtime_ns))
    found.sort()
    return found


def _fingerprint(db: Path) -> tuple[str, list[tuple[str, int, int]] | None]:
    """A cheap fingerprint of the data (stat only), and the record files of a directory."""
    import blake3

    hasher = blake3.blake3(f"jhansi osv index v{INDEX_FORMAT}\0".encode())
    try:
        if db.is_dir():
            files = _record_files(db)
            for rel, size, mtime in files:
                hasher.update(f"{rel}\0{size}\0{mtime}\n".encode())
            return hasher.hexdigest()[:32], files
        stat = db.stat()
    except OSError as exc:
        raise ConfigError(
            f"advisory database {db} cannot be read: {exc.strerror or exc}",
            hint=f"--advisory-db takes {ACCEPTED_FORMS}",
        ) from exc
    hasher.update(f"zip\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}".encode())
    return hasher.hexdigest()[:32], None


def _load_yaml(data: bytes) -> object:
    import yaml

    # BaseLoader keeps every scalar a string: ``fixed: 5.10`` must not become 5.1.
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    try:
        return yaml.load(data, Loader=loader)  # noqa: S506 - BaseLoader builds no objects
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {one_line(str(exc))}") from exc


def _parse_file(name: str, data: bytes) -> object:
    """One record file's content, parsed as JSON or YAML by its name."""
    if name.endswith(".json"):
        return json.loads(data)
    return _load_yaml(data)


def _iter_parsed(
    db: Path, files: list[tuple[str, int, int]] | None
) -> Iterator[tuple[str, object]]:
    """``(where, parsed record)`` for every record file of the data."""
    import zipfile

    hint = "fix or remove that file, or point --advisory-db at valid OSV data"
    where = str(db)
    try:
        if files is not None:
            for rel, _size, _mtime in files:
                where = str(db / rel)
                yield where, _parse_file(rel, (db / rel).read_bytes())
            return
        with zipfile.ZipFile(db) as archive:
            for info in archive.infolist():
                if info.is_dir() or not info.filename.endswith(".json"):
                    continue
                where = f"{db}:{info.filename}"
                yield where, json.loads(archive.read(info))
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}", hint=hint) from exc
    except (ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"{where} is not valid OSV data: {one_line(str(exc))}", hint=hint
        ) from exc


@dataclass(frozen=True, slots=True)
class BuiltIndex:
    """The whole index in memory, as built from the data."""

    records: dict[str, dict[str, Record]]
    data_date: str | None
    record_count: int


def build_index(db: Path, files: list[tuple[str, int, int]] | None = None) -> BuiltIndex:
    """Read every record of ``db`` (slow: seconds for thousands of YAML files)."""
    if files is None and db.is_dir():
        files = _record_files(db)
    by_name: dict[str, dict[str, Record]] = {}
    newest: tuple[datetime, str] | None = None
    count = 0
    for _where, parsed in _iter_parsed(db, files):
        if not isinstance(parsed, dict) or not isinstance(parsed.get("id"), str):
            continue
        count += 1
        modified = _date_text(parsed.get("modified"))
        moment = _date_key(modified)
        if moment is not None and (newest is None or moment > newest[0]):
            newest = (moment, modified)
        for name, record in compact_records(parsed).items():
            known = by_name.setdefault(name, {})
            previous = known.get(record.id)
            # The same advisory in two files (JSON and YAML): the newer one wins.
            if previous is None or (previous.modified, previous.summary) < (
                record.modified,
                record.summary,
            ):
                known[record.id] = record
    return BuiltIndex(
        records=by_name, data_date=None if newest is None else newest[1], record_count=count
    )


def _package_file_name(name: str) -> str:
    if _SAFE_FILE_NAME.fullmatch(name):
        return f"{name}.json"
    import blake3

    return f"_{blake3.blake3(name.encode()).hexdigest()[:32]}.json"


class OsvIndex:
    """A loaded index: its metadata, and each package's records read on demand."""

    def __init__(
        self,
        *,
        location: str,
        data_date: str | None,
        directory: Path | None = None,
        built: BuiltIndex | None = None,
    ) -> None:
        self.location = location
        self.data_date = data_date
        self.directory = directory
        """Where the index is cached (``None`` when it could not be written)."""
        self._built = built
        self._cache: dict[str, tuple[Record, ...]] = {}

    def records(self, name: str) -> tuple[Record, ...]:
        """Every live advisory naming the package ``name`` (normalised here)."""
        name = normalize_name(name)
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        if self._built is not None:
            found = tuple(self._built.records.get(name, {}).values())
        elif self.directory is None:
            found = ()
        else:
            try:
                raw = (self.directory / "p" / _package_file_name(name)).read_bytes()
            except FileNotFoundError:
                raw = b"[]"
            try:
                found = tuple(Record.from_json(item) for item in json.loads(raw))
            except ValueError as exc:
                raise ConfigError(
                    f"the cached OSV index {self.directory} is damaged ({name})",
                    hint=f"delete {self.directory} (it is only a cache) and run again",
                ) from exc
        self._cache[name] = found
        return found

    def matching(self, name: str, version: str) -> list[Record]:
        """The advisories that affect ``name`` at ``version``, sorted by id."""
        return sorted((r for r in self.records(name) if r.affects(version)), key=lambda r: r.id)


def _write_index(built: BuiltIndex, final: Path, location: str) -> None:
    """Write ``built`` to a temporary directory beside ``final``, then rename it into place."""
    import shutil

    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".tmp-{final.name}-{os.urandom(6).hex()}"
    try:
        (staging / "p").mkdir(parents=True)
        for name, records in built.records.items():
            payload = [r.to_json() for r in sorted(records.values(), key=lambda r: r.id)]
            (staging / "p" / _package_file_name(name)).write_text(
                json.dumps(payload, separators=(",", ":")), encoding="utf-8"
            )
        meta = {
            "format": INDEX_FORMAT,
            "location": location,
            "data_date": built.data_date,
            "records": built.record_count,
            "packages": len(built.records),
        }
        (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            staging.rename(final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
            # Another process built the same index first: theirs is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale(parent: Path, prefix: str, keep: str) -> None:
    import shutil

    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name != keep and entry.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)


def load_index(db: Path, cache_dir: Path) -> OsvIndex:
    """The index of ``db``: cached under ``cache_dir/osv`` if current, else built now.

    Raises :class:`ConfigError` when ``db`` or one of its records cannot be read.
    An unwritable cache is not an error: the index is then kept in memory only.
    """
    check_advisory_db(db)
    import blake3

    location = str(db.absolute())
    fingerprint, files = _fingerprint(db)
    path_key = blake3.blake3(location.encode()).hexdigest()[:16]
    final = cache_dir / "osv" / f"{path_key}-{fingerprint}"
    try:
        meta = json.loads((final / "meta.json").read_bytes())
        if meta.get("format") == INDEX_FORMAT:
            return OsvIndex(location=location, data_date=meta.get("data_date"), directory=final)
    except (OSError, ValueError):
        pass
    built = build_index(db, files)
    try:
        _write_index(built, final, location)
    except OSError:
        return OsvIndex(location=location, data_date=built.data_date, built=built)
    _remove_stale(final.parent, f"{path_key}-", final.name)
    return OsvIndex(location=location, data_date=built.data_date, directory=final, built=built)


class OfflineOsvSource(VulnerabilitySource):
    """Vulnerabilities from OSV data on disk (``--advisory-db``): no network."""

    name = SOURCE_NAME

    def __init__(self, *, advisory_db: Path, cache_dir: Path) -> None:
        self.advisory_db = advisory_db
        self.cache_dir = cache_dir

    def index(self) -> OsvIndex:
        """The (cached) index of the data; see :func:`load_index`."""
        return load_index(self.advisory_db, self.cache_dir)

    def audit(self, packages: Sequence[Package]) -> AuditResult:
        """Every advisory in the data that affects one of ``packages``.

        Raises :class:`ConfigError` if the data cannot be read (a configuration
        problem, unlike an unreachable online service).
        """
        index = self.index()
        found: list[Vulnerability] = []
        for package in packages:
            name = normalize_name(package.name)
            for record in index.matching(name, package.version):
                found.append(
                    Vulnerability(
                        id=record.id,
                        aliases=record.aliases,
                        summary=record.summary,
                        package=name,
                        version=package.version,
                        fix_versions=record.fixes_for(package.version),
                    )
                )
        return AuditResult(
            source=self.name,
            available=True,
            vulnerabilities=merge_aliases(found),
            location=index.location,
            data_date=index.data_date,
        )
