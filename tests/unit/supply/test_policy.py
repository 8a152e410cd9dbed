"""The policy's evaluation: severities, ignore rules and their expiry, an unavailable audit.

These tests feed :func:`jhansi.supply.policy.evaluate` audit results built in the
test (the evidence-gathering sources have tests of their own against real data).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from jhansi.config import IgnoreRule, PolicySettings, load_settings
from jhansi.paths import Paths
from jhansi.supply.policy import PolicyDenied, evaluate
from jhansi.supply.vulns.interface import AuditResult, Vulnerability

REQUESTS_VULN = Vulnerability(
    id="PYSEC-2018-28",
    aliases=("CVE-2018-18074", "GHSA-x84v-xcm2-53pg"),
    summary="Authorization header leaked on redirect to http",
    package="requests",
    version="2.19.1",
    fix_versions=("2.20.0",),
)
TODAY = date(2026, 11, 26)


def _policy(tmp_path: Path) -> PolicySettings:
    home = Paths.from_environment({"JHANSI_HOME": str(tmp_path / "h")})
    return load_settings(start=tmp_path, environ={}, paths=home).policy


def _audit(*vulns: Vulnerability, available: bool = True) -> AuditResult:
    return AuditResult(
        source="offline-osv",
        available=available,
        vulnerabilities=vulns,
        error="" if available else "connection refused",
        location="/data/osv",
        data_date="2024-10-10T00:00:00Z",
    )


def test_a_known_vulnerability_is_denied_with_its_fix(tmp_path: Path) -> None:
    report = evaluate(
        settings=_policy(tmp_path), packages=5, audit=_audit(REQUESTS_VULN), today=TODAY
    )
    (finding,) = report.denied
    assert finding.id == "PYSEC-2018-28"
    assert "CVE-2018-18074" in finding.message
    assert "requests>=2.20.0" in finding.fix
    assert not report.ok
    assert report.audit["status"] == "ok"
    assert report.audit["data_date"] == "2024-10-10T00:00:00Z"
    error = PolicyDenied(report, "script.py")
    assert error.exit_code == 3
    assert "PYSEC-2018-28" in error.message


def test_unexpired_ignore_accepts_by_id_or_alias_and_expired_counts_again(tmp_path: Path) -> None:
    base = _policy(tmp_path)
    for ident in ("PYSEC-2018-28", "cve-2018-18074"):
        rule = IgnoreRule(ident, "no redirects to http in this script", date(2026, 12, 31))
        report = evaluate(
            settings=replace(base, ignore=(rule,)),
            packages=5,
            audit=_audit(REQUESTS_VULN),
            today=TODAY,
        )
        assert report.ok
        (ignored,) = report.ignored
        assert ignored.ignored == "no redirects to http in this script"
    expired = IgnoreRule("PYSEC-2018-28", "was fine", date(2026, 11, 25))
    report = evaluate(
        settings=replace(base, ignore=(expired,)),
        packages=5,
        audit=_audit(REQUESTS_VULN),
        today=TODAY,
    )
    (finding,) = report.denied
    assert "expired on 2026-11-25" in finding.message
    # The last day of an ignore rule still counts.
    last_day = IgnoreRule("PYSEC-2018-28", "ok today", TODAY)
    assert evaluate(
        settings=replace(base, ignore=(last_day,)),
        packages=5,
        audit=_audit(REQUESTS_VULN),
        today=TODAY,
    ).ok


def test_vulnerabilities_can_be_made_warnings(tmp_path: Path) -> None:
    report = evaluate(
        settings=replace(_policy(tmp_path), vulnerabilities="warn"),
        packages=5,
        audit=_audit(REQUESTS_VULN),
        today=TODAY,
    )
    assert report.ok
    assert [f.id for f in report.warnings] == ["PYSEC-2018-28"]


def test_unavailable_audit_warns_unless_required(tmp_path: Path) -> None:
    base = _policy(tmp_path)
    report = evaluate(settings=base, packages=3, audit=_audit(available=False), today=TODAY)
    assert report.ok
    (warning,) = report.warnings
    assert warning.rule == "audit-unavailable"
    assert report.audit["status"] == "vulnerability audit unavailable"
    assert report.audit["reason"] == "connection refused"
    strict = evaluate(
        settings=replace(base, require_audit=True),
        packages=3,
        audit=_audit(available=False),
        today=TODAY,
    )
    assert [f.rule for f in strict.denied] == ["audit-unavailable"]


def test_nothing_locked_needs_no_audit(tmp_path: Path) -> None:
    report = evaluate(
        settings=replace(_policy(tmp_path), require_audit=True),
        packages=0,
        audit=None,
        today=TODAY,
    )
    assert report.ok
    assert report.findings == ()
    assert report.audit == {"status": "not needed", "reason": "no locked packages"}
    assert report.as_dict()["ok"] is True


def test_online_audit_answer_is_reused_then_asked_again(tmp_path: Path) -> None:
    """A closed loopback port stands in for an unreachable vulnerability service."""
    import json
    import socket
    from datetime import UTC, datetime, timedelta

    from jhansi.supply.policy import UNAVAILABLE_AUDIT_TTL, _online_audit
    from jhansi.supply.vulns.interface import Package

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = replace(
        _policy(tmp_path),
        vulnerability_service="osv",
        osv_url=f"http://127.0.0.1:{port}/v1/query",
    )
    packages = [Package("requests", "2.19.1")]
    cache = tmp_path / "cache"
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    first = _online_audit(packages, settings, cache_dir=cache, now=now)
    assert not first.available
    (path,) = (cache / "audit").iterdir()
    stored = json.loads(path.read_text())
    stored["error"] = "answered from the cache"
    path.write_text(json.dumps(stored))
    again = _online_audit(packages, settings, cache_dir=cache, now=now + timedelta(seconds=60))
    assert again.error == "answered from the cache"
    later = now + timedelta(seconds=UNAVAILABLE_AUDIT_TTL + 1)
    asked = _online_audit(packages, settings, cache_dir=cache, now=later)
    assert not asked.available
    assert asked.error != "answered from the cache"


def test_an_online_answer_says_until_when_it_is_reused(tmp_path: Path) -> None:
    """What a warm run's reused verdict expires with: the cached answer's own expiry.

    A closed loopback port stands in for an unreachable vulnerability service.
    """
    import socket
    from datetime import UTC, datetime, timedelta

    from jhansi.supply.policy import UNAVAILABLE_AUDIT_TTL, _online_audit_until
    from jhansi.supply.vulns.interface import Package

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = replace(
        _policy(tmp_path), vulnerability_service="osv", osv_url=f"http://127.0.0.1:{port}/v1"
    )
    packages = [Package("requests", "2.19.1")]
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    _, until = _online_audit_until(packages, settings, cache_dir=tmp_path, now=now)
    assert until == now.timestamp() + UNAVAILABLE_AUDIT_TTL
    later = now + timedelta(seconds=100)
    _, again = _online_audit_until(packages, settings, cache_dir=tmp_path, now=later)
    assert again == until  # from the cache: it expires when the first answer does


def test_a_verdict_on_volatile_evidence_is_not_reusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata that could not be read (no environment, an unreachable index) may be
    read next time: such a verdict must be made again, not reused."""
    import socket
    from datetime import UTC, datetime

    from jhansi.deps.pylock import LockedPackage, LockResult
    from jhansi.report import NullReporter
    from jhansi.supply.policy import check_lock

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = replace(
        _policy(tmp_path),
        vulnerability_service="osv",
        osv_url=f"http://127.0.0.1:{port}/v1",
        min_package_age_days=0,
        unpopular_packages="ignore",
    )
    lock = LockResult(
        path=tmp_path / "pylock.toml",
        digest="d" * 64,
        packages=(LockedPackage("no-such-package-here", "1.0", wheels=()),),
        reused=True,
        inputs_digest="i" * 64,
    )
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    monkeypatch.setenv("UV_DEFAULT_INDEX", f"http://127.0.0.1:{port}/simple")
    checked = check_lock(
        lock, settings=settings, cache_dir=tmp_path / "cache", reporter=NullReporter(), now=now
    )
    assert checked.metadata["no-such-package-here"].source == "unavailable"
    assert checked.reuse_until == now.timestamp()
