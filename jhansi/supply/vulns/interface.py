"""What a vulnerability source is: packages in, an :class:`AuditResult` out.

Two kinds of source implement :class:`VulnerabilitySource`: offline OSV data
(:mod:`jhansi.supply.vulns.osv`, ``--advisory-db PATH``) and pip-audit's online
services (:mod:`jhansi.supply.vulns.pip_audit`). An unreachable service is data
(``available=False``), not an exception: the policy decides what that means.
Only a bad *configuration* (an advisory database path that cannot be read)
raises, as :class:`jhansi.errors.ConfigError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

SUMMARY_MAX = 200
"""Longest summary kept, in characters (the ledger and the report show one line)."""

SERVICES = ("pypi", "osv")
"""The pip-audit services :func:`jhansi.supply.vulns.make_source` accepts."""


@dataclass(frozen=True, slots=True)
class Package:
    """One locked package to audit.

    ``name`` is as locked; sources compare it by its PEP 503 normalised form.
    """

    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Vulnerability:
    """One advisory that affects one installed package version."""

    id: str
    """The advisory's id, e.g. ``PYSEC-2018-28``."""
    aliases: tuple[str, ...]
    """Other ids of the same advisory, e.g. ``("CVE-2018-18074", "GHSA-x84v-xcm2-53pg")``."""
    summary: str
    """One line: the summary, else the first line of the details, truncated."""
    package: str
    """The PEP 503 normalised package name."""
    version: str
    """The affected installed version."""
    fix_versions: tuple[str, ...]
    """Versions that fix it (sorted, oldest first); empty when none is known."""

    def as_dict(self) -> dict[str, object]:
        """A JSON-able form, for the ledger and ``--json``."""
        return {
            "id": self.id,
            "aliases": list(self.aliases),
            "summary": self.summary,
            "package": self.package,
            "version": self.version,
            "fix_versions": list(self.fix_versions),
        }


@dataclass(frozen=True, slots=True)
class AuditResult:
    """What one source said about a set of packages."""

    source: str
    """``"offline-osv"``, ``"pypi"`` (pip-audit's default service) or ``"osv"``."""
    available: bool
    """False when the source could not be reached or read: then nothing was checked."""
    vulnerabilities: tuple[Vulnerability, ...] = ()
    error: str = ""
    """Why the source is unavailable (one line); empty otherwise."""
    location: str | None = None
    """The path of the offline data, or the service's URL."""
    data_date: str | None = None
    """Offline data only: the newest ``modified`` date among its records (ISO 8601)."""
    skipped: tuple[str, ...] = ()
    """Packages the source could not check although it answered, one line each, e.g.
    ``"corp-internal 1.0: not found on PyPI"``: unchecked is not the same as clean."""

    def as_dict(self) -> dict[str, object]:
        """A JSON-able form, for the ledger and ``--json``."""
        return {
            "source": self.source,
            "available": self.available,
            "vulnerabilities": [v.as_dict() for v in self.vulnerabilities],
            "error": self.error,
            "location": self.location,
            "data_date": self.data_date,
            "skipped": list(self.skipped),
        }


class VulnerabilitySource(ABC):
    """A place that knows which package versions have known vulnerabilities."""

    name: str
    """The ``source`` its results carry."""

    @abstractmethod
    def audit(self, packages: Sequence[Package]) -> AuditResult:
        """Every known vulnerability of ``packages``, or ``available=False`` and why not."""


def one_line(text: str, limit: int = SUMMARY_MAX) -> str:
    """The first non-blank line of ``text``, whitespace-collapsed and cut at ``limit``."""
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
    return ""


def _id_rank(ident: str) -> int:
    # PYSEC ids are the PyPI ecosystem's own; CVEs are the most widely known.
    return 0 if ident.startswith("PYSEC-") else 1 if ident.startswith("CVE-") else 2


def merge_aliases(vulnerabilities: Sequence[Vulnerability]) -> tuple[Vulnerability, ...]:
    """One :class:`Vulnerability` per advisory per package version.

    Databases publish one advisory under several ids (PYSEC, GHSA, CVE): results
    for the same package and version whose ``{id, *aliases}`` intersect are
    merged into one, keeping the PYSEC id when there is one, the union of the
    aliases and of the fix versions. Order of first appearance is kept.
    """
    from packaging.version import InvalidVersion, Version

    def version_key(text: str) -> tuple[int, Version | None, str]:
        try:
            return (0, Version(text), text)
        except InvalidVersion:
            return (1, None, text)

    groups: list[list[Vulnerability]] = []
    for vuln in vulnerabilities:
        ids = {vuln.id, *vuln.aliases}
        joined = [
            g
            for g in groups
            if g[0].package == vuln.package
            and g[0].version == vuln.version
            and any(ids & {o.id, *o.aliases} for o in g)
        ]
        if not joined:
            groups.append([vuln])
            continue
        first = joined[0]
        first.append(vuln)
        for other in joined[1:]:
            first.extend(other)
        groups = [g for g in groups if not any(g is other for other in joined[1:])]
    merged: list[Vulnerability] = []
    for group in groups:
        if len(group) == 1:
            merged.append(group[0])
            continue
        primary = min(group, key=lambda v: (_id_rank(v.id), v.id))
        all_ids = {i for v in group for i in (v.id, *v.aliases)} - {primary.id}
        fixes = {f for v in group for f in v.fix_versions}
        merged.append(
            Vulnerability(
                id=primary.id,
                aliases=tuple(sorted(all_ids, key=lambda i: (_id_rank(i), i))),
                summary=primary.summary or next((v.summary for v in group if v.summary), ""),
                package=primary.package,
                version=primary.version,
                fix_versions=tuple(sorted(fixes, key=version_key)),
            )
        )
    return tuple(merged)
