"""The policy: what a lock's packages may be, decided before anything is installed.

:func:`check_lock` gathers the evidence for one lock — known vulnerabilities (offline
OSV data or pip-audit's online services), licences (from the packages' metadata) and
provenance (age on the index, popularity) — and :func:`evaluate` turns it into a
frozen :class:`PolicyReport`: findings, each with a severity (``deny`` or ``warn``),
the rule and its evidence. ``[policy] ignore`` entries accept a finding, with a
reason, until their date; after it the finding counts again.

A finding is ignored by its id: a vulnerability by its id or any alias
(``PYSEC-2018-28``, ``CVE-2018-18074``); other findings by ``<rule>:<package>``
(``license:foo``, ``package-age:bar``, ``unpopular:baz``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jhansi.errors import PolicyError

if TYPE_CHECKING:
    from jhansi.config import IgnoreRule, PolicySettings
    from jhansi.deps.pylock import LockResult
    from jhansi.report import Reporter
    from jhansi.supply.metadata import PackageMetadata
    from jhansi.supply.vulns.interface import AuditResult, Vulnerability

Severity = Literal["deny", "warn"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the policy found about one package (or about the audit itself)."""

    rule: str
    """``vulnerability``, ``license``, ``package-age``, ``unpopular``,
    ``audit-unavailable`` or ``provenance-unavailable``."""
    severity: Severity
    package: str | None
    version: str | None
    id: str
    """What an ``ignore`` entry names: the advisory id, else ``<rule>:<package>``."""
    message: str
    """One line: what is wrong."""
    evidence: str
    """Why jhansi thinks so (the advisory, the licence field, the first upload date)."""
    fix: str = ""
    """What to do about it."""
    aliases: tuple[str, ...] = ()
    ignored: str | None = None
    """The reason of the ``ignore`` entry that accepted it (then it does not count)."""

    def matches(self, ident: str) -> bool:
        """Whether an ``ignore`` entry's id names this finding."""
        wanted = ident.strip().lower()
        return wanted in (self.id.lower(), *(a.lower() for a in self.aliases))

    def as_dict(self) -> dict[str, Any]:
        """JSON types only (the ledger, ``--json``)."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "package": self.package,
            "version": self.version,
            "id": self.id,
            "aliases": list(self.aliases),
            "message": self.message,
            "evidence": self.evidence,
            "fix": self.fix,
            "ignored": self.ignored,
        }


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """The policy's verdict on one lock."""

    findings: tuple[Finding, ...]
    """Findings that count (deny and warn)."""
    ignored: tuple[Finding, ...] = ()
    """Findings accepted by an unexpired ``ignore`` entry."""
    audit: Mapping[str, Any] = field(default_factory=dict)
    """Which vulnerability source answered (or why none did), and its data date."""
    packages: int = 0
    """How many locked packages were checked."""

    @property
    def denied(self) -> tuple[Finding, ...]:
        """The findings that refuse the run."""
        return tuple(f for f in self.findings if f.severity == "deny")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """The findings that are shown and recorded but do not refuse."""
        return tuple(f for f in self.findings if f.severity == "warn")

    @property
    def ok(self) -> bool:
        """Nothing refuses the run."""
        return not self.denied

    def as_dict(self) -> dict[str, Any]:
        """JSON types only (the ledger, ``--json``)."""
        return {
            "ok": self.ok,
            "packages": self.packages,
            "denied": len(self.denied),
            "warnings": len(self.warnings),
            "findings": [f.as_dict() for f in self.findings],
            "ignored": [f.as_dict() for f in self.ignored],
            "audit": dict(self.audit),
        }


class PolicyDenied(PolicyError):
    """The lock breaks the policy: nothing was installed and no sandbox started."""

    dependencies: Any = None
    """The runner's :class:`~jhansi.deps.result.Dependencies` (planned, locked, checked)."""

    def __init__(self, report: PolicyReport, where: str) -> None:
        denied = report.denied
        first = denied[0]
        packages = sorted({f.package for f in denied if f.package})
        if len(denied) == 1:
            summary = first.message
        else:
            summary = f"{len(denied)} findings in {', '.join(packages) or 'the audit'}"
        accept = "accept a finding with a reason in [policy] ignore (or allow)"
        hint = (
            f"{first.fix} Or {accept}."
            if len(denied) == 1 and first.fix
            else f"Fix each finding listed above (each says how) and re-lock, or {accept}."
        )
        super().__init__(f"{where}: the policy refused the dependencies: {summary}", hint=hint)
        self.report = report


