#!/usr/bin/env python3
"""Generate jhansi/deps/data/import_map.json: import name -> PyPI distributions.

For the N most-downloaded projects of a download-count CSV (default: the top
5,000 of ``../shared/data/top-pypi-packages.csv``), read the top-level
importable names from one real wheel of the project's latest release, without
downloading whole wheels: the wheel's central directory is read from the end of
the zip with HTTP range requests, then ``*.dist-info/top_level.txt`` (one member,
one more range request when it is not already in the fetched tail).

Why from wheels and not from names: AI models invent package names that
attackers then register ("slopsquatting"), so jhansi never derives a
distribution from an import name. What a wheel actually installs is evidence;
a name that looks right is not.

What a wheel provides is derived from its file list (see ``derive_names``):
top-level packages, modules and extension modules; namespace packages
(PEP 420 directories, and legacy ``pkgutil``/``pkg_resources`` ones, found by
reading small ``__init__.py`` files) as dotted paths down to the first regular
package (``google.cloud.storage``); directories that root ``.pth`` files put
on ``sys.path`` (pywin32). Across projects, the most downloaded provider of a
name comes first, standard-library names are dropped, and the namespace
boundaries that lookups must not fall back through are listed.

The package index is the user's primary index (uv's ``UV_DEFAULT_INDEX`` /
``UV_INDEX_URL``, pip's ``PIP_INDEX_URL`` / ``pip config get global.index-url``,
else pypi-simple's default endpoint); extra indexes are ignored. Its JSON API
base is derived from the simple URL (``.../simple/`` -> ``.../pypi/``); wheel
URLs come from the JSON. Fetched metadata is cached (``--cache-dir``), so a
re-run, or a change of the derivation rules, costs seconds.

Usage::

    uv run python scripts/gen-import-map.py [CSV] [--top 5000] [--jobs 16]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO.parent / "shared" / "data" / "top-pypi-packages.csv"
DEFAULT_OUT = REPO / "jhansi" / "deps" / "data" / "import_map.json"
DEFAULT_SKIPPED = REPO / "jhansi" / "deps" / "data" / "import_map_skipped.json"
GENERATOR = "scripts/gen-import-map.py"
USER_AGENT = "jhansi-gen-import-map/1"

# ----------------------------------------------------------------- zip files --

EOCD_SIG = b"PK\x05\x06"
EOCD64_LOCATOR_SIG = b"PK\x06\x07"
EOCD64_SIG = b"PK\x06\x06"
CENTRAL_SIG = b"PK\x01\x02"
LOCAL_SIG = b"PK\x03\x04"
EOCD_SIZE = 22
EOCD64_LOCATOR_SIZE = 20
EOCD64_SIZE = 56
CENTRAL_SIZE = 46
LOCAL_SIZE = 30
ZIP64_EXTRA_ID = 0x0001
# The EOCD comment is at most 64 KiB, so the record is within this many bytes of the end.
TAIL_SIZE = 64 * 1024 + EOCD_SIZE
UTF8_FLAG = 0x800


class ZipFormatError(Exception):
    """The bytes are not a zip archive this reader understands."""


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One central-directory record: enough to list a member and to read it."""

    name: str
    method: int
    compressed_size: int
    local_header_offset: int
    size: int = 0
    """Uncompressed size."""


@dataclass(frozen=True, slots=True)
class CentralDirectory:
    """Where the central directory is, from the (zip64) end-of-central-directory record."""

    offset: int
    size: int
    entries: int


RangeFetch = Callable[[int, int], bytes]
"""``fetch(start, end)``: the archive's bytes ``[start, end)``."""


def _find_eocd(tail: bytes) -> int:
    """Position in ``tail`` of the end-of-central-directory record.

    Searched backwards, and checked against the comment length, because the
    signature can also occur inside the comment.
    """
    pos = len(tail)
    while True:
        pos = tail.rfind(EOCD_SIG, 0, pos)
        if pos < 0:
            raise ZipFormatError("no end-of-central-directory record")
        if pos + EOCD_SIZE <= len(tail):
            (comment_len,) = struct.unpack_from("<H", tail, pos + 20)
            if pos + EOCD_SIZE + comment_len == len(tail):
                return pos


