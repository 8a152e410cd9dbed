"""pip-audit's real OSV service against a real OSV-compatible server on loopback.

The public OSV API cannot be reached from the test machines, so
``tests/osv_server.py`` serves the shared advisory database over HTTP on
127.0.0.1; everything between pip-audit and that socket is real.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from jhansi.supply.vulns import make_source
from jhansi.supply.vulns.interface import AuditResult, Package
from tests.conftest import absent
from tests.osv_server import SHARED_ADVISORY_DB, serve_osv

PACKAGES = [
    Package("requests", "2.19.1"),
    Package("PyYAML", "5.3"),
    Package("urllib3", "1.24.1"),
    Package("click", "8.1.7"),
]


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests honours proxy variables; the server is on loopback.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture(scope="module")
def index_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SHARED_ADVISORY_DB / "vulns").is_dir():
        absent(f"the shared advisory database is not at {SHARED_ADVISORY_DB}")
    return tmp_path_factory.mktemp("osv-index")


@pytest.fixture(scope="module")
def osv_url(index_cache: Path) -> Iterator[str]:
    with serve_osv(SHARED_ADVISORY_DB, index_cache) as url:
        yield url


def _online(url: str, tmp_path: Path) -> AuditResult:
    source = make_source(advisory_db=None, service="osv", osv_url=url, cache_dir=tmp_path)
    return source.audit(PACKAGES)


def test_pip_audit_osv_finds_what_offline_finds(
    osv_url: str, index_cache: Path, tmp_path: Path
) -> None:
    online = _online(osv_url, tmp_path)
    assert online.available, online.error
    assert online.source == "osv"
    assert online.location == osv_url

    found = {(v.package, v.id): v for v in online.vulnerabilities}
    requests_vuln = found[("requests", "PYSEC-2018-28")]
    assert "CVE-2018-18074" in requests_vuln.aliases
    assert requests_vuln.fix_versions == ("2.20.0",)
    assert requests_vuln.version == "2.19.1"
    assert ("pyyaml", "PYSEC-2021-142") in found

    offline = make_source(advisory_db=SHARED_ADVISORY_DB, cache_dir=index_cache).audit(PACKAGES)
    assert offline.available
    as_set = lambda r: {(v.package, v.version, v.id, v.aliases) for v in r.vulnerabilities}  # noqa: E731
    assert as_set(online) == as_set(offline)
    # pip-audit reports every fixed event; offline only those above the installed version
    for vuln in offline.vulnerabilities:
        assert set(vuln.fix_versions) <= set(found[(vuln.package, vuln.id)].fix_versions)
    assert not any(v.package == "click" for v in online.vulnerabilities)


def test_pip_audit_osv_url_from_the_environment(
    osv_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_AUDIT_OSV_URL", osv_url)
    source = make_source(advisory_db=None, service="osv", cache_dir=tmp_path)
    result = source.audit([Package("requests", "2.19.1")])
    assert result.available, result.error
    assert "PYSEC-2018-28" in [v.id for v in result.vulnerabilities]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_service_is_unavailable_not_an_exception(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/query"
    result = _online(url, tmp_path)
    assert not result.available
    assert result.vulnerabilities == ()
    assert result.location == url
    assert "\n" not in result.error
    assert url in result.error
    assert "refused" in result.error.lower()


def test_http_error_is_unavailable(osv_url: str, tmp_path: Path) -> None:
    url = osv_url.replace("/v1/query", "/v1/nothing-here")
    result = _online(url, tmp_path)
    assert not result.available
    assert "\n" not in result.error
    assert "404" in result.error


def test_server_speaks_the_osv_api(osv_url: str) -> None:
    import json
    import urllib.request

    def post(path: str, body: object) -> object:
        request = urllib.request.Request(  # noqa: S310 - loopback test server
            osv_url.replace("/v1/query", path), data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    answer = post(
        "/v1/query", {"package": {"name": "Requests", "ecosystem": "PyPI"}, "version": "2.19.1"}
    )
    assert isinstance(answer, dict)
    ids = [v["id"] for v in answer["vulns"]]
    assert "PYSEC-2018-28" in ids
    record = answer["vulns"][ids.index("PYSEC-2018-28")]
    assert record["affected"][0]["package"] == {
        "name": "requests",
        "ecosystem": "PyPI",
        "purl": "pkg:pypi/requests",
    }
    assert {"fixed": "2.20.0"} in record["affected"][0]["ranges"][0]["events"]
    assert (
        post(
            "/v1/query", {"package": {"name": "requests", "ecosystem": "npm"}, "version": "2.19.1"}
        )
        == {}
    )
    batch = post(
        "/v1/querybatch",
        {
            "queries": [
                {"package": {"name": "requests", "ecosystem": "PyPI"}, "version": "2.19.1"},
                {"package": {"name": "click", "ecosystem": "PyPI"}, "version": "8.1.7"},
            ]
        },
    )
    assert isinstance(batch, dict)
    first, second = batch["results"]
    assert "PYSEC-2018-28" in [v["id"] for v in first["vulns"]]
    assert second == {}


@pytest.mark.network
def test_pypi_service_answers_or_says_why_not(tmp_path: Path) -> None:
    # pip-audit's PyPI service has its URL built in. Where it is reachable it must find
    # the advisory; where the network does not serve it (a machine that reaches only a
    # package index) the result is unavailable with a reason, never an exception and
    # never a clean bill of health.
    source = make_source(advisory_db=None, cache_dir=tmp_path, timeout=20)
    result = source.audit([Package("requests", "2.19.1")])
    assert result.source == "pypi"
    if result.available:
        found = {v.id: v for v in result.vulnerabilities}
        assert any("CVE-2018-18074" in (v.id, *v.aliases) for v in found.values())
    else:
        assert result.error
        assert "\n" not in result.error
        assert result.vulnerabilities == ()
