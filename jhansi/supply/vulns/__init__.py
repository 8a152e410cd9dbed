"""Vulnerability sources: an interface, pip-audit's services (online), OSV data (offline)."""
