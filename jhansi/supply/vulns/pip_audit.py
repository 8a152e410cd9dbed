"""Online vulnerability data through pip-audit, used as a library.

pip-audit's services do the HTTP: ``PyPIService`` (the PyPI JSON API's
``vulnerabilities``, pip-audit's default) and ``OsvService`` (the OSV API, at
``osv_url`` when given: a mirror, or a loopback server in tests). Their HTTP
cache lives in ``cache_dir/pip-audit``, never in pip's or pip-audit's own cache.

A service that cannot be reached, answers with an HTTP error or with something
unreadable gives ``AuditResult(available=False, error=...)``: whether that
blocks a run is the policy's decision, not an exception's. pip-audit (and its
``requests`` stack) is imported only when an audit runs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jhansi.supply.vulns.interface import (
    SERVICES,
    AuditResult,
    Package,
    Vulnerability,
    VulnerabilitySource,
    merge_aliases,
    one_line,
)

MAX_PARALLEL = 8
"""Queries in flight at once (pip-audit itself asks one package at a time)."""

_ERRNO_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _error_line(exc: BaseException) -> str:
    """One readable line for a failed query (requests nests the reason deep in its text)."""
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or (str(cause) if cause is not None else "") or type(exc).__name__
    reason = _ERRNO_REASON.search(text)
    if reason:
        return reason.group(1).strip()
    return one_line(f"{type(exc).__name__}: {text}" if str(exc) else text)


class PipAuditSource(VulnerabilitySource):
    """pip-audit's ``pypi`` or ``osv`` vulnerability service."""

    def __init__(
        self,
        *,
        service: str = "pypi",
        osv_url: str | None = None,
        cache_dir: Path,
        timeout: float = 15.0,
    ) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown pip-audit service {service!r}")
        self.name = service
        self.osv_url = osv_url
        self.cache_dir = cache_dir
        self.timeout = timeout
        self._local = threading.local()

    @property
    def location(self) -> str | None:
        """The OSV endpoint queried; ``None`` for the PyPI service (its URL is pip-audit's)."""
        if self.name != "osv":
            return None
        if self.osv_url:
            return self.osv_url
        from pip_audit._service import OsvService  # type: ignore[import-untyped]

        return str(OsvService.DEFAULT_OSV_URL)

    def _service(self) -> Any:
        """This thread's pip-audit service (requests sessions are not shared across threads)."""
        service = getattr(self._local, "service", None)
        if service is None:
            from pip_audit._service import OsvService, PyPIService

            cache = self.cache_dir / "pip-audit"
            if self.name == "osv":
                kwargs: dict[str, Any] = {"osv_url": self.osv_url} if self.osv_url else {}
                service = OsvService(cache_dir=cache, timeout=self.timeout, **kwargs)
            else:
                service = PyPIService(cache_dir=cache, timeout=self.timeout)
            self._local.service = service
        return service

    def _query(self, package: Package) -> tuple[list[Vulnerability], str | None]:
        """The vulnerabilities of one package, or why it was skipped."""
        from packaging.utils import canonicalize_name
        from packaging.version import InvalidVersion, Version
        from pip_audit._service import ResolvedDependency

        name = str(canonicalize_name(package.name))
        try:
            version = Version(package.version)
        except InvalidVersion:
            return [], f"{name} {package.version}: not a PEP 440 version, cannot be looked up"
        dependency, results = self._service().query(
            ResolvedDependency(name=package.name, version=version)
        )
        if dependency.is_skipped():
            return [], one_line(f"{name} {package.version}: {dependency.skip_reason}")
        found = [
            Vulnerability(
                id=str(result.id),
                aliases=tuple(sorted(str(a) for a in result.aliases)),
                summary=one_line(str(result.description)),
                package=name,
                version=package.version,
                fix_versions=tuple(str(v) for v in sorted(result.fix_versions)),
            )
            for result in results
        ]
        return found, None

    def audit(self, packages: Sequence[Package]) -> AuditResult:
        """Ask the service about every package; ``available=False`` if any query fails."""
        from pip_audit._service import ServiceError

        location = self.location
        unique = list(dict.fromkeys(packages))
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, len(unique)))) as pool:
                answers = list(pool.map(self._query, unique))
        except (ServiceError, OSError) as exc:
            # requests' exceptions are OSErrors; pip-audit wraps HTTP errors in ServiceError.
            where = f" at {location}" if location else ""
            return AuditResult(
                source=self.name,
                available=False,
                error=f"pip-audit's {self.name} service{where} failed: {_error_line(exc)}",
                location=location,
            )
        except (ValueError, KeyError, TypeError) as exc:
            # A reachable endpoint that answers something other than the expected JSON.
            where = f" at {location}" if location else ""
            return AuditResult(
                source=self.name,
                available=False,
                error=one_line(
                    f"pip-audit's {self.name} service{where} gave an unreadable answer: "
                    f"{type(exc).__name__}: {exc}"
                ),
                location=location,
            )
        vulnerabilities = [v for found, _ in answers for v in found]
        skipped = tuple(reason for _, reason in answers if reason)
        if unique and len(skipped) == len(unique):
            # A service that knows none of the packages is not working (for example a
            # network that answers 404 for everything): do not let that pass as clean.
            return AuditResult(
                source=self.name,
                available=False,
                error=one_line(
                    f"pip-audit's {self.name} service could check none of the "
                    f"{len(unique)} packages; first: {skipped[0]}"
                ),
                location=location,
                skipped=skipped,
            )
        return AuditResult(
            source=self.name,
            available=True,
            vulnerabilities=merge_aliases(vulnerabilities),
            location=location,
            skipped=skipped,
        )
