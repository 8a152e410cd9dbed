"""Offline OSV data: range semantics, the three forms of data, the index cache, real data."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from jhansi.errors import ConfigError, ExitCode
from jhansi.supply.vulns import make_source
from jhansi.supply.vulns.interface import AuditResult, Package
from jhansi.supply.vulns.osv import OfflineOsvSource, load_index
from tests.conftest import absent
from tests.osv_server import SHARED_ADVISORY_DB


def _record(
    ident: str, package: str, *, modified: str = "2023-01-01T00:00:00Z", **extra: Any
) -> dict[str, Any]:
    affected: dict[str, Any] = {"package": {"name": package, "ecosystem": "PyPI"}}
    for key in ("ranges", "versions"):
        if key in extra:
            affected[key] = extra.pop(key)
    return {
        "id": ident,
        "modified": modified,
        "aliases": extra.pop("aliases", []),
        "details": extra.pop("details", f"{ident} details.\nSecond line."),
        "affected": [affected],
        **extra,
    }


def _eco(*events: dict[str, str]) -> dict[str, Any]:
    return {"type": "ECOSYSTEM", "events": list(events)}


RECORDS: list[dict[str, Any]] = [
    _record(
        "TEST-1",
        "Simple_Pkg",
        aliases=["CVE-2000-1"],
        ranges=[_eco({"introduced": "0"}, {"fixed": "1.0"})],
        summary="Simple: before 1.0",
    ),
    # Several ranges, several introduced/fixed pairs in one range, events out of order.
    _record(
        "TEST-2",
        "multi",
        ranges=[
            _eco({"fixed": "1.2"}, {"introduced": "1.0"}),
            _eco(
                {"introduced": "3.5"},
                {"fixed": "3.1"},
                {"fixed": "3.6"},
                {"introduced": "3.0"},
            ),
            {
                "type": "GIT",
                "repo": "https://example.invalid/repo",
                "events": [{"introduced": "0"}, {"fixed": "abc123"}],
            },
        ],
    ),
    _record(
        "TEST-3",
        "lastaff",
        ranges=[_eco({"introduced": "1.0"}, {"last_affected": "1.5"})],
    ),
    _record("TEST-4", "explicit", versions=["0.9", "4.01"]),
    _record("TEST-5", "limited", ranges=[_eco({"introduced": "0"}, {"limit": "2.0"})]),
    _record(
        "TEST-6",
        "simple-pkg",
        ranges=[_eco({"introduced": "0"}, {"fixed": "9.0"})],
        withdrawn="2023-02-01T00:00:00Z",
    ),
    {
        "id": "TEST-7",
        "modified": "2023-01-01T00:00:00Z",
        "affected": [
            {
                "package": {"name": "simple-pkg", "ecosystem": "npm"},
                "ranges": [_eco({"introduced": "0"})],
            }
        ],
    },
    _record(
        "TEST-8",
        "gitonly",
        ranges=[
            {"type": "GIT", "repo": "https://example.invalid/r", "events": [{"introduced": "0"}]}
        ],
    ),
    _record(
        "TEST-9",
        "badfix",
        ranges=[_eco({"introduced": "1.0"}, {"fixed": "2019-09-12"})],
        modified="2024-05-06T07:08:09.123456Z",
    ),
    _record("TEST-10", "samepoint", ranges=[_eco({"introduced": "2.0"}, {"fixed": "2.0"})]),
    # One advisory under two ids (as OSV exports publish PYSEC and GHSA): merged.
    _record(
        "PYSEC-2000-1",
        "dup",
        aliases=["GHSA-aaaa-bbbb-cccc"],
        ranges=[_eco({"introduced": "0"}, {"fixed": "1.1"})],
    ),
    _record(
        "GHSA-aaaa-bbbb-cccc",
        "dup",
        aliases=["CVE-2000-2"],
        ranges=[_eco({"introduced": "0"}, {"fixed": "1.0.1"})],
    ),
    {"not": "an OSV record"},
]

# BaseLoader matters here: as YAML 1.1 floats, 5.10 would become 5.1.
UNQUOTED_YAML = """\
id: TEST-11
modified: 2023-03-04T05:06:07Z
details: unquoted versions
affected:
- package:
    name: floaty
    ecosystem: PyPI
  ranges:
  - type: ECOSYSTEM
    events:
    - introduced: 0
    - fixed: 5.10
