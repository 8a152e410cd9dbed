"""jhansi.supply.metadata: dist-info parsing, the index (a real server on loopback), the cache."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from jhansi.deps.pylock import LockedPackage, LockedWheel
from jhansi.supply.metadata import (
    PackageMetadata,
    configured_index_url,
    json_api_base,
    metadata_for,
    parse_metadata,
)
from tests.unit.supply.index_server import SIMPLE_JSON, Index, serve, unreachable

DEMO_METADATA = b"""\
Metadata-Version: 2.4
Name: Demo_Pkg
Version: 1.2.3
Summary: A demonstration package
License-Expression: MIT OR Apache-2.0
Classifier: Programming Language :: Python :: 3
Classifier: License :: OSI Approved :: MIT License
Requires-Dist: idna>=2.5
Requires-Dist: PySocks!=1.5.7,>=1.5.6; extra == "socks"

The long description, which is not a header: License: GPL
"""

LEGACY_METADATA = b"""\
Metadata-Version: 2.1
Name: legacy
Version: 0.9
License: MIT License
        \n        Copyright (c) 2010 Someone
        \n        Permission is hereby granted...
Classifier: License :: OSI Approved :: MIT License
"""


def wheel_package(name: str, version: str, filename: str) -> LockedPackage:
    return LockedPackage(
        name=name,
        version=version,
        wheels=(LockedWheel(filename, f"https://files.invalid/{filename}", ("sha256:00",)),),
    )


DEMO = wheel_package("demo-pkg", "1.2.3", "demo_pkg-1.2.3-py3-none-any.whl")


@pytest.fixture
def index() -> Iterator[Index]:
    yield from serve()


def publish(index: Index, metadata: bytes, *, digest: str | None = None) -> None:
    """Serve DEMO's simple page (PEP 691 + PEP 714 core-metadata digest) and its metadata."""
    filename = DEMO.wheels[0].filename
    index.add(
        "/simple/demo-pkg/",
        {
            "meta": {"api-version": "1.1"},
            "name": "demo-pkg",
            "versions": ["1.2.3"],
            "files": [
                {
                    "filename": filename,
                    "url": f"{index.base}/files/{filename}",
                    "hashes": {"sha256": "00"},
                    "core-metadata": {"sha256": digest or hashlib.sha256(metadata).hexdigest()},
                    "upload-time": "2026-01-02T03:04:05.000000Z",
                }
            ],
        },
        content_type=SIMPLE_JSON,
    )
    index.add(f"/files/{filename}.metadata", metadata)


def test_parse_metadata_reads_the_headers_only() -> None:
    meta = parse_metadata(DEMO_METADATA, source="environment")
    assert meta == PackageMetadata(
        name="demo-pkg",
        version="1.2.3",
        license_expression="MIT OR Apache-2.0",
        license=None,
        classifiers=(
            "Programming Language :: Python :: 3",
            "License :: OSI Approved :: MIT License",
        ),
        summary="A demonstration package",
        requires_dist=("idna>=2.5", 'PySocks!=1.5.7,>=1.5.6; extra == "socks"'),
        source="environment",
    )


def test_a_license_field_holding_a_whole_text_keeps_its_first_line() -> None:
    assert parse_metadata(LEGACY_METADATA, source="index").license == "MIT License"


def test_metadata_from_an_installed_environment_needs_no_index(tmp_path: Path) -> None:
    env = tmp_path / "env"
    for directory, data in (
        ("Demo_Pkg-1.2.3.dist-info", DEMO_METADATA),
        ("legacy-0.9.dist-info", LEGACY_METADATA),
    ):
        (env / directory).mkdir(parents=True)
        (env / directory / "METADATA").write_bytes(data)
    packages = [DEMO, wheel_package("Legacy", "0.9", "legacy-0.9-py3-none-any.whl")]
    found = metadata_for(
        packages, environment=env, cache_dir=tmp_path / "cache", index_url=unreachable()
    )
    assert list(found) == ["demo-pkg", "legacy"]
    assert found["demo-pkg"].license_expression == "MIT OR Apache-2.0"
    assert found["legacy"].license == "MIT License"
    assert {m.source for m in found.values()} == {"environment"}


