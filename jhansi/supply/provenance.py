"""Package provenance: how long a project has existed, and whether many people use it.

Two signals against typosquatted and freshly registered ("slopsquatted")
packages, both reported as findings for the policy to weigh:

* ``package-age``: the project's first release (the earliest upload time of
  any of its files, PEP 700 ``upload-time`` from the index's simple API, else
  its JSON API) is younger than the policy's minimum age;
* ``not-popular``: the project is not among the most-downloaded PyPI projects
  (a list bundled in ``data/top-packages.txt``, made by
  ``scripts/gen-top-packages.py``).

A project that the index cannot tell about gives a ``provenance-unavailable``
finding: the lead's policy decides how much that weighs. A first release date
never changes, so a found one is cached forever; "not found" is cached for a
day.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jhansi._cache import write_cache_file
from jhansi.deps.pylock import LockedPackage, canonical_name
from jhansi.errors import PolicyError

if TYPE_CHECKING:
    from pypi_simple import ProjectPage

Rule = Literal["package-age", "not-popular", "provenance-unavailable"]

DEFAULT_TIMEOUT = 15.0
WORKERS = 8
NOT_FOUND_TTL = 86400.0
"""Seconds a "no release found" answer is trusted (a project may be published since)."""

_DATA = Path(__file__).parent / "data" / "top-packages.txt"
_SAFE = re.compile(r"[^a-z0-9._-]")
_CACHE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class ProvenanceFinding:
    """One provenance concern about one locked package."""

    package: str
    """The normalized name."""
    version: str
    rule: Rule
    evidence: str
    """For people: ``first released 2026-11-20 (6 days ago; policy minimum 30)`` …"""


class ProvenanceUnavailable(PolicyError):
    """The index could not be asked about a project (network, HTTP error, bad answer)."""


# -- popularity -----------------------------------------------------------------------------


@functools.cache
def popular_projects() -> frozenset[str]:
    """The normalized names of the most-downloaded PyPI projects (bundled list)."""
    text = _DATA.read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


# -- first release --------------------------------------------------------------------------


def _cache_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / "provenance" / f"{_SAFE.sub('_', name)}.json"


def _read_cache(path: Path) -> tuple[bool, datetime | None]:
    """(hit, first release) from the cache."""
    try:
        data = json.loads(path.read_bytes())
        if data.get("format") != _CACHE_FORMAT:
            return False, None
        if data.get("first_release"):
            return True, datetime.fromisoformat(data["first_release"])
        if time.time() - float(data["checked"]) < NOT_FOUND_TTL:
            return True, None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return False, None


def _write_cache(path: Path, first: datetime | None) -> None:
    data = {
        "format": _CACHE_FORMAT,
        "first_release": first.isoformat() if first else None,
        "checked": time.time(),
    }
    write_cache_file(path, json.dumps(data, sort_keys=True).encode())


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _from_json_api(name: str, index_url: str, timeout: float) -> datetime | None:
    """The earliest ``upload_time_iso_8601`` over every file of every release."""
    import requests

    from jhansi.supply.metadata import json_api_base

    base = json_api_base(index_url)
    if base is None:
        return None
    response = requests.get(f"{base}/{name}/json", timeout=timeout)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    times = [
        datetime.fromisoformat(str(f["upload_time_iso_8601"]).replace("Z", "+00:00"))
        for files in (response.json().get("releases") or {}).values()
        for f in files
        if f.get("upload_time_iso_8601")
    ]
    return _aware(min(times)) if times else None


def project_page(
    name: str, index_url: str, timeout: float, *, fresh: bool = False
) -> ProjectPage | None:
    """The index's simple-API page for ``name`` (``None``: the index has no such project).

    The one client jhansi asks the index with, about provenance and about where a
    lock's files come from (:mod:`jhansi.deps.origin`). ``fresh`` asks caches on the
    way (a mirror's, a CDN's) to revalidate with the index (``Cache-Control:
    no-cache``): a page cached before a release lacks its files. Raises
    :class:`ProvenanceUnavailable` when the index cannot be asked.
    """
    import requests
    from pypi_simple import ACCEPT_JSON_PREFERRED, PyPISimple
    from pypi_simple.errors import NoSuchProjectError

    try:
        with PyPISimple(endpoint=index_url, accept=ACCEPT_JSON_PREFERRED) as client:
            try:
                headers = {"Cache-Control": "no-cache"} if fresh else None
                return client.get_project_page(name, timeout=timeout, headers=headers)
            except NoSuchProjectError:
                return None
    except (requests.RequestException, OSError, ValueError, KeyError, TypeError) as exc:
        raise ProvenanceUnavailable(
            f"cannot read {name}'s files from the package index ({exc.__class__.__name__})",
            hint="Check the network and your uv or pip index settings, then try again.",
        ) from exc


def _earliest_upload(page: ProjectPage) -> datetime | None:
    times = [p.upload_time for p in page.packages if p.upload_time is not None]
    return _aware(min(times)) if times else None


def remember_first_release(name: str, page: ProjectPage, *, cache_dir: Path) -> None:
    """Cache ``name``'s first release from a page fetched for another reason.

    Only a page with upload times answers (a release date never changes); one
    without leaves the question to :func:`first_release`. Called with the
    configured index's pages, so that the provenance check asks nothing again.
    """
    first = _earliest_upload(page)
    name = canonical_name(name)
    path = _cache_path(cache_dir, name)
    if first is not None and not _read_cache(path)[0]:
        _write_cache(path, first)


def _fetch_first_release(name: str, index_url: str, timeout: float) -> datetime | None:
    import requests

    try:
        page = project_page(name, index_url, timeout)
        if page is None:
            return None
        first = _earliest_upload(page)
        if first is not None:
            return first
        if not page.packages:
            return None
        return _from_json_api(name, index_url, timeout)
    except ProvenanceUnavailable as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ProvenanceUnavailable(
            f"cannot read {name}'s release history from the package index "
            f"({cause.__class__.__name__})",
            hint=exc.hint,
        ) from cause
    except (requests.RequestException, OSError, ValueError, KeyError, TypeError) as exc:
        raise ProvenanceUnavailable(
            f"cannot read {name}'s release history from the package index "
            f"({exc.__class__.__name__})",
            hint="Check the network and your uv or pip index settings, then try again.",
        ) from exc


def first_release(
    name: str, *, cache_dir: Path, index_url: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> datetime | None:
    """When ``name`` first had a file uploaded to the index (UTC), or None if it has none.

    Raises :class:`ProvenanceUnavailable` when the index cannot be asked.
    """
    from jhansi.supply.metadata import configured_index_url

    name = canonical_name(name)
    path = _cache_path(cache_dir, name)
    hit, cached = _read_cache(path)
    if hit:
        return cached
    first = _fetch_first_release(name, index_url or configured_index_url(), timeout)
    _write_cache(path, first)
    return first


# -- the check ------------------------------------------------------------------------------


def check_provenance(
    packages: Sequence[LockedPackage],
    *,
    min_age_days: int,
    allow: Collection[str],
    now: datetime,
    cache_dir: Path,
    index_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    require_popular: bool = True,
    popular: Collection[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ProvenanceFinding, ...]:
    """Provenance findings for the locked packages, in lock order.

    ``min_age_days <= 0`` turns the age rule off (and then no index request is
    made); ``require_popular=False`` the popularity rule. Names in ``allow``
    (any spelling) produce no finding. ``popular`` replaces the bundled list
    (tests); ``now`` is the clock.
    """
    allowed = {canonical_name(a) for a in allow}
    known = popular_projects() if popular is None else frozenset(canonical_name(p) for p in popular)
    checked = [p for p in packages if canonical_name(p.name) not in allowed]
    now = _aware(now)
    ages: dict[str, datetime | ProvenanceUnavailable | None] = {}
    if min_age_days > 0 and checked:
        url = index_url  # None: the configured index, worked out only if one is asked

        def ask(name: str) -> tuple[str, datetime | ProvenanceUnavailable | None]:
            try:
                return name, first_release(
                    name, cache_dir=cache_dir, index_url=url, timeout=timeout
                )
            except ProvenanceUnavailable as exc:
                return name, exc

        names = list(dict.fromkeys(canonical_name(p.name) for p in checked))
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(names))) as pool:
            for done, (name, answer) in enumerate(pool.map(ask, names), start=1):
                ages[name] = answer
                if progress is not None:
                    progress(done, len(names))
    findings: list[ProvenanceFinding] = []
    for package in checked:
        name = canonical_name(package.name)
        if min_age_days > 0:
            answer = ages[name]
            if isinstance(answer, ProvenanceUnavailable):
                findings.append(
                    ProvenanceFinding(
                        name, package.version, "provenance-unavailable", answer.message
                    )
                )
            elif answer is None:
                findings.append(
                    ProvenanceFinding(
                        name,
                        package.version,
                        "provenance-unavailable",
                        "the package index shows no upload date for any of its files",
                    )
                )
            else:
                age = now - answer
                if age.total_seconds() < min_age_days * 86400:
                    days = max(age.days, 0)
                    findings.append(
                        ProvenanceFinding(
                            name,
                            package.version,
                            "package-age",
                            f"first released {answer.date().isoformat()} "
                            f"({days} day{'s' if days != 1 else ''} ago; "
                            f"policy minimum {min_age_days})",
                        )
                    )
        if require_popular and name not in known:
            findings.append(
                ProvenanceFinding(
                    name,
                    package.version,
                    "not-popular",
                    f"not among the {len(known):,} most downloaded PyPI projects",
                )
            )
    return tuple(findings)
