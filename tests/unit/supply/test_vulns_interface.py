"""The vulnerability source interface: choosing a source, merging aliases, JSON forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jhansi.errors import ConfigError
from jhansi.supply.vulns import make_source
from jhansi.supply.vulns.interface import (
    AuditResult,
    Vulnerability,
    VulnerabilitySource,
    merge_aliases,
    one_line,
)
from jhansi.supply.vulns.osv import OfflineOsvSource
from jhansi.supply.vulns.pip_audit import PipAuditSource


def test_advisory_db_selects_offline_data_over_any_service(tmp_path: Path) -> None:
    source = make_source(advisory_db=tmp_path, service="osv", cache_dir=tmp_path / "c")
    assert isinstance(source, OfflineOsvSource)
    assert source.name == "offline-osv"


def test_default_is_pip_audits_pypi_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_AUDIT_OSV_URL", "http://127.0.0.1:9/v1/query")
    source = make_source(advisory_db=None, cache_dir=tmp_path)
    assert isinstance(source, PipAuditSource)
    assert source.name == "pypi"
    assert source.osv_url is None


def test_osv_url_comes_from_argument_then_environment_then_pip_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pip_audit._service import OsvService

    monkeypatch.delenv("PIP_AUDIT_OSV_URL", raising=False)
    plain = make_source(advisory_db=None, service="osv", cache_dir=tmp_path)
    assert isinstance(plain, PipAuditSource)
    assert plain.location == OsvService.DEFAULT_OSV_URL

    monkeypatch.setenv("PIP_AUDIT_OSV_URL", "http://127.0.0.1:9/env")
    from_env = make_source(advisory_db=None, service="osv", cache_dir=tmp_path)
    assert isinstance(from_env, PipAuditSource)
    assert from_env.location == "http://127.0.0.1:9/env"

    given = make_source(
        advisory_db=None, service="osv", osv_url="http://127.0.0.1:9/arg", cache_dir=tmp_path
    )
    assert isinstance(given, PipAuditSource)
    assert given.location == "http://127.0.0.1:9/arg"


def test_unknown_service_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'snyk'") as caught:
        make_source(advisory_db=None, service="snyk", cache_dir=tmp_path)
    assert "pypi" in caught.value.hint
    assert "osv" in caught.value.hint


def _vuln(
    ident: str, aliases: tuple[str, ...], fixes: tuple[str, ...], version: str = "1.0"
) -> Vulnerability:
    return Vulnerability(
        id=ident,
        aliases=aliases,
        summary=f"{ident} summary",
        package="pkg",
        version=version,
        fix_versions=fixes,
    )


def test_merge_aliases_joins_one_advisory_under_several_ids() -> None:
    merged = merge_aliases(
        [
            _vuln("GHSA-1", ("CVE-1",), ("1.10",)),
            _vuln("OTHER-9", (), ()),
            _vuln("PYSEC-1", ("CVE-1",), ("1.9", "1.10")),
            # linked to the first only through a third record
            _vuln("GHSA-2", ("PYSEC-1",), ("2.0",)),
            # the same ids for another installed version stay separate
            _vuln("PYSEC-1", ("CVE-1",), ("1.9",), version="1.5"),
        ]
    )
    assert [(v.id, v.version) for v in merged] == [
        ("PYSEC-1", "1.0"),
        ("OTHER-9", "1.0"),
        ("PYSEC-1", "1.5"),
    ]
    first = merged[0]
    assert first.aliases == ("CVE-1", "GHSA-1", "GHSA-2")
    assert first.fix_versions == ("1.9", "1.10", "2.0")
    assert first.summary == "PYSEC-1 summary"


def test_merge_aliases_leaves_distinct_advisories_alone() -> None:
    vulns = [_vuln("A-1", ("CVE-1",), ()), _vuln("A-2", ("CVE-2",), ())]
    assert merge_aliases(vulns) == tuple(vulns)


def test_one_line() -> None:
    assert one_line("\n  first   line \nsecond") == "first line"
    assert one_line("") == ""
    cut = one_line("x" * 500)
    assert len(cut) == 200
    assert cut.endswith("…")


def test_results_are_json_able_and_frozen() -> None:
    result = AuditResult(
        source="osv",
        available=False,
        error="pip-audit's osv service failed: Connection refused",
        location="http://127.0.0.1:9/v1/query",
    )
    data = json.loads(json.dumps(result.as_dict()))
    assert data == {
        "source": "osv",
        "available": False,
        "vulnerabilities": [],
        "error": "pip-audit's osv service failed: Connection refused",
        "location": "http://127.0.0.1:9/v1/query",
        "data_date": None,
        "skipped": [],
    }
    with pytest.raises(AttributeError):
        result.available = True  # type: ignore[misc]


def test_sources_are_vulnerability_sources(tmp_path: Path) -> None:
    assert issubclass(OfflineOsvSource, VulnerabilitySource)
    assert issubclass(PipAuditSource, VulnerabilitySource)
