"""Supply-chain checks against the real package index, on a lock made by the real uv.

``requests==2.32.3`` locks to five real projects (requests, urllib3, idna,
certifi, charset-normalizer): their metadata comes from the index (PEP 658
core-metadata files), the SBOM is built from it and checked with the strict
CycloneDX 1.6 validator, and their release history from the simple API.
The index is whatever the user's uv or pip configuration names.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jhansi.deps.lock import lock
from jhansi.deps.pylock import LockResult, canonical_name
from jhansi.deps.target import Target
from jhansi.report import NullReporter
from jhansi.supply.licenses import LicenseRules, evaluate, license_of
from jhansi.supply.metadata import PackageMetadata, metadata_for
from jhansi.supply.provenance import check_provenance, first_release
from jhansi.supply.sbom import TargetComponent, build_sbom, purl_of
from tests.unit.supply.index_server import unreachable

pytestmark = pytest.mark.network

EXPECTED = {"requests", "urllib3", "idna", "certifi", "charset-normalizer"}


def host_target() -> Target:
    libc, libc_version = platform.libc_ver()
    return Target(
        python_version=platform.python_version(),
        implementation=sys.implementation.name,
        machine=platform.machine(),
        libc=libc,
        libc_version=libc_version,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("supply-index")


@pytest.fixture(scope="module")
def requests_lock(work: Path) -> LockResult:
    return lock(
        ["requests==2.32.3"], host_target(), lock_file=work / "pylock.toml", reporter=NullReporter()
    )


@pytest.fixture(scope="module")
def metadata(requests_lock: LockResult, work: Path) -> dict[str, PackageMetadata]:
    return metadata_for(requests_lock.packages, environment=None, cache_dir=work / "cache")


def test_the_lock_is_the_expected_stack(requests_lock: LockResult) -> None:
    assert {canonical_name(p.name) for p in requests_lock.packages} == EXPECTED


def test_metadata_comes_from_the_index_then_from_the_cache(
    requests_lock: LockResult, metadata: dict[str, PackageMetadata], work: Path
) -> None:
    assert set(metadata) == EXPECTED
    assert {m.source for m in metadata.values()} == {"index"}, metadata
    requests = metadata["requests"]
    assert (requests.name, requests.version) == ("requests", "2.32.3")
    assert any(r.startswith("urllib3") for r in requests.requires_dist)
    warm = metadata_for(
        requests_lock.packages, environment=None, cache_dir=work / "cache", index_url=unreachable()
    )
    assert {m.source for m in warm.values()} == {"cache"}


def test_licences_of_the_real_packages(metadata: dict[str, PackageMetadata]) -> None:
    infos = {name: license_of(meta) for name, meta in metadata.items()}
    assert infos["requests"].expression == "Apache-2.0"
    for name, info in infos.items():
        assert info.expression is not None, (name, info)
    # Every one is a permissive licence: an allow list of those passes them all.
    rules = LicenseRules(
        allow=("MIT", "Apache-2.0", "BSD-3-Clause", "MPL-2.0", "ISC"), unknown="deny"
    )
    assert {name: evaluate(info, rules).ok for name, info in infos.items()} == dict.fromkeys(
        EXPECTED, True
    )


def test_the_sbom_lists_every_locked_package(
    requests_lock: LockResult, metadata: dict[str, PackageMetadata]
) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    document = build_sbom(
        script_name="fetch.py",
        script_bytes=b"import requests\n",
        lock=requests_lock,
        metadata=metadata,
        target_component=TargetComponent(
            "interpreter", sys.implementation.name, platform.python_version()
        ),
        tools={"jhansi": "test", "uv": "test"},
    )
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(document.decode()) is None
    data = json.loads(document)
    found = {c["bom-ref"]: c for c in data["components"]}
    for package in requests_lock.packages:
        component = found[purl_of(package.name, package.version)]
        assert component["purl"] == f"pkg:pypi/{canonical_name(package.name)}@{package.version}"
        assert {f"sha256:{h['content']}" for h in component["hashes"]} == set(package.hashes)
        assert component["licenses"], component
    assert found["pkg:pypi/requests@2.32.3"]["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    graph = {d["ref"]: set(d.get("dependsOn", [])) for d in data["dependencies"]}
    assert "pkg:pypi/requests@2.32.3" in graph["jhansi:script"]
    assert {r.split("@")[0] for r in graph["pkg:pypi/requests@2.32.3"]} == {
        f"pkg:pypi/{n}" for n in EXPECTED - {"requests"}
    }


def test_provenance_of_long_established_packages(requests_lock: LockResult, work: Path) -> None:
    first = first_release("requests", cache_dir=work / "cache")
    assert first is not None
    assert first < datetime(2012, 1, 1, tzinfo=UTC)
    findings = check_provenance(
        requests_lock.packages,
        min_age_days=30,
        allow=(),
        now=datetime.now(UTC),
        cache_dir=work / "cache",
    )
    assert findings == ()


def test_a_package_five_days_after_its_real_first_release_is_flagged(
    requests_lock: LockResult, work: Path
) -> None:
    # The clock is pinned to five days after idna's real first upload: as young, to the
    # rule, as a project registered last week.
    idna = next(p for p in requests_lock.packages if canonical_name(p.name) == "idna")
    born = first_release("idna", cache_dir=work / "fresh-cache")
    assert born is not None
    now = born + timedelta(days=5, hours=1)
    findings = check_provenance(
        [idna], min_age_days=30, allow=(), now=now, cache_dir=work / "fresh-cache"
    )
    assert [(f.package, f.rule) for f in findings] == [("idna", "package-age")]
    assert findings[0].evidence == (
        f"first released {born.date().isoformat()} (5 days ago; policy minimum 30)"
    )
    assert (
        check_provenance(
            [idna], min_age_days=30, allow=("IDNA",), now=now, cache_dir=work / "fresh-cache"
        )
        == ()
    )