"""


def _write_json_dir(root: Path) -> Path:
    for n, record in enumerate(RECORDS):
        path = root / "db" / f"r{n % 3}" / f"{record.get('id', 'other')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    (root / "db" / "floaty.yaml").write_text(UNQUOTED_YAML)
    return root / "db"


def _write_yaml_dir(root: Path) -> Path:
    for n, record in enumerate(RECORDS):
        path = root / "db" / "vulns" / f"p{n}" / f"{record.get('id', 'other')}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(record))
    (root / "db" / "vulns" / "floaty.yml").write_text(UNQUOTED_YAML)
    # Not data: hidden directories (a checkout's .github) are skipped.
    (root / "db" / ".github").mkdir()
    (root / "db" / ".github" / "broken.yml").write_text("{ not yaml")
    return root / "db"


def _write_zip(root: Path) -> Path:
    path = root / "all.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for n, record in enumerate(RECORDS):
            archive.writestr(f"{record.get('id', f'other{n}')}.json", json.dumps(record))
        unquoted = yaml.load(UNQUOTED_YAML, Loader=yaml.BaseLoader)  # noqa: S506 - strings only
        archive.writestr("TEST-11.json", json.dumps(unquoted))
    return path


FORMS: dict[str, Callable[[Path], Path]] = {
    "json-dir": _write_json_dir,
    "yaml-dir": _write_yaml_dir,
    "zip": _write_zip,
}


@pytest.fixture(params=sorted(FORMS))
def fixture_db(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return FORMS[request.param](tmp_path)


def _audit(db: Path, cache: Path, *packages: tuple[str, str]) -> AuditResult:
    source = make_source(advisory_db=db, cache_dir=cache)
    assert isinstance(source, OfflineOsvSource)
    return source.audit([Package(name, version) for name, version in packages])


def _ids(db: Path, cache: Path, name: str, version: str) -> list[str]:
    return [v.id for v in _audit(db, cache, (name, version)).vulnerabilities]


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        # introduced 0, fixed 1.0; names compared normalised; a pre-release is before 1.0
        ("simple-pkg", "0.1", ["TEST-1"]),
        ("Simple.PKG", "1.0rc1", ["TEST-1"]),
        ("simple_pkg", "1.0", []),
        ("simple-pkg", "1.0.0", []),
        ("simple-pkg", "8.0", []),  # TEST-6 is withdrawn, TEST-7 is npm
        # [1.0, 1.2) and, in one range, [3.0, 3.1) and [3.5, 3.6); GIT ranges ignored
        ("multi", "0.9", []),
        ("multi", "1.0", ["TEST-2"]),
        ("multi", "1.1.9", ["TEST-2"]),
        ("multi", "1.2", []),
        ("multi", "3.0.5", ["TEST-2"]),
        ("multi", "3.1", []),
        ("multi", "3.4", []),
        ("multi", "3.5", ["TEST-2"]),
        ("multi", "3.6", []),
        # last_affected is inclusive
        ("lastaff", "0.9", []),
        ("lastaff", "1.5", ["TEST-3"]),
        ("lastaff", "1.5.0", ["TEST-3"]),
        ("lastaff", "1.5.post1", []),
        ("lastaff", "1.6", []),
        # explicit versions, compared as PEP 440 versions
        ("explicit", "0.9", ["TEST-4"]),
        ("explicit", "0.9.0", ["TEST-4"]),
        ("explicit", "4.1", ["TEST-4"]),
        ("explicit", "1.0", []),
        # limit bounds the range
        ("limited", "1.9", ["TEST-5"]),
        ("limited", "2.0", []),
        ("gitonly", "1.0", []),
        # an unparsable fixed leaves the range open (never silently clean)
        ("badfix", "0.5", []),
        ("badfix", "7.0", ["TEST-9"]),
        # introduced and fixed at the same version: empty
        ("samepoint", "2.0", []),
        # unquoted YAML versions are strings: 5.9 < 5.10
        ("floaty", "5.9", ["TEST-11"]),
        ("floaty", "5.10", []),
        ("nobody-knows-this", "1.0", []),
    ],
)
def test_range_semantics(
    fixture_db: Path, tmp_path: Path, name: str, version: str, expected: list[str]
) -> None:
    assert _ids(fixture_db, tmp_path / "cache", name, version) == expected


def test_finding_fields(fixture_db: Path, tmp_path: Path) -> None:
    result = _audit(
        fixture_db,
        tmp_path / "cache",
        ("Simple_Pkg", "0.5"),
        ("multi", "1.0"),
        ("badfix", "1.0"),
        ("lastaff", "1.0"),
        ("dup", "1.0"),
    )
    assert result.available
    assert result.source == "offline-osv"
    assert result.error == ""
    assert result.location == str(fixture_db.absolute())
    assert result.data_date == "2024-05-06T07:08:09.123456Z"  # TEST-9's, the newest
    by_id = {v.id: v for v in result.vulnerabilities}
    assert sorted(by_id) == ["PYSEC-2000-1", "TEST-1", "TEST-2", "TEST-3", "TEST-9"]
    simple = by_id["TEST-1"]
    assert simple.package == "simple-pkg"
    assert simple.version == "0.5"
    assert simple.aliases == ("CVE-2000-1",)
    assert simple.summary == "Simple: before 1.0"
    assert simple.fix_versions == ("1.0",)
    # fixes above the installed version only, oldest first
    assert by_id["TEST-2"].fix_versions == ("1.2", "3.1", "3.6")
    assert by_id["TEST-2"].summary == "TEST-2 details."
    assert by_id["TEST-3"].fix_versions == ()
    assert by_id["TEST-9"].fix_versions == ("2019-09-12",)
    # two ids of one advisory: one finding, PYSEC id first, union of aliases and fixes
    dup = by_id["PYSEC-2000-1"]
    assert dup.aliases == ("CVE-2000-2", "GHSA-aaaa-bbbb-cccc")
    assert dup.fix_versions == ("1.0.1", "1.1")
    # JSON-able, as the ledger needs
    again = json.loads(json.dumps(result.as_dict()))
    assert again["vulnerabilities"][0]["id"] == result.vulnerabilities[0].id
    assert again["available"] is True


def test_summary_is_one_truncated_line(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    long_details = "\n\n  " + "word " * 100 + "\nsecond line"
    (db / "x.json").write_text(
        json.dumps(
            _record("LONG-1", "longpkg", details=long_details, ranges=[_eco({"introduced": "0"})])
        )
    )
    [vuln] = _audit(db, tmp_path / "cache", ("longpkg", "1")).vulnerabilities
    assert "\n" not in vuln.summary
    assert vuln.summary.startswith("word word")
    assert len(vuln.summary) <= 200
    assert vuln.summary.endswith("…")


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-db"
    with pytest.raises(ConfigError) as caught:
        make_source(advisory_db=missing, cache_dir=tmp_path / "cache")
    assert str(missing) in caught.value.message
    assert "all.zip" in caught.value.hint
    assert "directory" in caught.value.hint
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_file_that_is_not_a_zip_is_a_config_error(tmp_path: Path) -> None:
    not_zip = tmp_path / "all.zip"
    not_zip.write_text("{}")
    with pytest.raises(ConfigError, match="not a zip"):
        make_source(advisory_db=not_zip, cache_dir=tmp_path / "cache")


def test_a_malformed_record_is_a_config_error_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "db"
    (db / "pkg").mkdir(parents=True)
    (db / "pkg" / "BAD-1.json").write_text('{"id": "BAD-1", ')
    source = make_source(advisory_db=db, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError) as caught:
        source.audit([Package("pkg", "1.0")])
    assert "BAD-1.json" in caught.value.message
    assert "\n" not in caught.value.message


# --- the index cache ------------------------------------------------------------------


def _copy_of_shared(tmp_path: Path, *packages: str) -> Path:
    db = shared_db() / "vulns"
    copy = tmp_path / "advisory-copy" / "vulns"
    for package in packages:
        shutil.copytree(db / package, copy / package)
    return copy.parent


def test_a_warm_audit_does_not_reparse_and_a_change_rebuilds(tmp_path: Path) -> None:
    db = _copy_of_shared(tmp_path, "requests", "pyyaml")
    cache = tmp_path / "cache"
    first = _audit(db, cache, ("requests", "2.19.1"))
    assert "PYSEC-2018-28" in [v.id for v in first.vulnerabilities]
    [index_dir] = (cache / "osv").iterdir()
    meta_stat = (index_dir / "meta.json").stat()

    # Same size and modification time, unparsable content: a warm audit never notices,
    # because it reads the index only.
    record = db / "vulns" / "requests" / "PYSEC-2018-28.yaml"
    before = record.stat()
    record.write_bytes(b"{" + b"x" * (before.st_size - 1))
    os.utime(record, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert record.stat().st_size == before.st_size

    second = _audit(db, cache, ("requests", "2.19.1"))
    assert second == first
    assert [p.name for p in (cache / "osv").iterdir()] == [index_dir.name]
    assert (index_dir / "meta.json").stat().st_mtime_ns == meta_stat.st_mtime_ns

    # A new modification time is a change: the data is read again (and is now broken).
    os.utime(record, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ConfigError, match=r"PYSEC-2018-28\.yaml"):
        _audit(db, cache, ("requests", "2.19.1"))


def test_a_new_record_rebuilds_and_the_old_index_is_removed(tmp_path: Path) -> None:
    db = _copy_of_shared(tmp_path, "requests")
    cache = tmp_path / "cache"
    assert _ids(db, cache, "newpkg", "1.0") == []
    [old] = (cache / "osv").iterdir()
    (db / "vulns" / "newpkg").mkdir()
    (db / "vulns" / "newpkg" / "NEW-1.json").write_text(
        json.dumps(_record("NEW-1", "newpkg", ranges=[_eco({"introduced": "0"})]))
    )
    assert _ids(db, cache, "newpkg", "1.0") == ["NEW-1"]
    [new] = (cache / "osv").iterdir()
    assert new.name != old.name


def test_a_changed_zip_rebuilds(tmp_path: Path) -> None:
    archive = _write_zip(tmp_path)
    cache = tmp_path / "cache"
    assert _ids(archive, cache, "newpkg", "1.0") == []
    with zipfile.ZipFile(archive, "a") as out:
        out.writestr(
            "NEW-1.json", json.dumps(_record("NEW-1", "newpkg", ranges=[_eco({"introduced": "0"})]))
        )
    assert _ids(archive, cache, "newpkg", "1.0") == ["NEW-1"]


def test_index_is_per_package_files(tmp_path: Path) -> None:
    db = _copy_of_shared(tmp_path, "requests", "pyyaml")
    index = load_index(db, tmp_path / "cache")
    assert index.directory is not None
    names = sorted(p.name for p in (index.directory / "p").iterdir())
    assert names == ["pyyaml.json", "requests.json"]
    # a warm load reads nothing but meta.json until a package is asked for
    warm = load_index(db, tmp_path / "cache")
    assert warm.directory == index.directory
    assert [r.id for r in warm.records("PyYAML")] == [r.id for r in index.records("pyyaml")]


# --- the real shared advisory database ------------------------------------------------


def shared_db() -> Path:
    if not (SHARED_ADVISORY_DB / "vulns").is_dir():
        absent(f"the shared advisory database is not at {SHARED_ADVISORY_DB}")
    return SHARED_ADVISORY_DB


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("osv-cache")


def _shared_audit(cache: Path, *packages: tuple[str, str]) -> AuditResult:
    return _audit(shared_db(), cache, *packages)


def test_real_requests_2_19_1_is_affected_by_pysec_2018_28(shared_cache: Path) -> None:
    result = _shared_audit(shared_cache, ("requests", "2.19.1"))
    by_id = {v.id: v for v in result.vulnerabilities}
    vuln = by_id["PYSEC-2018-28"]
    assert "CVE-2018-18074" in vuln.aliases
    assert vuln.fix_versions == ("2.20.0",)
    assert vuln.package == "requests"
    assert vuln.summary.startswith("The Requests package before 2.20.0")


def test_real_requests_2_20_0_is_not_affected_by_pysec_2018_28(shared_cache: Path) -> None:
    result = _shared_audit(shared_cache, ("requests", "2.20.0"))
    assert "PYSEC-2018-28" not in [v.id for v in result.vulnerabilities]


def test_real_pyyaml_5_3(shared_cache: Path) -> None:
    result = _shared_audit(shared_cache, ("PyYAML", "5.3"), ("pyyaml", "5.4"))
    found = {(v.version, v.id): v for v in result.vulnerabilities}
    vuln = found[("5.3", "PYSEC-2021-142")]
    assert vuln.package == "pyyaml"
    assert "CVE-2020-14343" in vuln.aliases
    assert vuln.fix_versions == ("5.4",)
    assert ("5.4", "PYSEC-2021-142") not in found


def test_real_data_date_is_the_newest_modified(shared_cache: Path) -> None:
    result = _shared_audit(shared_cache, ("requests", "2.19.1"))
    assert result.data_date is not None
    record = yaml.safe_load((shared_db() / "vulns/requests/PYSEC-2018-28.yaml").read_text())
    assert result.data_date >= record["modified"]
    assert result.data_date[:4].isdigit()
    assert result.location == str(shared_db().absolute())


def test_an_unwritable_cache_keeps_the_index_in_memory(fixture_db: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache-is-a-file"
    not_a_dir.write_text("")
    index = load_index(fixture_db, not_a_dir)
    assert index.directory is None
    assert [r.id for r in index.matching("simple-pkg", "0.1")] == ["TEST-1"]


def test_a_damaged_index_is_a_config_error_saying_what_to_delete(tmp_path: Path) -> None:
    db = _write_json_dir(tmp_path)
    index = load_index(db, tmp_path / "cache")
    assert index.directory is not None
    (index.directory / "p" / "multi.json").write_text("[[")
    with pytest.raises(ConfigError) as caught:
        load_index(db, tmp_path / "cache").records("multi")
    assert str(index.directory) in caught.value.hint