@dataclass(frozen=True, slots=True)
class SupplyCheck:
    """Everything the policy looked at for one lock, kept for the SBOM and the ledger."""

    report: PolicyReport
    metadata: Mapping[str, PackageMetadata]
    audit: AuditResult | None
    reuse_until: float | None = None
    """Until when (seconds since the epoch, UTC) the same verdict may be reused for the
    same lock and settings on the same day without gathering the evidence again: when
    the online audit's answer must be asked again. ``None``: no such limit. Evidence
    that may change any time (a young package, an index or metadata that could not be
    read) makes it the moment of the check: not reusable."""


# -- evaluation (pure) ---------------------------------------------------------------


def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def vulnerability_findings(audit: AuditResult | None, severity: Severity) -> list[Finding]:
    """One finding per advisory that affects a locked version."""
    if audit is None:
        return []
    found: list[Finding] = []
    for vuln in audit.vulnerabilities:
        found.append(_vulnerability_finding(vuln, severity, audit.source))
    return found


def _vulnerability_finding(vuln: Vulnerability, severity: Severity, source: str) -> Finding:
    aliases = tuple(a for a in vuln.aliases if a != vuln.id)
    named = vuln.id + (f" ({', '.join(aliases)})" if aliases else "")
    fixes = ", ".join(vuln.fix_versions)
    fix = (
        f"Require {vuln.package}>={vuln.fix_versions[0]} (fixed in {fixes}) and re-lock."
        if vuln.fix_versions
        else f"No fixed release of {vuln.package} is known: drop it, or accept the risk "
        f'with [policy] ignore = [{{id = "{vuln.id}", reason = "...", until = ...}}].'
    )
    return Finding(
        rule="vulnerability",
        severity=severity,
        package=vuln.package,
        version=vuln.version,
        id=vuln.id,
        aliases=aliases,
        message=f"{vuln.package} {vuln.version} is affected by {named}",
        evidence=f"{source}: {vuln.summary}".strip().rstrip(":"),
        fix=fix,
    )


def apply_ignores(
    findings: Sequence[Finding], rules: Sequence[IgnoreRule], today: date
) -> tuple[tuple[Finding, ...], tuple[Finding, ...]]:
    """Split ``findings`` into (still counting, ignored by an unexpired rule).

    An expired rule ignores nothing, and the finding says that it expired.
    """
    from dataclasses import replace

    counting: list[Finding] = []
    ignored: list[Finding] = []
    for finding in findings:
        rule = next((r for r in rules if finding.matches(r.id)), None)
        if rule is None:
            counting.append(finding)
        elif rule.active(today):
            ignored.append(replace(finding, ignored=rule.reason))
        else:
            expired = f" (its ignore entry expired on {rule.until})"
            counting.append(replace(finding, message=finding.message + expired))
    return tuple(counting), tuple(ignored)


def audit_summary(audit: AuditResult | None, *, needed: bool) -> dict[str, Any]:
    """What the record says about the vulnerability audit."""
    if not needed:
        return {"status": "not needed", "reason": "no locked packages"}
    if audit is None:
        return {"status": "unavailable", "reason": "no vulnerability source was asked"}
    summary: dict[str, Any] = {
        "status": "ok" if audit.available else "vulnerability audit unavailable",
        "source": audit.source,
        "location": audit.location,
        "data_date": audit.data_date,
    }
    if not audit.available:
        summary["reason"] = audit.error
    return summary


def evaluate(
    *,
    settings: PolicySettings,
    packages: int,
    audit: AuditResult | None,
    other: Sequence[Finding] = (),
    today: date | None = None,
) -> PolicyReport:
    """The report for one lock from the evidence gathered for it."""
    findings: list[Finding] = vulnerability_findings(
        audit, "deny" if settings.vulnerabilities == "deny" else "warn"
    )
    if packages and (audit is None or not audit.available):
        why = audit.error if audit is not None else "no source"
        findings.append(
            Finding(
                rule="audit-unavailable",
                severity="deny" if settings.require_audit else "warn",
                package=None,
                version=None,
                id="audit-unavailable",
                message=f"vulnerability audit unavailable: {why}",
                evidence=f"source {audit.source if audit else 'none'}",
                fix="Point [policy] advisory_db (or --advisory-db) at OSV data, or restore "
                "access to the vulnerability service.",
            )
        )
    findings.extend(other)
    order = {"deny": 0, "warn": 1}
    findings.sort(key=lambda f: (order[f.severity], f.package or "", f.rule, f.id))
    counting, ignored = apply_ignores(findings, settings.ignore, today or date.today())
    return PolicyReport(
        findings=counting,
        ignored=ignored,
        audit=audit_summary(audit, needed=packages > 0),
        packages=packages,
    )


