"""Vulnerability sources: an interface, pip-audit's services (online), OSV data (offline).

:func:`make_source` picks the one the user asked for, importing only that one. The
sources import :mod:`jhansi.supply.vulns.interface` (what they implement), never
the choice among them made here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from jhansi.errors import ConfigError
from jhansi.supply.vulns.interface import SERVICES

if TYPE_CHECKING:
    from pathlib import Path

    from jhansi.supply.vulns.interface import VulnerabilitySource

__all__ = ["make_source"]


def make_source(
    *,
    advisory_db: Path | None,
    service: str = "pypi",
    osv_url: str | None = None,
    cache_dir: Path,
    timeout: float = 15.0,
) -> VulnerabilitySource:
    """The source the user asked for.

    ``advisory_db`` selects offline OSV data (a directory of OSV JSON/YAML records
    or an OSV ``all.zip``) and wins over ``service``. Otherwise pip-audit's
    ``service`` is used (``"pypi"`` or ``"osv"``); for ``"osv"`` the endpoint is
    ``osv_url``, else ``$PIP_AUDIT_OSV_URL``, else pip-audit's default. Nothing is
    read or fetched here except a check that ``advisory_db`` exists.

    Raises :class:`jhansi.errors.ConfigError` for a missing or unreadable
    ``advisory_db`` and for an unknown ``service``.
    """
    if advisory_db is not None:
        from jhansi.supply.vulns.osv import OfflineOsvSource, check_advisory_db

        check_advisory_db(advisory_db)
        return OfflineOsvSource(advisory_db=advisory_db, cache_dir=cache_dir)
    if service not in SERVICES:
        raise ConfigError(
            f"unknown vulnerability service {service!r}",
            hint=f"use one of: {', '.join(SERVICES)} (or --advisory-db PATH for offline OSV data)",
        )
    from jhansi.supply.vulns.pip_audit import PipAuditSource

    if service == "osv" and osv_url is None:
        osv_url = os.environ.get("PIP_AUDIT_OSV_URL") or None
    return PipAuditSource(service=service, osv_url=osv_url, cache_dir=cache_dir, timeout=timeout)