def test_index_metadata_is_fetched_verified_and_then_served_from_the_cache(
    index: Index, tmp_path: Path
) -> None:
    publish(index, DEMO_METADATA)
    seen: list[tuple[int, int]] = []
    cache = tmp_path / "cache"
    cold = metadata_for(
        [DEMO],
        environment=None,
        cache_dir=cache,
        index_url=index.simple,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert cold["demo-pkg"].source == "index"
    assert cold["demo-pkg"].license_expression == "MIT OR Apache-2.0"
    assert index.requests == [
        "/simple/demo-pkg/",
        "/files/demo_pkg-1.2.3-py3-none-any.whl.metadata",
    ]
    assert seen[-1] == (1, 1)

    warm = metadata_for([DEMO], environment=None, cache_dir=cache, index_url=unreachable())
    assert warm["demo-pkg"].source == "cache"
    assert warm["demo-pkg"] == PackageMetadata(**{**_fields(cold["demo-pkg"]), "source": "cache"})
    assert len(index.requests) == 2


def _fields(meta: PackageMetadata) -> dict[str, object]:
    return {name: getattr(meta, name) for name in PackageMetadata.__slots__}


def test_a_metadata_file_that_does_not_match_its_digest_is_not_used(
    index: Index, tmp_path: Path
) -> None:
    publish(index, DEMO_METADATA, digest="0" * 64)
    found = metadata_for(
        [DEMO], environment=None, cache_dir=tmp_path / "cache", index_url=index.simple
    )
    assert found["demo-pkg"].source == "unavailable"
    assert "does not match its digest" in (found["demo-pkg"].problem or "")
    # Nothing was cached: the next call asks again.
    assert not (tmp_path / "cache" / "metadata").exists() or not any(
        (tmp_path / "cache" / "metadata").iterdir()
    )


def test_without_a_core_metadata_file_the_json_api_answers(index: Index, tmp_path: Path) -> None:
    index.add(
        "/simple/demo-pkg/",
        {"meta": {"api-version": "1.0"}, "name": "demo-pkg", "files": []},
        content_type=SIMPLE_JSON,
    )
    index.add(
        "/pypi/demo-pkg/1.2.3/json",
        {
            "info": {
                "name": "Demo-Pkg",
                "version": "1.2.3",
                "license": "Apache License, Version 2.0",
                "license_expression": None,
                "classifiers": ["License :: OSI Approved :: Apache Software License"],
                "summary": "From JSON",
                "requires_dist": ["idna>=2.5"],
            }
        },
        content_type="application/json",
    )
    found = metadata_for(
        [DEMO], environment=None, cache_dir=tmp_path / "cache", index_url=index.simple
    )
    meta = found["demo-pkg"]
    assert (meta.source, meta.license, meta.summary, meta.requires_dist) == (
        "index",
        "Apache License, Version 2.0",
        "From JSON",
        ("idna>=2.5",),
    )


def test_an_unreachable_index_gives_unavailable_metadata_not_an_error(tmp_path: Path) -> None:
    found = metadata_for(
        [DEMO], environment=None, cache_dir=tmp_path / "cache", index_url=unreachable(), timeout=5
    )
    meta = found["demo-pkg"]
    assert meta.source == "unavailable"
    assert (meta.license, meta.license_expression) == (None, None)
    assert "did not answer" in (meta.problem or "")


def test_json_api_base_follows_the_simple_endpoint() -> None:
    assert json_api_base("https://mirror.invalid/simple/") == "https://mirror.invalid/pypi"
    assert json_api_base("https://mirror.invalid/root/simple") == "https://mirror.invalid/root/pypi"
    assert json_api_base("https://mirror.invalid/+simple/") is None
    assert json_api_base("file:///opt/pypi/simple") is None


@pytest.fixture
def no_index_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL", "UV_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_DIRS", "/nonexistent")


@pytest.mark.usefixtures("no_index_settings")
def test_configured_index_url_follows_the_users_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pypi_simple import PYPI_SIMPLE_ENDPOINT

    if Path("/etc/uv/uv.toml").exists():
        pytest.skip("a system uv.toml would be read")  # never the case on CI
    assert configured_index_url() == PYPI_SIMPLE_ENDPOINT
    config = tmp_path / "xdg-config" / "uv" / "uv.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[[index]]\nurl = "https://user.invalid/simple/"\ndefault = true\n')
    assert configured_index_url() == "https://user.invalid/simple/"
    monkeypatch.setenv("PIP_INDEX_URL", "https://pip.invalid/simple/")
    assert configured_index_url() == "https://pip.invalid/simple/"
    monkeypatch.setenv("UV_DEFAULT_INDEX", "https://uv.invalid/simple/")
    assert configured_index_url() == "https://uv.invalid/simple/"


def make_wheel(metadata: bytes) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("demo_pkg/__init__.py", "")
        archive.writestr("demo_pkg-1.2.3.dist-info/METADATA", metadata)
        archive.writestr("demo_pkg-1.2.3.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return buffer.getvalue()


@pytest.mark.parametrize("tampered", [False, True])
def test_last_the_locked_wheel_itself_is_read_if_it_matches_the_lock(
    index: Index, tmp_path: Path, tampered: bool
) -> None:
    """An index with neither PEP 658 files nor a JSON API (some mirrors)."""
    wheel = make_wheel(DEMO_METADATA)
    filename = DEMO.wheels[0].filename
    index.add(
        "/simple/demo-pkg/",
        {
            "meta": {"api-version": "1.0"},
            "name": "demo-pkg",
            "files": [
                {"filename": filename, "url": f"{index.base}/files/{filename}", "hashes": {}}
            ],
        },
        content_type=SIMPLE_JSON,
    )
    index.add(f"/files/{filename}", wheel + (b"x" if tampered else b""))
    locked = LockedPackage(
        "demo-pkg",
        "1.2.3",
        (
            LockedWheel(
                filename,
                f"{index.base}/files/{filename}",
                (f"sha256:{hashlib.sha256(wheel).hexdigest()}",),
                len(wheel),
            ),
        ),
    )
    meta = metadata_for(
        [locked], environment=None, cache_dir=tmp_path / "cache", index_url=index.simple
    )["demo-pkg"]
    assert f"/files/{filename}.metadata" in index.requests
    assert "/pypi/demo-pkg/1.2.3/json" in index.requests
    if tampered:
        assert meta.source == "unavailable"
        assert "does not match the lock's digest" in (meta.problem or "")
    else:
        assert (meta.source, meta.license_expression) == ("index", "MIT OR Apache-2.0")


def test_non_ascii_metadata_values_are_text() -> None:
    from jhansi.supply.metadata import parse_metadata

    data = (
        "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
        "License: Copyright © 2024 Zoë Müller\n  All rights reserved.\n"
        "Author: Zoë\n\n"
    ).encode()
    meta = parse_metadata(data, source="index")
    assert meta.license == "Copyright © 2024 Zoë Müller"