# -- gathering the evidence ------------------------------------------------------------


def _license_findings(
    lock: LockResult,
    metadata: Mapping[str, PackageMetadata],
    settings: PolicySettings,
    *,
    cache_dir: Path,
) -> list[Finding]:
    """Licence findings, reused for the same lock, metadata and rules.

    Reading SPDX expressions loads the licence list (about 0.1 s): a warm run of an
    unchanged lock reads the findings from the cache instead.
    """
    import json

    import blake3

    from jhansi._version import __version__

    rules_key = [settings.licenses.allow, settings.licenses.deny, settings.licenses.unknown]
    evidence = {
        name: [m.license_expression, m.license, list(m.classifiers), m.source == "unavailable"]
        for name, m in metadata.items()
    }
    key_text = json.dumps([__version__, lock.digest, rules_key, evidence], sort_keys=True)
    path = cache_dir / "licenses" / f"{blake3.blake3(key_text.encode()).hexdigest()[:40]}.json"
    try:
        return [Finding(**_finding_fields(f)) for f in json.loads(path.read_text("utf-8"))]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = _evaluate_licenses(lock, metadata, settings)
    try:
        from jhansi.paths import ensure_private_dir

        ensure_private_dir(path.parent)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps([f.as_dict() for f in found]), encoding="utf-8")
        partial.replace(path)
    except OSError:
        pass
    return found


def _finding_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    fields = dict(data)
    fields["aliases"] = tuple(fields.get("aliases", ()))
    return fields


def _evaluate_licenses(
    lock: LockResult, metadata: Mapping[str, PackageMetadata], settings: PolicySettings
) -> list[Finding]:
    from jhansi.supply.licenses import LicenseInfo, LicenseRules, license_of
    from jhansi.supply.licenses import evaluate as evaluate_license

    rules = LicenseRules(
        allow=settings.licenses.allow,
        deny=settings.licenses.deny,
        unknown="deny" if settings.licenses.unknown == "deny" else "warn",
    )
    found: list[Finding] = []
    for package in lock.packages:
        meta = metadata.get(_norm(package.name))
        info = (
            license_of(meta)
            if meta is not None
            else LicenseInfo(None, None, "no metadata for the package")
        )
        verdict = evaluate_license(info, rules)
        if verdict.ok or verdict.severity is None:
            continue
        shown = info.expression or info.name
        found.append(
            Finding(
                rule="license",
                severity="deny" if verdict.severity == "deny" else "warn",
                package=package.name,
                version=package.version,
                id=f"license:{_norm(package.name)}",
                message=f"{package.name} {package.version}: {verdict.reason}",
                evidence=info.evidence + (f" ({shown})" if shown else ""),
                fix="Choose another package, or change [policy] licenses.",
            )
        )
    return found


def _provenance_findings(
    lock: LockResult,
    settings: PolicySettings,
    *,
    cache_dir: Path,
    now: datetime,
) -> list[Finding]:
    from jhansi.supply.provenance import check_provenance

    allow = {_norm(n) for n in settings.allow}
    found: list[Finding] = []
    for item in check_provenance(
        lock.packages,
        min_age_days=settings.min_package_age_days,
        allow=allow,
        now=now,
        cache_dir=cache_dir,
        require_popular=settings.unpopular_packages != "ignore",
    ):
        if item.rule == "not-popular":
            if settings.unpopular_packages == "ignore":
                continue
            rule, severity = "unpopular", settings.unpopular_packages
        elif item.rule == "package-age":
            if not settings.min_package_age_days:
                continue
            rule, severity = "package-age", settings.young_packages
        else:
            rule, severity = "provenance-unavailable", "warn"
        found.append(
            Finding(
                rule=rule,
                severity="deny" if severity == "deny" else "warn",
                package=item.package,
                version=item.version,
                id=f"{rule}:{_norm(item.package)}",
                message=f"{item.package} {item.version}: {item.evidence}",
                evidence=item.evidence,
                fix=f"If {item.package} is the package you mean, accept it with "
                f'[policy] allow = ["{item.package}"].',
            )
        )
    return found


#: How long an online audit's answer is reused: a warm run asks no service (the
#: data behind it changes daily at most); an unavailable service is asked again sooner.
ONLINE_AUDIT_TTL = 3600
UNAVAILABLE_AUDIT_TTL = 600


def _online_audit(
    packages: Sequence[Any], settings: PolicySettings, *, cache_dir: Path, now: datetime
) -> AuditResult:
    """pip-audit's answer for ``packages``, reused for a while from the cache."""
    return _online_audit_until(packages, settings, cache_dir=cache_dir, now=now)[0]