class RemoteZip:
    """A zip archive read through range requests, from the end.

    Keeps one contiguous buffer that always reaches the end of the file, and
    grows it downwards only as far as the central directory starts: a wheel's
    data is never fetched, only its directory (and, on request, single members).
    """

    def __init__(self, fetch: RangeFetch, size: int, *, tail_size: int = TAIL_SIZE) -> None:
        self._fetch = fetch
        self.size = size
        start = max(0, size - tail_size)
        self._buf = fetch(start, size)
        self._buf_start = start
        if len(self._buf) != size - start:
            raise ZipFormatError("short read of the archive's tail")

    def _read(self, start: int, end: int) -> bytes:
        if start < 0 or end > self.size or start > end:
            raise ZipFormatError(f"range {start}-{end} outside the archive ({self.size} bytes)")
        if start >= self._buf_start:
            return self._buf[start - self._buf_start : end - self._buf_start]
        if end >= self._buf_start and self._buf_start - start <= 4 * 1024 * 1024:
            # Contiguous with what we hold: extend the buffer downwards.
            more = self._fetch(start, self._buf_start)
            if len(more) != self._buf_start - start:
                raise ZipFormatError("short read")
            self._buf = more + self._buf
            self._buf_start = start
            return self._buf[: end - start]
        data = self._fetch(start, end)
        if len(data) != end - start:
            raise ZipFormatError("short read")
        return data

    def central_directory(self) -> CentralDirectory:
        """Locate the central directory, following the zip64 records when present."""
        tail_start = max(0, self.size - TAIL_SIZE)
        tail = self._read(tail_start, self.size)
        pos = _find_eocd(tail)
        (_, disk, cd_disk, _, entries, cd_size, cd_offset, _) = struct.unpack_from(
            "<4sHHHHIIH", tail, pos
        )
        eocd_at = tail_start + pos
        locator_at = eocd_at - EOCD64_LOCATOR_SIZE
        if locator_at >= 0 and self._read(locator_at, locator_at + 4) == EOCD64_LOCATOR_SIG:
            locator = self._read(locator_at, eocd_at)
            (_, _, eocd64_at, _) = struct.unpack("<4sIQI", locator)
            if eocd64_at + EOCD64_SIZE > locator_at:
                raise ZipFormatError("zip64 end record overlaps its locator")
            record = self._read(eocd64_at, eocd64_at + EOCD64_SIZE)
            if record[:4] != EOCD64_SIG:
                raise ZipFormatError("zip64 locator does not point at a zip64 end record")
            (_, _, _, _, disk, cd_disk, _, entries, cd_size, cd_offset) = struct.unpack(
                "<4sQHHIIQQQQ", record
            )
        elif entries == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
            raise ZipFormatError("zip64 sizes without a zip64 end record")
        if disk != 0 or cd_disk != 0:
            raise ZipFormatError("multi-disk archives are not supported")
        if cd_offset + cd_size > self.size:
            raise ZipFormatError("central directory extends past the end of the archive")
        return CentralDirectory(cd_offset, cd_size, entries)

    def entries(self) -> list[ZipEntry]:
        """Every member of the archive, in central-directory order."""
        where = self.central_directory()
        return parse_central_directory(
            self._read(where.offset, where.offset + where.size), where.entries
        )

    def read_member(self, entry: ZipEntry) -> bytes:
        """The uncompressed bytes of one member (stored or deflated)."""
        # The local header's extra field may differ from the central one: read
        # the header first (from the buffer when the member is near the end).
        at = entry.local_header_offset
        head = self._read(at, min(self.size, at + LOCAL_SIZE))
        if len(head) < LOCAL_SIZE or head[:4] != LOCAL_SIG:
            raise ZipFormatError(f"no local header for {entry.name}")
        name_len, extra_len = struct.unpack_from("<HH", head, 26)
        data_at = at + LOCAL_SIZE + name_len + extra_len
        data = self._read(data_at, data_at + entry.compressed_size)
        if entry.method == 0:
            return data
        if entry.method == 8:
            return zlib.decompress(data, -15)
        raise ZipFormatError(f"{entry.name}: unsupported compression method {entry.method}")


def parse_central_directory(data: bytes, expected: int | None = None) -> list[ZipEntry]:
    """Parse central-directory records, applying zip64 extra fields (0x0001)."""
    entries: list[ZipEntry] = []
    pos = 0
    while pos + CENTRAL_SIZE <= len(data) and data[pos : pos + 4] == CENTRAL_SIG:
        (
            _sig,
            _made_by,
            _needed,
            flags,
            method,
            _time,
            _date,
            _crc,
            csize,
            usize,
            name_len,
            extra_len,
            comment_len,
            disk,
            _iattr,
            _eattr,
            offset,
        ) = struct.unpack_from("<4sHHHHHHIIIHHHHHII", data, pos)
        name_at = pos + CENTRAL_SIZE
        raw_name = data[name_at : name_at + name_len]
        extra = data[name_at + name_len : name_at + name_len + extra_len]
        if flags & UTF8_FLAG:
            name = raw_name.decode("utf-8")
        else:
            # Without the flag the spec says cp437; wheels are UTF-8 in practice.
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                name = raw_name.decode("cp437")
        if 0xFFFFFFFF in (csize, usize, offset) or disk == 0xFFFF:
            usize, csize, offset = _apply_zip64_extra(extra, usize, csize, offset, disk)
        entries.append(ZipEntry(name, method, csize, offset, usize))
        pos = name_at + name_len + extra_len + comment_len
    if expected is not None and len(entries) != expected:
        raise ZipFormatError(f"central directory has {len(entries)} records, expected {expected}")
    return entries


