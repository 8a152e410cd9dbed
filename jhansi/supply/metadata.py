"""Core metadata of locked packages: licence fields, classifiers, summary, dependencies.

Read from the installed environment's ``*.dist-info/METADATA`` when there is
one, else from the package index the lock was resolved against: the PEP 658
core-metadata file of a locked wheel (its digest checked when the simple API
gives one), falling back to the index's JSON API, and last to the smallest
locked wheel itself (checked against the lock's digest). What is fetched is cached
per (name, version) under ``cache_dir/metadata/``: a release's metadata never
changes, so a warm call makes no network request at all.

The index is the user's primary uv index (``UV_DEFAULT_INDEX``,
``UV_INDEX_URL``, ``PIP_INDEX_URL`` mapped as :mod:`jhansi.deps.uv` maps it, the
user's ``uv.toml``), else pypi-simple's default endpoint: the same index uv
locked from. No index host is named here.

A package whose metadata cannot be had is data, not an error: its
:class:`PackageMetadata` has ``source="unavailable"`` and says why.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from jhansi._cache import write_cache_file
from jhansi.deps.pylock import LockedPackage, canonical_name

if TYPE_CHECKING:
    import requests

Source = Literal["environment", "index", "cache", "unavailable"]
#: Called as ``progress(done, total)`` from the calling thread's pool, once per package.
Progress = Callable[[int, int], None]

DEFAULT_TIMEOUT = 15.0
WORKERS = 8
_CACHE_FORMAT = 1
_LICENSE_MAX = 200
_USER_AGENT = "jhansi (supply-chain metadata)"
_WHEEL_MAX = 64 * 1024 * 1024
"""Bytes of a wheel fetched, as a last resort, only to read its METADATA."""


@dataclass(frozen=True, slots=True)
class PackageMetadata:
    """What jhansi reads from one distribution's core metadata."""

    name: str
    """The PEP 503 normalized name."""
    version: str
    license_expression: str | None = None
    """The PEP 639 ``License-Expression`` field, as written."""
    license: str | None = None
    """The legacy ``License`` field: its first non-empty line, trimmed (some hold a whole text)."""
    classifiers: tuple[str, ...] = ()
    summary: str | None = None
    requires_dist: tuple[str, ...] = ()
    """The ``Requires-Dist`` entries, as written (PEP 508, markers included)."""
    source: Source = "unavailable"
    problem: str | None = None
    """Why the metadata is unavailable (``source == "unavailable"`` only)."""


# -- parsing --------------------------------------------------------------------------------


def _first_line(value: str | None) -> str | None:
    if not value:
        return None
    for line in value.splitlines():
        line = line.strip()
        if line and line.upper() != "UNKNOWN":
            return line[:_LICENSE_MAX]
    return None


def parse_metadata(
    data: bytes, *, source: Source, name: str = "", version: str = ""
) -> PackageMetadata:
    """Parse a ``METADATA`` / PEP 658 file (RFC 822 headers, email.parser).

    ``name`` and ``version`` are used when the file does not carry them.
    """
    from email.parser import Parser

    # Core metadata is UTF-8 (PEP 566); parsed as text, a non-ASCII value (a licence
    # text, an author's name) stays a str instead of becoming an email Header object.
    message = Parser().parsestr(data.decode("utf-8", "replace"), headersonly=True)

    def field(key: str) -> str | None:
        value = message.get(key)
        return str(value).strip() if value is not None else None

    return PackageMetadata(
        name=canonical_name(field("Name") or name),
        version=field("Version") or version,
        license_expression=field("License-Expression") or None,
        license=_first_line(field("License")),
        classifiers=tuple(str(c).strip() for c in message.get_all("Classifier") or ()),
        summary=field("Summary") or None,
        requires_dist=tuple(str(r).strip() for r in message.get_all("Requires-Dist") or ()),
        source=source,
    )


def _from_json_api(info: Mapping[str, Any], name: str, version: str) -> PackageMetadata:
    """The same fields from the JSON API's ``info`` object."""
    return PackageMetadata(
        name=canonical_name(str(info.get("name") or name)),
        version=str(info.get("version") or version),
        license_expression=(str(info["license_expression"]).strip() or None)
        if info.get("license_expression")
        else None,
        license=_first_line(info.get("license")),
        classifiers=tuple(str(c) for c in info.get("classifiers") or ()),
        summary=str(info["summary"]).strip() or None if info.get("summary") else None,
        requires_dist=tuple(str(r) for r in info.get("requires_dist") or ()),
        source="index",
    )


