"""Where a run's SBOM is kept between runs, found without loading the SBOM builder.

Every run records its CycloneDX SBOM. Building one costs a few hundred milliseconds,
so :func:`jhansi.supply.sbom.sbom_for_run` keeps each document under a key of its
inputs (jhansi's version, the script's name and bytes, the lock's digest, what the
script runs on, the vulnerability audit and the licence evidence) and reuses it byte
for byte. This module is that key and that lookup, with only light imports: a warm
run reads the document without importing the builder's modules (licences, package
metadata, locks). A cached document that is not a CycloneDX JSON document (a damaged
file) is not returned: it is built again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jhansi.runner import Dependencies
    from jhansi.sandbox.interface import BackendInfo

DIRECTORY = "sbom"


def target_fields(
    deps: Dependencies, backend: BackendInfo | None, image: str
) -> tuple[str, str, str, str | None]:
    """What the script runs on: ``(kind, name, version, digest)``.

    ``("container", image reference, tag, image digest)`` on the docker backend, else
    ``("interpreter", implementation, version, None)``.
    """
    if backend is not None and backend.backend == "docker":
        reference = backend.details.get("image", image)
        tag = reference.rsplit(":", 1)[1] if ":" in reference.rsplit("/", 1)[-1] else ""
        digest = backend.details.get("image_digest") or None
        return "container", reference, tag, digest
    return "interpreter", deps.target.implementation or "cpython", deps.target.python_version, None


def sbom_key(
    *,
    script_name: str,
    script_bytes: bytes,
    deps: Dependencies,
    target: tuple[str, str, str, str | None],
) -> str:
    """BLAKE3 (hex) of everything a run's SBOM is built from."""
    import blake3

    from jhansi._version import __version__

    supply = deps.supply
    audit = supply.audit.as_dict() if supply is not None and supply.audit is not None else None
    metadata = supply.metadata if supply is not None else {}
    inputs = json.dumps(
        {
            "jhansi": __version__,
            "script": [script_name, blake3.blake3(script_bytes).hexdigest()],
            "lock": deps.lock.digest if deps.lock else None,
            "target": list(target),
            "audit": audit,
            "metadata": {
                k: [m.license_expression, m.license, m.source != "unavailable"]
                for k, m in metadata.items()
            },
        },
        sort_keys=True,
        default=str,
    ).encode()
    return blake3.blake3(inputs).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    """Where the document for ``key`` is kept."""
    return cache_dir / DIRECTORY / f"{key[:40]}.cdx.json"


def read_cached(cache_dir: Path, key: str) -> bytes | None:
    """The kept document for ``key``, or ``None`` (missing, unreadable or damaged)."""
    try:
        data = cache_path(cache_dir, key).read_bytes()
        document = json.loads(data)
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        return None
    return data


def cached_sbom(
    *,
    script_name: str,
    script_bytes: bytes,
    deps: Dependencies,
    backend: BackendInfo | None,
    image: str,
    cache_dir: Path,
) -> bytes | None:
    """The run's SBOM if one was built for the same inputs before, else ``None``."""
    key = sbom_key(
        script_name=script_name,
        script_bytes=script_bytes,
        deps=deps,
        target=target_fields(deps, backend, image),
    )
    return read_cached(cache_dir, key)