def _apply_zip64_extra(
    extra: bytes, usize: int, csize: int, offset: int, disk: int
) -> tuple[int, int, int]:
    """Replace the 0xFFFFFFFF fields by the zip64 extra field's values, in spec order."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if tag != ZIP64_EXTRA_ID:
            continue
        values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
        if usize == 0xFFFFFFFF:
            usize = values.pop(0)
        if csize == 0xFFFFFFFF:
            csize = values.pop(0)
        if offset == 0xFFFFFFFF:
            offset = values.pop(0)
        return usize, csize, offset
    raise ZipFormatError("zip64 sizes without a zip64 extra field")


# ------------------------------------------------------- top-level names --

SKIP_TOP = frozenset({"tests", "test", "__pycache__"})
# Deeper namespace nesting (only bundles such as ansible's collections have it)
# is recorded at this many components: beyond it, thousands of lines say nothing.
MAX_DEPTH = 4
DATA_LIB_RE = re.compile(r"^[^/]+\.data/(?:purelib|platlib)/")
NAMESPACE_INIT_RE = re.compile(rb"extend_path|declare_namespace")
MAX_NAMESPACE_INIT = 2048
MAX_NAMESPACE_CANDIDATES = 10
MAX_PTH = 4096


@dataclass(frozen=True, slots=True)
class WheelNames:
    """What one wheel makes importable.

    ``imports``: dotted names down to the first regular package (or module), so
    that ``google/cloud/storage/__init__.py`` gives ``google.cloud.storage``.
    ``namespaces``: the namespace-package directories crossed on the way
    (``google``, ``google.cloud``); lookups never fall back through them.
    """

    imports: tuple[str, ...]
    namespaces: tuple[str, ...]
    containers: tuple[str, ...] = ()
    """Those of ``imports`` that are regular packages holding only subpackages."""


def module_name(filename: str) -> tuple[str, bool] | None:
    """``(module, is_extension)`` for an importable file name, else None.

    ``x.py``, ``x.pyc``, and extension modules: ``x.so``, ``x.abi3.so``,
    ``x.cpython-311-x86_64-linux-gnu.so``, ``x.pyd``, ``x.cp311-win_amd64.pyd``.
    An untagged ``libx.so`` is a shared library, not a module.
    """
    stem, dot, rest = filename.partition(".")
    if not dot or not stem.isidentifier():
        return None
    if rest in ("py", "pyc"):
        return stem, False
    if rest in ("so", "pyd") or rest.endswith((".so", ".pyd")):
        if rest == "so" and stem.startswith("lib"):
            return None
        return stem, True
    return None


def installed_path(member: str) -> tuple[str, ...] | None:
    """A wheel member's path relative to site-packages, split; None if not installed there."""
    if member.endswith("/"):
        return None  # a directory entry
    path = DATA_LIB_RE.sub("", member, count=1)
    if path == member and member.split("/", 1)[0].endswith((".data", ".dist-info", ".egg-info")):
        return None  # scripts, headers, data, metadata: not importable
    return tuple(path.split("/"))


def pth_roots(pth_files: Iterable[str]) -> list[tuple[str, ...]]:
    """Directories that ``.pth`` files add to ``sys.path`` (pywin32 adds ``win32``)."""
    roots: list[tuple[str, ...]] = []
    for text in pth_files:
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            parts = tuple(p for p in line.replace("\\", "/").split("/") if p not in ("", "."))
            if parts and ".." not in parts and not line.startswith("/"):
                roots.append(parts)
    return sorted(set(roots), key=len, reverse=True)


def namespace_init_candidates(entries: Sequence[ZipEntry]) -> list[ZipEntry]:
    """``__init__.py`` members that may be pkgutil/pkg_resources namespace declarations.

    Those are small and not empty (``__path__ = ...extend_path(...)``), and sit
    near the top (``azure/__init__.py``, ``azure/mgmt/__init__.py``). Shallowest
    first, a few per wheel: each costs a small range request.
    """
    candidates: list[tuple[int, str, ZipEntry]] = []
    for entry in entries:
        path = installed_path(entry.name)
        if (
            path is not None
            and 2 <= len(path) <= 3
            and path[-1] == "__init__.py"
            and 0 < entry.size <= MAX_NAMESPACE_INIT
        ):
            candidates.append((len(path), entry.name, entry))
    candidates.sort(key=lambda item: item[:2])
    return [entry for _, _, entry in candidates[:MAX_NAMESPACE_CANDIDATES]]


