"""Where a lock's files come from: only files the user's package index serves.

A ``pylock.<stem>.toml`` beside a script is a project file: whoever wrote the
repository wrote it, and jhansi reuses it whenever its ``[tool.jhansi] inputs``
digest matches (a digest anyone can compute). Such a lock may *pin* versions (a
tightening: the policy still checks every pin) but never choose *where bytes
come from*. uv installs a pylock's files from the URLs (or paths) written in it,
so an unchecked lock could make the host fetch any address the project picks
(loopback, cloud metadata, internal hosts the egress proxy would refuse), read
any host file into the sandbox (``path = "/etc/…"``), or install other bytes
under a name and version the policy vetted.

:func:`check_origin` therefore accepts a lock only when every package is an
index package:

* only PEP 751 ``wheels`` entries, each with a ``url`` (no ``path``), and no
  ``sdist``, ``archive``, ``directory`` or ``vcs`` source;
* each wheel's file name names the package's own name and version;
* each wheel's (file name, sha256, URL) is one the configured index lists for
  that project: the URL the index itself gives for that file and nothing else
  (an index may serve its files from another host than its simple API).

The indexes are the user's (uv's and pip's index settings, through
:mod:`jhansi.deps.uv`; pypi-simple's default endpoint otherwise): never a
project's. The index is asked through the same client as the provenance check
(:func:`jhansi.supply.provenance.project_page`), and the page it answers also
fills that check's cache, so verifying costs no extra request.

A file once found on the index is remembered under ``<cache>/origin/`` (per
index, per project): a release's files never change, so a lock checked before is
checked again without the network. That is also the offline rule: when the
index cannot be reached, a lock whose every file was verified earlier (one jhansi
wrote, or checked, on this machine) is used; any other lock is refused, because
nothing could say where its files come from. The check never requests a lock's
own URLs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from jhansi._cache import write_cache_file
from jhansi.errors import DependencyError

DEFAULT_TIMEOUT = 15.0
WORKERS = 8
_CACHE_FORMAT = 1
_SAFE = re.compile(r"[^a-z0-9._-]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: PEP 751 sources that are not an index's file: refused whatever they point at.
_OTHER_SOURCES = ("vcs", "directory", "archive", "sdist")


@dataclass(frozen=True, slots=True)
class LockedFile:
    """One wheel a lock would install, as the lock describes it."""

    package: str
    """The normalized project name."""
    version: str
    filename: str
    sha256: str
    url: str


# -- the user's indexes ---------------------------------------------------------------------


def _index_entry(item: str) -> str:
    """``name=url`` (uv's ``UV_INDEX``) or a bare URL, as a URL."""
    head, equals, tail = item.partition("=")
    return tail if equals and "://" not in head else item


def configured_index_urls(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every index uv may lock from, as the *user* configured them; the primary first.

    The primary is :func:`jhansi.supply.metadata.configured_index_url`; then
    ``UV_INDEX`` and ``UV_EXTRA_INDEX_URL`` (``PIP_EXTRA_INDEX_URL`` mapped as uv
    gets it), then the user's ``uv.toml`` (``[[index]]``, ``extra-index-url``).
    A project's configuration is never read (uv runs with ``UV_NO_CONFIG``).
    """
    from jhansi.deps.uv import uv_environment
    from jhansi.supply.metadata import configured_index_url, uv_config

    env = uv_environment(environ)
    urls = [configured_index_url(environ)]
    for name in ("UV_INDEX", "UV_EXTRA_INDEX_URL"):
        urls.extend(_index_entry(item) for item in env.get(name, "").split())
    document = uv_config(env)
    for index in document.get("index") or ():
        if isinstance(index, dict) and isinstance(index.get("url"), str):
            urls.append(index["url"])
    for table in (document, document.get("pip") or {}):
        extra = table.get("extra-index-url") if isinstance(table, dict) else None
        if isinstance(extra, str):
            extra = [extra]
        urls.extend(str(u) for u in extra or () if isinstance(u, str))
    return tuple(dict.fromkeys(u.strip() for u in urls if u.strip()))


def _same_index(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


# -- reading the lock (no network) ----------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _Refusal(Exception):
    """One package of the lock is not an index package (and why)."""

    def __init__(self, package: str, where: str, why: str) -> None:
        super().__init__(why)
        self.package = package
        self.where = where
        self.why = why


def _filename_of(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _wheel_file(package: str, version: str, entry: Any, indexes: Sequence[str]) -> LockedFile:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    label = f"{package} {version}"
    if not isinstance(entry, dict):
        raise _Refusal(label, "a wheel entry", "it is not a table")
    if "path" in entry:
        raise _Refusal(label, f"path = {entry['path']!r}", "a local path, not the index")
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise _Refusal(label, "a wheel entry", "it has no url")
    parts = urlsplit(url)
    # Plain http only from the host of an index the user configured as plain http
    # (a local mirror): the user's choice, never the lock's.
    plain_http_hosts = {urlsplit(i).netloc for i in indexes if urlsplit(i).scheme == "http"}
    if parts.scheme != "https" and not (
        parts.scheme == "http" and parts.netloc in plain_http_hosts
    ):
        raise _Refusal(label, url, "not an https URL")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise _Refusal(label, url, "a URL with credentials or a fragment")
    filename = _filename_of(url)
    named = entry.get("name")
    if named is not None and named != filename:
        raise _Refusal(label, url, f"its name {named!r} is not the URL's file name")
    try:
        wheel_name, wheel_version, _, _ = parse_wheel_filename(filename)
        same_version = wheel_version == Version(version)
    except (InvalidWheelFilename, InvalidVersion):
        raise _Refusal(label, url, "not a wheel file name for this package") from None
    if _canonical(wheel_name) != package or not same_version:
        raise _Refusal(label, url, f"the file is not {package} {version}")
    hashes = entry.get("hashes")
    sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
        raise _Refusal(label, url, "no sha256 digest")
    return LockedFile(package, version, filename, sha256.lower(), url)


def lock_files(document: Mapping[str, Any], indexes: Sequence[str]) -> tuple[LockedFile, ...]:
    """Every wheel a parsed lock would install; raises ``_Refusal`` for a non-index source."""
    packages = document.get("packages")
    if not isinstance(packages, list):
        raise _Refusal("(lock)", "packages", "the lock has no [[packages]] array")
    files: list[LockedFile] = []
    for entry in packages:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _Refusal("(lock)", "[[packages]]", "a package without a name")
        name = _canonical(entry["name"])
        version = entry.get("version")
        if not isinstance(version, str) or not version:
            raise _Refusal(name, "[[packages]]", "no version: only index releases are installed")
        for kind in _OTHER_SOURCES:
            if kind in entry:
                source = entry[kind]
                where = (
                    str(source.get("url") or source.get("path") or kind)
                    if isinstance(source, dict)
                    else kind
                )
                raise _Refusal(name, where, f"a {kind} source: jhansi installs index wheels only")
        index = entry.get("index")
        if index is not None and not (
            isinstance(index, str) and any(_same_index(index, i) for i in indexes)
        ):
            raise _Refusal(name, str(index), "not one of your configured package indexes")
        wheels = entry.get("wheels")
        if not isinstance(wheels, list) or not wheels:
            raise _Refusal(name, "[[packages]]", "no wheels")
        files.extend(_wheel_file(name, version, w, indexes) for w in wheels)
    return tuple(files)


# -- the cache of verified files ------------------------------------------------------------


def _cache_path(cache_dir: Path, index: str, package: str) -> Path:
    import blake3

    which = blake3.blake3(index.rstrip("/").encode()).hexdigest()[:32]
    return cache_dir / "origin" / which / f"{_SAFE.sub('_', package)}.json"


def _read_verified(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_bytes())
        if data.get("format") != _CACHE_FORMAT or not isinstance(data.get("files"), dict):
            return {}
        return {
            str(k): {"sha256": str(v["sha256"]), "url": str(v["url"])}
            for k, v in data["files"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _is_verified(cache_dir: Path, indexes: Sequence[str], file: LockedFile) -> bool:
    want = {"sha256": file.sha256, "url": file.url}
    return any(
        _read_verified(_cache_path(cache_dir, i, file.package)).get(file.filename) == want
        for i in indexes
    )


def _remember(cache_dir: Path, index: str, files: Sequence[LockedFile]) -> None:
    by_package: dict[str, list[LockedFile]] = {}
    for file in files:
        by_package.setdefault(file.package, []).append(file)
    for package, found in by_package.items():
        path = _cache_path(cache_dir, index, package)
        known = _read_verified(path)
        known.update({f.filename: {"sha256": f.sha256, "url": f.url} for f in found})
        data = {"format": _CACHE_FORMAT, "index": index, "files": known}
        write_cache_file(path, json.dumps(data, sort_keys=True).encode())


# -- asking the index -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    served: Mapping[str, tuple[tuple[str, str, str], ...]]
    """File name -> (sha256, URL, index) for every listing of it, over the indexes asked."""
    problems: tuple[str, ...]
    """The indexes that could not be asked, and why."""


def _matches(file: LockedFile, served: Mapping[str, Sequence[tuple[str, str, str]]]) -> str | None:
    """The index that serves exactly this file, else None."""
    for sha256, url, index in served.get(file.filename, ()):
        if sha256 == file.sha256 and url == file.url:
            return index
    return None


def _ask(
    package: str,
    files: Sequence[LockedFile],
    indexes: Sequence[str],
    cache_dir: Path,
    timeout: float,
) -> _Answer:
    """What the indexes serve of ``package``; asked again past any cache when a file is
    missing (a page cached before a release, while uv saw the fresh one, is not a lie)."""
    answer = _ask_once(package, files, indexes, cache_dir, timeout, fresh=False)
    if answer.problems or all(_matches(f, answer.served) is not None for f in files):
        return answer
    return _ask_once(package, files, indexes, cache_dir, timeout, fresh=True)


def _ask_once(
    package: str,
    files: Sequence[LockedFile],
    indexes: Sequence[str],
    cache_dir: Path,
    timeout: float,
    *,
    fresh: bool,
) -> _Answer:
    from jhansi.supply.provenance import (
        ProvenanceUnavailable,
        project_page,
        remember_first_release,
    )

    served: dict[str, list[tuple[str, str, str]]] = {}
    problems: list[str] = []
    for position, index in enumerate(indexes):
        try:
            page = project_page(package, index, timeout, fresh=fresh)
        except ProvenanceUnavailable as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            problems.append(f"{index} did not answer ({cause.__class__.__name__})")
            continue
        if page is None:
            continue
        if position == 0:
            remember_first_release(package, page, cache_dir=cache_dir)
        for dist in page.packages:
            sha256 = (dist.digests or {}).get("sha256")
            if isinstance(sha256, str):
                served.setdefault(dist.filename, []).append((sha256.lower(), dist.url, index))
        if all(_matches(f, served) is not None for f in files):
            break
    return _Answer({k: tuple(v) for k, v in served.items()}, tuple(problems))


def _why_not(file: LockedFile, served: Mapping[str, Sequence[tuple[str, str, str]]]) -> str:
    listings = served.get(file.filename, ())
    if not listings:
        return f"the index serves no file {file.filename} for {file.package}"
    if all(sha256 != file.sha256 for sha256, _, _ in listings):
        return f"the index serves {file.filename} with another sha256"
    return f"the index serves {file.filename} from another URL"


# -- the check ------------------------------------------------------------------------------


def upgrade_command(fix_command: str) -> str:
    """``jhansi lock SCRIPT`` -> ``jhansi lock --upgrade SCRIPT`` (what relocks from the index)."""
    prefix = "jhansi lock "
    if fix_command.startswith(prefix) and "--upgrade" not in fix_command:
        return f"{prefix}--upgrade {fix_command[len(prefix) :]}"
    return fix_command


def check_origin(
    document: Mapping[str, Any],
    path: Path,
    *,
    cache_dir: Path,
    fix_command: str = "jhansi lock SCRIPT",
    index_urls: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Refuse a parsed lock unless every file it installs is served by the user's index.

    Raises :class:`DependencyError` (exit 7): a non-index source, a file the index
    does not serve under that URL and sha256, or an index that cannot be asked
    about a file not verified before. ``index_urls`` replaces the user's indexes
    (tests); ``path`` and ``fix_command`` are for the message.
    """
    indexes = tuple(index_urls) if index_urls is not None else configured_index_urls()
    try:
        files = lock_files(document, indexes)
    except _Refusal as refusal:
        raise _refused(path, refusal, fix_command) from None
    pending = [f for f in files if not _is_verified(cache_dir, indexes, f)]
    if not pending:
        return
    by_package: dict[str, list[LockedFile]] = {}
    for file in pending:
        by_package.setdefault(file.package, []).append(file)

    def ask(package: str) -> tuple[str, _Answer]:
        return package, _ask(package, by_package[package], indexes, cache_dir, timeout)

    with ThreadPoolExecutor(max_workers=min(WORKERS, len(by_package))) as pool:
        answers = dict(pool.map(ask, list(by_package)))
    verified: dict[str, list[LockedFile]] = {}
    unavailable: list[tuple[LockedFile, str]] = []
    for file in pending:
        answer = answers[file.package]
        index = _matches(file, answer.served)
        if index is not None:
            verified.setdefault(index, []).append(file)
        elif answer.problems:
            unavailable.append((file, "; ".join(answer.problems)))
        else:
            mismatch = _Refusal(file.package, file.url, _why_not(file, answer.served))
            raise _refused(path, mismatch, fix_command, version=file.version)
    for index, found in verified.items():
        _remember(cache_dir, index, found)
    if unavailable:
        file, why = unavailable[0]
        more = f" (and {len(unavailable) - 1} more file(s))" if len(unavailable) > 1 else ""
        raise DependencyError(
            f"cannot check that {path} installs only files from the package index: "
            f"{file.package} {file.version} {file.url}{more}: {why}",
            hint="Check the network and your uv or pip index settings. A lock whose files "
            "were checked on this machine before needs no network.",
        )


def _refused(
    path: Path, refusal: _Refusal, fix_command: str, *, version: str = ""
) -> DependencyError:
    which = f"{refusal.package} {version}".strip()
    return DependencyError(
        f"{path}: {which} does not come from the package index: {refusal.where} ({refusal.why})",
        hint=f"A lock may pin versions, never choose where files come from: run "
        f"`{upgrade_command(fix_command)}`, or delete {path.name}, to lock again from the index.",
    )