def _online_audit_until(
    packages: Sequence[Any], settings: PolicySettings, *, cache_dir: Path, now: datetime
) -> tuple[AuditResult, float]:
    """:func:`_online_audit`, and until when its answer is reused (seconds since the epoch)."""
    import json
    import os

    import blake3

    from jhansi.supply.vulns import make_source
    from jhansi.supply.vulns.interface import AuditResult, Vulnerability

    osv_url = settings.osv_url or os.environ.get("PIP_AUDIT_OSV_URL") or ""
    key_text = json.dumps(
        [settings.vulnerability_service, osv_url, sorted((p.name, p.version) for p in packages)]
    )
    path = cache_dir / "audit" / f"{blake3.blake3(key_text.encode()).hexdigest()[:40]}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        ttl = ONLINE_AUDIT_TTL if cached["available"] else UNAVAILABLE_AUDIT_TTL
        if 0 <= now.timestamp() - float(cached["asked"]) < ttl:
            return AuditResult(
                source=cached["source"],
                available=cached["available"],
                vulnerabilities=tuple(
                    Vulnerability(
                        id=v["id"],
                        aliases=tuple(v["aliases"]),
                        summary=v["summary"],
                        package=v["package"],
                        version=v["version"],
                        fix_versions=tuple(v["fix_versions"]),
                    )
                    for v in cached["vulnerabilities"]
                ),
                error=cached["error"],
                location=cached["location"],
                data_date=cached["data_date"],
                skipped=tuple(cached.get("skipped", ())),
            ), float(cached["asked"]) + ttl
    except (OSError, ValueError, KeyError, TypeError):
        pass
    source = make_source(
        advisory_db=None,
        service=settings.vulnerability_service,
        osv_url=settings.osv_url,
        cache_dir=cache_dir,
    )
    audit = source.audit(packages)
    try:
        from jhansi.paths import ensure_private_dir

        ensure_private_dir(path.parent)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(
            json.dumps({**audit.as_dict(), "asked": now.timestamp()}), encoding="utf-8"
        )
        partial.replace(path)
    except OSError:
        pass  # an unwritable cache only costs time
    ttl = ONLINE_AUDIT_TTL if audit.available else UNAVAILABLE_AUDIT_TTL
    return audit, now.timestamp() + ttl


def check_lock(
    lock: LockResult | None,
    *,
    settings: PolicySettings,
    cache_dir: Path,
    reporter: Reporter,
    environment: Path | None = None,
    now: datetime | None = None,
) -> SupplyCheck:
    """Gather the evidence for ``lock`` and evaluate the policy (nothing is installed)."""
    now = now or datetime.now(UTC)
    if lock is None or not lock.packages:
        report = evaluate(settings=settings, packages=0, audit=None, today=now.date())
        return SupplyCheck(report=report, metadata={}, audit=None)
    from jhansi.supply.metadata import metadata_for
    from jhansi.supply.vulns import make_source
    from jhansi.supply.vulns.interface import Package

    reporter.step("policy", f"checking {len(lock.packages)} locked package(s)")
    packages = [Package(p.name, p.version) for p in lock.packages]
    if settings.advisory_db:
        source = make_source(
            advisory_db=Path(settings.advisory_db), cache_dir=cache_dir, osv_url=None
        )
        audit = source.audit(packages)
        reuse_until: float | None = None
    else:
        audit, reuse_until = _online_audit_until(packages, settings, cache_dir=cache_dir, now=now)
    metadata = metadata_for(
        lock.packages,
        environment=environment,
        cache_dir=cache_dir,
        progress=lambda done, total: reporter.progress("metadata", done, total),
    )
    other = _license_findings(lock, metadata, settings, cache_dir=cache_dir)
    if settings.min_package_age_days or settings.unpopular_packages != "ignore":
        other += _provenance_findings(lock, settings, cache_dir=cache_dir, now=now)
    report = evaluate(
        settings=settings,
        packages=len(lock.packages),
        audit=audit,
        other=other,
        today=now.date(),
    )
    volatile = (
        any(m.source == "unavailable" for m in metadata.values())
        or any(_norm(p.name) not in metadata for p in lock.packages)
        or any(f.rule in _VOLATILE_RULES for f in (*report.findings, *report.ignored))
    )
    if volatile:
        reuse_until = now.timestamp()
    return SupplyCheck(report=report, metadata=metadata, audit=audit, reuse_until=reuse_until)


#: Findings whose evidence changes with the clock or the network, not with the lock:
#: a verdict holding one is never reused.
_VOLATILE_RULES = frozenset({"package-age", "provenance-unavailable"})