def derive_names(
    files: Sequence[str],
    top_level_txt: str | None = None,
    namespace_packages_txt: str | None = None,
    *,
    legacy_namespaces: Iterable[str] = (),
    pth_files: Iterable[str] = (),
) -> WheelNames:
    """The importable names a wheel provides, from its file list.

    The file list is what gets installed; ``top_level.txt`` (setuptools'
    record of the top-level names), when present, restricts the top-level
    names to those it lists and that the file list confirms, so a stray
    directory is not taken for a package and a name in stale metadata that the
    wheel does not install is not taken either. Legacy namespace packages
    (``namespace_packages.txt``, or an ``__init__.py`` found to call
    ``extend_path``/``declare_namespace``) are treated like PEP 420 ones.
    Directories that a ``.pth`` file puts on ``sys.path`` are import roots too.
    """
    declared_ns = {
        tuple(line.strip().split("."))
        for line in (namespace_packages_txt or "").splitlines()
        if line.strip()
    } | {tuple(name.split(".")) for name in legacy_namespaces}
    roots = pth_roots(pth_files)
    modules: list[tuple[tuple[str, ...], str, bool]] = []  # (dirs, module, extension)
    regular: set[tuple[str, ...]] = set()
    for member in files:
        path = installed_path(member)
        if path is None:
            continue
        # Under a .pth root, a file is importable relative to the deepest such root.
        root = next((r for r in roots if path[: len(r)] == r and len(path) > len(r)), ())
        dirs, filename = path[len(root) : -1], path[-1]
        if "__pycache__" in dirs or not all(d.isidentifier() for d in dirs):
            continue
        found = module_name(filename)
        if found is None:
            continue
        module, extension = found
        if module == "__init__":
            if dirs and dirs not in declared_ns:
                regular.add(dirs)
            continue
        modules.append((dirs, module, extension))

    # A "container" is a regular package with no module of its own, only its
    # __init__ and perhaps subpackages (``backports/__init__.py`` beside
    # ``backports/zoneinfo/``; the placeholder ``databricks/__init__.py``): often
    # a namespace in all but name. Record it, and the level below it too.
    with_modules = {dirs for dirs, _, _ in modules}
    containers = regular - with_modules

    imports: dict[str, bool] = {}  # dotted name -> is a private pure-Python module
    namespaces: set[str] = set()
    container_names: set[str] = set()

    def add(key: tuple[str, ...], private: bool) -> None:
        dotted = ".".join(key[:MAX_DEPTH])
        imports[dotted] = imports.get(dotted, True) and private

    def first_package(dirs: tuple[str, ...]) -> tuple[str, ...] | None:
        """The first regular, non-container package on ``dirs``; notes what it crosses."""
        for depth in range(1, len(dirs) + 1):
            prefix = dirs[:depth]
            if prefix in regular and prefix not in containers:
                return prefix
            if depth < MAX_DEPTH:
                if prefix in containers:
                    container_names.add(".".join(prefix))
                    add(prefix, False)
                else:
                    namespaces.add(".".join(prefix))
        return None

    for dirs, module, extension in modules:
        key = first_package(dirs)
        if key is not None:
            add(key, False)
        else:
            key = (*dirs, module)
            add(key, not extension and any(part.startswith("_") for part in key))
    for dirs in regular:
        # Packages with no module below them are importable too (first_package
        # records containers as it crosses them).
        if first_package(dirs) == dirs:
            add(dirs, False)

    def top(name: str) -> str:
        return name.split(".", 1)[0]

    names = {
        n: p
        for n, p in imports.items()
        if top(n) not in SKIP_TOP and not any(c.startswith("__") for c in n.split("."))
    }
    if top_level_txt is not None:
        # Entries are names, sometimes paths ("google/cloud"): compare top-level names.
        listed = {
            line.strip().replace("\\", "/").replace("/", ".").split(".", 1)[0]
            for line in top_level_txt.splitlines()
            if line.strip()
        }
        confirmed = {n: p for n, p in names.items() if top(n) in listed}
        if confirmed:
            names = confirmed
    # Private pure-Python modules (_version.py, _virtualenv.py) are dropped
    # unless they are all the wheel provides; private packages (_pytest) and
    # extension modules (_cffi_backend) are real import targets and stay.
    public = sorted(n for n, private in names.items() if not private)
    kept = public or sorted(names)
    kept_ns = sorted(
        ns
        for ns in namespaces
        if top(ns) not in SKIP_TOP
        and ns not in imports
        and any(k.startswith(ns + ".") for k in kept)
    )
    kept_containers = sorted(c for c in container_names if c in kept)
    return WheelNames(tuple(kept), tuple(kept_ns), tuple(kept_containers))


