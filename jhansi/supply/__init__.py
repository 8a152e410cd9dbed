"""Supply-chain checks on a lock: SBOM, vulnerabilities, licences, provenance and the policy."""