# -- the index ------------------------------------------------------------------------------


def uv_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The user's uv configuration file (``UV_CONFIG_FILE``, as :func:`jhansi.deps.uv.
    uv_environment` sets it) as a table; empty when there is none or it does not read."""
    config = env.get("UV_CONFIG_FILE")
    if not config:
        return {}
    try:
        document = tomllib.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    return document


def configured_index_url(environ: Mapping[str, str] | None = None) -> str:
    """The primary index uv locks from, as the user configured it (never a literal host).

    ``UV_DEFAULT_INDEX`` / ``UV_INDEX_URL`` (``PIP_INDEX_URL`` counts as uv's when no uv
    setting is made, as in :func:`jhansi.deps.uv.uv_environment`), then the
    user's ``uv.toml`` (``index-url``, a ``[[index]]`` with ``default = true``,
    ``[pip] index-url``), else pypi-simple's default endpoint.
    """
    from jhansi.deps.uv import uv_environment

    env = uv_environment(environ)
    for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        value = env.get(name, "").strip()
        if value:
            return value
    document = uv_config(env)
    for index in document.get("index") or ():
        if isinstance(index, dict) and index.get("default") and index.get("url"):
            return str(index["url"])
    for table in (document, document.get("pip") or {}):
        if isinstance(table, dict) and table.get("index-url"):
            return str(table["index-url"])
    from pypi_simple import PYPI_SIMPLE_ENDPOINT

    return str(PYPI_SIMPLE_ENDPOINT)


def json_api_base(index_url: str) -> str | None:
    """The JSON API base (``…/pypi``) of a simple index at ``…/simple/``, else None."""
    parts = urlsplit(index_url)
    path = parts.path.rstrip("/")
    if parts.scheme not in ("http", "https") or not path.endswith("/simple"):
        return None
    return urlunsplit(parts._replace(path=path.removesuffix("/simple") + "/pypi"))


def _session() -> requests.Session:
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = _USER_AGENT
    return session


def _fetch_from_index(
    package: LockedPackage, index_url: str, timeout: float
) -> PackageMetadata | str:
    """The metadata of one locked package from the index, or why it cannot be had."""
    import requests
    from pypi_simple import ACCEPT_JSON_PREFERRED, PyPISimple
    from pypi_simple.errors import DigestMismatchError, NoMetadataError, NoSuchProjectError

    name = canonical_name(package.name)
    problems: list[str] = []
    filenames = {w.filename for w in package.wheels}
    with _session() as session:
        client = PyPISimple(endpoint=index_url, session=session, accept=ACCEPT_JSON_PREFERRED)
        try:
            page = client.get_project_page(name, timeout=timeout)
            for dist in page.packages:
                if dist.filename not in filenames or dist.has_metadata is False:
                    continue
                data = client.get_package_metadata_bytes(
                    dist, verify=bool(dist.metadata_digests), timeout=timeout
                )
                return parse_metadata(data, source="index", name=name, version=package.version)
            problems.append("no core-metadata file for the locked wheels")
        except DigestMismatchError:
            problems.append("the core-metadata file does not match its digest on the index")
        except NoSuchProjectError:
            problems.append("not on the index")
        except NoMetadataError:
            problems.append("no core-metadata file for the locked wheels")
        except (requests.RequestException, OSError, ValueError) as exc:
            problems.append(f"the index did not answer ({exc.__class__.__name__})")
        base = json_api_base(index_url)
        if base is not None:
            url = f"{base}/{name}/{package.version}/json"
            try:
                response = session.get(url, timeout=timeout)
                response.raise_for_status()
                info = response.json()["info"]
                return _from_json_api(info, name, package.version)
            except (requests.RequestException, OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"the JSON API did not answer ({exc.__class__.__name__})")
        from_wheel = _from_wheel(package, session, timeout)
        if isinstance(from_wheel, PackageMetadata):
            return from_wheel
        problems.append(from_wheel)
    return "; ".join(problems)


def _from_wheel(
    package: LockedPackage, session: requests.Session, timeout: float
) -> PackageMetadata | str:
    """The ``METADATA`` inside the smallest locked wheel, fetched and checked against the lock.

    The last resort, for an index without PEP 658 files or a JSON API: the lock's
    own digest vouches for the bytes, so this source is as trustworthy as the install.
    """
    import hashlib
    import io
    import zipfile

    import requests

    wheels = sorted(package.wheels, key=lambda w: (w.size is None, w.size or 0))
    wheel = next((w for w in wheels if any(h.startswith("sha256:") for h in w.hashes)), None)
    if wheel is None:
        return "no locked wheel with a sha256 digest"
    if wheel.size is not None and wheel.size > _WHEEL_MAX:
        return (
            f"the smallest locked wheel is too large to fetch for its metadata ({wheel.size} bytes)"
        )
    try:
        if urlsplit(wheel.url).scheme in ("http", "https"):
            response = session.get(wheel.url, timeout=timeout)
            response.raise_for_status()
            data = response.content
        else:
            data = Path(wheel.url.removeprefix("file://")).read_bytes()
    except (requests.RequestException, OSError) as exc:
        return f"the locked wheel could not be fetched ({exc.__class__.__name__})"
    if f"sha256:{hashlib.sha256(data).hexdigest()}" not in wheel.hashes:
        return "the fetched wheel does not match the lock's digest"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [
                n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)
            ]
            if len(members) != 1:
                return "the locked wheel has no single .dist-info/METADATA"
            metadata = archive.read(members[0])
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        return f"the locked wheel is not a readable zip ({exc.__class__.__name__})"
    return parse_metadata(
        metadata, source="index", name=canonical_name(package.name), version=package.version
    )


# -- the cache ------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _cache_path(cache_dir: Path, name: str, version: str) -> Path:
    return cache_dir / "metadata" / f"{_SAFE.sub('_', name)}-{_SAFE.sub('_', version)}.json"


def _read_cache(path: Path) -> PackageMetadata | None:
    try:
        data = json.loads(path.read_bytes())
        if data.get("format") != _CACHE_FORMAT:
            return None
        return PackageMetadata(
            name=str(data["name"]),
            version=str(data["version"]),
            license_expression=data.get("license_expression"),
            license=data.get("license"),
            classifiers=tuple(data.get("classifiers") or ()),
            summary=data.get("summary"),
            requires_dist=tuple(data.get("requires_dist") or ()),
            source="cache",
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_cache(path: Path, meta: PackageMetadata) -> None:
    data = {
        "format": _CACHE_FORMAT,
        "name": meta.name,
        "version": meta.version,
        "license_expression": meta.license_expression,
        "license": meta.license,
        "classifiers": list(meta.classifiers),
        "summary": meta.summary,
        "requires_dist": list(meta.requires_dist),
    }
    write_cache_file(path, json.dumps(data, sort_keys=True).encode())


# -- the entry point ------------------------------------------------------------------------


def _from_environment(environment: Path) -> dict[tuple[str, str], PackageMetadata]:
    found: dict[tuple[str, str], PackageMetadata] = {}
    for metadata_file in sorted(environment.glob("*.dist-info/METADATA")):
        try:
            meta = parse_metadata(metadata_file.read_bytes(), source="environment")
        except OSError:
            continue
        found[(meta.name, meta.version)] = meta
    return found


def metadata_for(
    packages: Sequence[LockedPackage],
    *,
    environment: Path | None,
    cache_dir: Path,
    index_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> dict[str, PackageMetadata]:
    """The metadata of every locked package, keyed by normalized name.

    Order of sources per package: the installed ``environment`` (when given),
    the on-disk cache, the index (in parallel, a few at a time). A package
    whose metadata cannot be had maps to ``source="unavailable"``; this never
    raises for network failures.
    """
    installed = _from_environment(environment) if environment is not None else {}
    result: dict[str, PackageMetadata] = {}
    missing: list[LockedPackage] = []
    for package in packages:
        name = canonical_name(package.name)
        meta = installed.get((name, package.version))
        if meta is None:
            meta = _read_cache(_cache_path(cache_dir, name, package.version))
        if meta is None:
            missing.append(package)
        else:
            result[name] = meta
    total = len(packages)
    done = len(result)
    if progress is not None:
        progress(done, total)
    if not missing:
        return result
    url = index_url or configured_index_url()

    def fetch(package: LockedPackage) -> tuple[LockedPackage, PackageMetadata | str]:
        return package, _fetch_from_index(package, url, timeout)

    with ThreadPoolExecutor(max_workers=min(WORKERS, len(missing))) as pool:
        for package, fetched in pool.map(fetch, missing):
            name = canonical_name(package.name)
            if isinstance(fetched, str):
                result[name] = PackageMetadata(
                    name=name, version=package.version, source="unavailable", problem=fetched
                )
            else:
                _write_cache(_cache_path(cache_dir, name, package.version), fetched)
                result[name] = fetched
            done += 1
            if progress is not None:
                progress(done, total)
    return {canonical_name(p.name): result[canonical_name(p.name)] for p in packages}