# Standard-library modules removed in Python 3.12 and 3.13 (PEP 594 and
# others). Their PyPI successors (legacy-cgi, standard-imghdr, audioop-lts...)
# are real answers for a script on a newer interpreter, so they stay in the map;
# every other standard-library name is dropped from it.
REMOVED_FROM_STDLIB = frozenset(
    {
        *("asynchat", "asyncore", "distutils", "imp", "smtpd"),  # 3.12
        *("aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "lib2to3"),  # 3.13
        *("mailcap", "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd"),
        *("sunau", "telnetlib", "uu", "xdrlib"),
    }
)

# Added after 3.11, the interpreter this script runs on; never PyPI's to claim.
ADDED_TO_STDLIB = frozenset({"annotationlib", "compression", "_colorize", "_pyrepl"})


# ----------------------------------------------------------- wheel choice --


def _wheel_tags(filename: str) -> tuple[set[str], set[str], set[str]] | None:
    parts = filename.removesuffix(".whl").split("-")
    if len(parts) not in (5, 6):
        return None
    py, abi, plat = parts[-3:]
    return set(py.split(".")), set(abi.split(".")), set(plat.split("."))


def wheel_preference(filename: str) -> int:
    """Lower is better: py3-none-any, then manylinux x86_64 cp311/abi3, then others."""
    tags = _wheel_tags(filename)
    if tags is None:
        return 99
    py, abi, plat = tags
    pure = "any" in plat and "none" in abi
    manylinux_x86 = any(p.startswith("manylinux") and p.endswith("x86_64") for p in plat)
    if pure and any(p.startswith("py3") for p in py):
        return 0
    if manylinux_x86 and ("cp311" in py or "abi3" in abi):
        return 1
    if manylinux_x86:
        return 2
    if pure:
        return 3
    if any(p.startswith(("manylinux", "musllinux", "linux")) for p in plat):
        return 4
    return 5


def choose_wheel(files: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The wheel to read among one release's files, or None if it has none."""
    wheels = [f for f in files if str(f.get("filename", "")).endswith(".whl")]
    if not wheels:
        return None
    return min(
        wheels,
        key=lambda f: (bool(f.get("yanked")), wheel_preference(f["filename"]), f["filename"]),
    )


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------ index --


def _pip_index_url() -> str | None:
    commands = [[sys.executable, "-m", "pip"]]
    if pip := shutil.which("pip"):
        commands.append([pip])
    for command in commands:
        try:
            done = subprocess.run(
                [*command, "config", "get", "global.index-url"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
        if "No module named pip" not in done.stderr:
            return None  # pip ran and has no index-url configured
    return None


def configured_simple_index(explicit: str | None = None) -> tuple[str, str]:
    """``(simple index URL, where it came from)``: the user's primary index only."""
    if explicit:
        return explicit, "--index-url"
    for var in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        if value := os.environ.get(var, "").strip():
            return value, var
    if pip_value := _pip_index_url():
        return pip_value, "pip config global.index-url"
    import pypi_simple  # dev dependency: the default endpoint, so no host is written here

    return pypi_simple.PYPI_SIMPLE_ENDPOINT, "pypi_simple.PYPI_SIMPLE_ENDPOINT"


def json_api_base(simple_url: str) -> str:
    """The JSON API base for a simple index URL: ``.../simple/`` -> ``.../pypi/``."""
    parsed = urllib.parse.urlsplit(simple_url)
    if parsed.scheme not in ("http", "https"):
        raise SystemExit(f"the primary index must be http(s) for its JSON API, not {parsed.scheme}")
    path = parsed.path.rstrip("/")
    if not path.endswith("/simple"):
        raise SystemExit(
            "cannot derive the JSON API from the primary index URL (it does not end with "
            "/simple/); pass --index-url"
        )
    return urllib.parse.urlunsplit(parsed._replace(path=path[: -len("simple")] + "pypi/"))


class HttpError(Exception):
    """A request failed for good (after retries); ``status`` is the HTTP status or 0."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Http:
    """GET with retries and exponential backoff; counts requests and bytes.

    Each thread keeps one connection per host alive: a new connection costs a
    name lookup and a TLS handshake, which dominate the cost of a small range
    request. Behind a proxy (the usual ``*_proxy`` variables) requests go
    through urllib instead, which knows how to use one.
    """

    RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
    REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})

    def __init__(self, *, retries: int = 5, timeout: float = 60.0) -> None:
        self._local = threading.local()
        self._retries = retries
        self._timeout = timeout
        self._proxies = urllib.request.getproxies()
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def _connections(self) -> dict[tuple[str, str, int | None], http.client.HTTPConnection]:
        connections: dict[tuple[str, str, int | None], http.client.HTTPConnection] | None
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        return connections

    def _via_proxy(self, parts: urllib.parse.SplitResult) -> bool:
        return parts.scheme in self._proxies and not urllib.request.proxy_bypass(
            parts.hostname or ""
        )

    def _once(self, url: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        """One request (following redirects); HTTP errors come back as statuses."""
        for _ in range(6):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise HttpError("refusing a non-HTTP URL")
            if self._via_proxy(parts):
                return self._once_urllib(url, headers)
            key = (parts.scheme, parts.hostname or "", parts.port)
            connections = self._connections()
            connection = connections.get(key)
            if connection is None:
                kind = (
                    http.client.HTTPSConnection
                    if parts.scheme == "https"
                    else http.client.HTTPConnection
                )
                connection = kind(key[1], key[2], timeout=self._timeout)
                connections[key] = connection
            sent = {"User-Agent": USER_AGENT, **headers}
            if parts.username is not None:
                user = urllib.parse.unquote(parts.username)
                password = urllib.parse.unquote(parts.password or "")
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                sent["Authorization"] = f"Basic {token}"
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                connection.request("GET", target, headers=sent)
                response = connection.getresponse()
                if response.status in self.REDIRECT_STATUS:
                    response.read()
                    url = urllib.parse.urljoin(url, response.getheader("Location", ""))
                    continue
                if "Range" in headers and response.status == 200:
                    raise HttpError("the server ignores range requests")
                body = response.read()
                if response.will_close:
                    connections.pop(key).close()
            except BaseException:
                connections.pop(key, None)
                connection.close()
                raise
            return response.status, response.headers, body
        raise HttpError("too many redirects")

    def _once_urllib(self, url: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        request = urllib.request.Request(  # noqa: S310 (scheme checked by the caller)
            url, headers={"User-Agent": USER_AGENT, **headers}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                if "Range" in headers and response.status == 200:
                    raise HttpError("the server ignores range requests")
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, b""

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        """``(status, headers, body)`` of a 2xx answer; :class:`HttpError` otherwise.

        Retries network errors and transient statuses with exponential backoff
        and jitter. A range request answered with the whole file (200) is
        refused without reading the body: this script never downloads wheels.
        """
        headers = headers or {}
        delay = 0.5
        for attempt in range(self._retries + 1):
            try:
                status, answer_headers, body = self._once(url, headers)
            except (http.client.HTTPException, OSError) as exc:
                if attempt == self._retries:
                    raise HttpError(f"network error: {type(exc).__name__}") from None
                wait = delay
            else:
                if 200 <= status < 300:
                    with self._lock:
                        self.requests += 1
                        self.bytes += len(body)
                    return status, answer_headers, body
                if status not in self.RETRY_STATUS or attempt == self._retries:
                    raise HttpError(f"HTTP {status}", status)
                retry_after = (answer_headers.get("Retry-After") or "").strip()
                wait = float(retry_after) if retry_after.isdigit() else delay
            time.sleep(wait + random.uniform(0, wait / 2))  # noqa: S311 (jitter, not crypto)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def range_fetcher(self, url: str) -> RangeFetch:
        """A :data:`RangeFetch` over ``url``, refusing servers that ignore ranges."""

        def fetch(start: int, end: int) -> bytes:
            if start >= end:
                return b""
            _, headers, body = self.get(url, {"Range": f"bytes={start}-{end - 1}"})
            got = re.match(r"bytes (\d+)-(\d+)/", headers.get("Content-Range", ""))
            if not got or int(got.group(1)) != start:
                raise HttpError("unexpected Content-Range")
            return bytes(body[: end - start])

        return fetch


# ------------------------------------------------------------------ cache --


class Cache:
    """JSON files under a directory; writes are atomic, so threads can share it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, kind: str, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)
        return self.root / kind / safe[:2] / f"{safe}.json"

    def get(self, kind: str, key: str) -> Any:
        """The cached value, or None."""
        try:
            return json.loads(self._path(kind, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, kind: str, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serializable) under ``key``."""
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(value, separators=(",", ":")), encoding="utf-8")
        tmp.replace(path)


# --------------------------------------------------------------- projects --


@dataclass(slots=True)
class ProjectResult:
    """What reading one project gave: its names, or why it was skipped."""

    name: str
    rank: int
    version: str = ""
    wheel: str = ""
    imports: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    skipped: str = ""
    read: bool = False


def project_release(http: Http, cache: Cache, api: str, name: str, refresh: bool) -> Any:
    """The latest release's version and files (cached, trimmed from the project JSON)."""
    cached = None if refresh else cache.get("projects", name)
    if cached is not None:
        return cached
    url = urllib.parse.urljoin(api, f"{urllib.parse.quote(name)}/json")
    try:
        _, _, body = http.get(url, {"Accept": "application/json"})
    except HttpError as exc:
        if exc.status == 404:
            value: Any = {"missing": True}
            cache.put("projects", name, value)
            return value
        raise
    data = json.loads(body)
    files = [
        {
            "filename": f["filename"],
            # Wheel URLs may be relative to the JSON document.
            "url": urllib.parse.urljoin(url, f["url"]),
            "size": f.get("size"),
            "sha256": (f.get("digests") or {}).get("sha256", ""),
            "yanked": bool(f.get("yanked")),
        }
        for f in data.get("urls") or []
    ]
    value = {"version": data["info"]["version"], "files": files}
    cache.put("projects", name, value)
    return value


LISTING_VERSION = 3


def wheel_listing(http: Http, cache: Cache, wheel: dict[str, Any]) -> Any:
    """What :func:`derive_names` needs from one wheel (cached by the wheel's sha256).

    Its member names; ``top_level.txt`` and ``namespace_packages.txt``; root
    ``.pth`` files; and which candidate ``__init__.py`` files declare legacy
    namespace packages. Each of those small members costs a range request only
    when it is not already in the fetched tail (dist-info usually is).
    """
    key = wheel["sha256"] or hashlib.sha256(wheel["url"].encode()).hexdigest()
    cached = cache.get("wheels", key)
    if cached is not None and cached.get("v") == LISTING_VERSION:
        return cached
    size = wheel.get("size")
    if not isinstance(size, int) or size <= 0:
        _, headers, _ = http.get(wheel["url"], {"Range": "bytes=0-0"})
        got = re.match(r"bytes \d+-\d+/(\d+)", headers.get("Content-Range", ""))
        if not got:
            raise HttpError("wheel size unknown")
        size = int(got.group(1))
    archive = RemoteZip(http.range_fetcher(wheel["url"]), size)
    entries = archive.entries()
    value: dict[str, Any] = {
        "v": LISTING_VERSION,
        "filename": wheel["filename"],
        "files": [e.name for e in entries],
    }
    for member in ("top_level.txt", "namespace_packages.txt"):
        found = [
            e for e in entries if e.name.count("/") == 1 and e.name.endswith(f".dist-info/{member}")
        ]
        if found:
            value[member] = archive.read_member(found[0]).decode("utf-8", errors="replace")
    value["pth"] = [
        archive.read_member(e).decode("utf-8", errors="replace")
        for e in entries
        if "/" not in e.name and e.name.endswith(".pth") and e.size <= MAX_PTH
    ]
    value["legacy_namespaces"] = [
        ".".join((installed_path(e.name) or ())[:-1])
        for e in namespace_init_candidates(entries)
        if NAMESPACE_INIT_RE.search(archive.read_member(e))
    ]
    cache.put("wheels", key, value)
    return value


def read_project(
    http: Http, cache: Cache, api: str, name: str, rank: int, refresh: bool
) -> ProjectResult:
    """Read one project: latest release -> one wheel -> its importable names."""
    result = ProjectResult(name, rank)
    try:
        release = project_release(http, cache, api, name, refresh)
        if release.get("missing"):
            result.skipped = "not found in the index"
            return result
        result.version = release["version"]
        wheel = choose_wheel(release["files"])
        if wheel is None:
            result.skipped = (
                "no wheel in the latest release (sdist only)"
                if release["files"]
                else "no files in the latest release"
            )
            return result
        result.wheel = wheel["filename"]
        listing = wheel_listing(http, cache, wheel)
    except HttpError as exc:
        result.skipped = f"fetch failed: {exc}"
        return result
    except (ZipFormatError, zlib.error, struct.error, ValueError, KeyError) as exc:
        result.skipped = f"unreadable wheel: {type(exc).__name__}: {exc}"
        return result
    result.read = True
    names = derive_names(
        listing["files"],
        listing.get("top_level.txt"),
        listing.get("namespace_packages.txt"),
        legacy_namespaces=listing.get("legacy_namespaces", ()),
        pth_files=listing.get("pth", ()),
    )
    result.imports, result.namespaces = names.imports, names.namespaces
    result.containers = names.containers
    if not names.imports:
        result.skipped = "wheel provides no importable names"
    return result


# ------------------------------------------------------------------ output --


def read_csv(path: Path, top: int) -> list[tuple[str, int]]:
    """``[(normalized project, rank)]`` for the first ``top`` rows (rank is 1-based)."""
    projects: list[tuple[str, int]] = []
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8") as handle:
        for rank, row in enumerate(csv.DictReader(handle), start=1):
            if rank > top:
                break
            name = normalize(row["project"])
            if name not in seen:
                seen.add(name)
                projects.append((name, rank))
    return projects


def data_date(csv_path: Path) -> str | None:
    """The CSV's data date, as stated in the README beside it ("data of YYYY-MM-DD")."""
    readme = csv_path.parent / "README.md"
    with contextlib.suppress(OSError):
        for line in readme.read_text(encoding="utf-8").splitlines():
            if csv_path.name in line and (found := re.search(r"data of (\d{4}-\d\d-\d\d)", line)):
                return found.group(1)
    return None


def _line(key: str, value: Any) -> str:
    return f"{json.dumps(key)}: {json.dumps(value, separators=(', ', ': '))}"


def render_map(header: dict[str, Any], namespaces: Sequence[str], imports: dict[str, Any]) -> str:
    """The data file: valid JSON, one header field, namespace or import per line."""
    lines = ["{"]
    lines += [_line(k, v) + "," for k, v in header.items()]
    lines.append('"namespaces": [')
    lines.append(",\n".join(json.dumps(ns) for ns in namespaces))
    lines.append("],")
    lines.append('"imports": {')
    lines.append(",\n".join(_line(k, imports[k]) for k in sorted(imports)))
    lines.append("}")
    lines.append("}")
    return "\n".join(line for line in lines if line) + "\n"


def build_outputs(
    results: Sequence[ProjectResult],
    header: dict[str, Any],
    *,
    skipped_list: str = DEFAULT_SKIPPED.name,
) -> tuple[str, str, dict[str, Any]]:
    """``(import map text, skipped list text, summary)`` from every project's result."""
    stdlib = (frozenset(sys.stdlib_module_names) | ADDED_TO_STDLIB) - REMOVED_FROM_STDLIB
    providers: dict[str, list[tuple[str, int]]] = {}
    dropped_stdlib: dict[str, set[str]] = {}
    real: set[str] = set()  # installed as a package with modules, or as a module
    users: dict[str, list[ProjectResult]] = {}  # containers and namespace directories
    for result in sorted(results, key=lambda r: r.rank):
        for name in result.imports:
            if name.split(".", 1)[0] in stdlib:
                dropped_stdlib.setdefault(name.split(".", 1)[0], set()).add(result.name)
                continue
            providers.setdefault(name, []).append((result.name, result.rank))
            if name in result.containers:
                users.setdefault(name, []).append(result)
            else:
                real.add(name)
        for name in result.namespaces:
            if name.split(".", 1)[0] not in stdlib:
                users.setdefault(name, []).append(result)

    def shared(name: str) -> bool:
        """Whether the most downloaded user of a container provides under half of what
        is under it: then it is a shared namespace (backports, nvidia), not one
        project published in variants (tensorflow, tensorflow-cpu)."""
        below = {r.name: {k for k in r.imports if k.startswith(name + ".")} for r in users[name]}
        union = set().union(*below.values())
        return bool(union) and 2 * len(below[users[name][0].name]) <= len(union)

    # Namespace boundaries: lookups never fall back through them. A name some
    # wheel installs as a real package is none, even if other wheels drop files
    # into it (PyQt5-Qt5 into PyQt5, twisted plugins into twisted).
    namespaces = {
        name for name in users if name not in real and (name not in providers or shared(name))
    }
    imports = {k: [[d, r] for d, r in v] for k, v in providers.items() if k not in namespaces}
    skipped = sorted((r for r in results if r.skipped), key=lambda r: r.rank)
    # Failures carry details (status, exception) in the list; the header counts kinds.
    reasons = Counter(r.skipped.split(":", 1)[0] for r in skipped)
    read = sum(1 for r in results if r.read)
    full_header = {
        **header,
        "projects_read": read,
        "projects_with_names": sum(1 for r in results if r.imports),
        "skipped": {
            "count": len(skipped),
            "reasons": dict(reasons.most_common()),
            "list": skipped_list,
        },
        "stdlib_names_dropped": {k: sorted(v) for k, v in sorted(dropped_stdlib.items())},
    }
    skipped_text = "[\n" + ",\n".join(json.dumps([r.name, r.rank, r.skipped]) for r in skipped)
    summary = {"read": read, "skipped": len(skipped), "imports": len(imports)}
    return (
        render_map(full_header, sorted(namespaces), imports),
        skipped_text + "\n]\n",
        summary,
    )


# --------------------------------------------------------------------- main --


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV, help="download CSV")
    parser.add_argument("--top", type=int, default=5000, help="how many projects (default 5000)")
    parser.add_argument("--jobs", type=int, default=16, help="concurrent requests (default 16)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="import map to write")
    parser.add_argument("--skipped-out", type=Path, default=DEFAULT_SKIPPED)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "jhansi"
        / "gen-import-map",
    )
    parser.add_argument("--refresh", action="store_true", help="refetch project JSON")
    parser.add_argument("--index-url", help="simple index URL (default: uv/pip configuration)")
    parser.add_argument("--data-date", help="the CSV's data date (default: from its README)")
    args = parser.parse_args(argv)

    date = args.data_date or data_date(args.csv)
    if not date:
        parser.error("cannot find the CSV's data date in the README beside it: pass --data-date")
    simple, origin = configured_simple_index(args.index_url)
    api = json_api_base(simple)
    print(f"index: the primary index from {origin}; JSON API derived from it", file=sys.stderr)

    projects = read_csv(args.csv, args.top)
    http = Http()
    cache = Cache(args.cache_dir)
    started = time.monotonic()
    results: list[ProjectResult] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(read_project, http, cache, api, name, rank, args.refresh)
            for name, rank in projects
        ]
        last = 0.0
        for done, future in enumerate(as_completed(futures), start=1):
            results.append(future.result())
            now = time.monotonic()
            if now - last >= 2 or done == len(futures):
                last = now
                skipped = sum(1 for r in results if r.skipped)
                print(
                    f"[{done}/{len(futures)}] {done - skipped} mapped, {skipped} skipped, "
                    f"{http.requests} requests, {http.bytes / 1e6:.1f} MB, "
                    f"{now - started:.0f}s",
                    file=sys.stderr,
                )

    header = {
        "generator": GENERATOR + (f" --top {args.top}" if args.top != 5000 else ""),
        "source": {
            "file": args.csv.name,
            "date": date,
            "sha256": hashlib.sha256(args.csv.read_bytes()).hexdigest(),
        },
        "top": args.top,
        "distribution_names": "PEP 503 normalized; rank is the 1-based row in the source",
    }
    text, skipped_text, summary = build_outputs(results, header, skipped_list=args.skipped_out.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    args.skipped_out.write_text(skipped_text, encoding="utf-8")
    elapsed = time.monotonic() - started
    print(
        f"done in {elapsed:.0f}s: {summary['read']} wheels read, {summary['skipped']} skipped, "
        f"{summary['imports']} import names; {args.out} ({args.out.stat().st_size} bytes)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
