"""Where a run's SBOM is kept between runs, found without loading the SBOM builder.

Every run records its CycloneDX SBOM. Building one costs a second or more (the
CycloneDX library's model and output modules), so :func:`jhansi.supply.sbom.sbom_for_run`
keeps what it builds at two levels, and this module finds either with only light
imports (no CycloneDX, no licences, package metadata or locks):

* the **document**, under a key of all its inputs (jhansi's version, the script's
  name and bytes, the locked packages with their digests and the requirements,
  what the script runs on, the vulnerability audit and the licence evidence): a
  repeated run reuses it byte for byte;
* the **template**, under the same key without the script: everything in the SBOM
  but the script's own component depends on the dependencies, the target, the
  audit, the licence evidence and the tools, not on the script. A new script on
  known dependencies gets its document from the template by replacing exactly the
  script's name and hashes (``metadata.component``), the serial number (derived
  from the document's key) and the timestamp; that document is then kept under its
  own key, so a repeat of that script is byte for byte the same too.

The script's component is named by one constant bom-ref (:data:`SCRIPT_REF`)
wherever the document refers to it, so nothing else in a template names a script.
A cached document or template that is not a CycloneDX JSON document of the expected
shape (a damaged file) is not used: it is built again.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jhansi.deps.result import Dependencies
    from jhansi.sandbox.interface import BackendInfo

DIRECTORY = "sbom"
#: The bom-ref of the script's component (``metadata.component``) in every SBOM.
SCRIPT_REF = "jhansi:script"


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


def _inputs(deps: Dependencies, target: tuple[str, str, str, str | None]) -> dict[str, Any]:
    """Everything an SBOM is built from but the script."""
    from jhansi._version import __version__

    supply = deps.supply
    audit = supply.audit.as_dict() if supply is not None and supply.audit is not None else None
    metadata = supply.metadata if supply is not None else {}
    lock = deps.lock
    return {
        "jhansi": __version__,
        # What the SBOM takes from the lock, not the lock file's digest: a lock file's
        # header names the script it was made for, and another script's lock pinning
        # the same packages has the same SBOM template.
        "lock": None
        if lock is None
        else [list(lock.requirements), [[p.name, p.version, p.hashes] for p in lock.packages]],
        "target": list(target),
        "audit": audit,
        "metadata": {
            k: [m.license_expression, m.license, m.source != "unavailable"]
            for k, m in metadata.items()
        },
    }


def _digest(inputs: dict[str, Any]) -> str:
    import blake3

    return blake3.blake3(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _with_script(inputs: dict[str, Any], script_name: str, script_blake3: str) -> dict[str, Any]:
    return {**inputs, "script": [script_name, script_blake3]}


def sbom_key(
    *,
    script_name: str,
    script_bytes: bytes,
    deps: Dependencies,
    target: tuple[str, str, str, str | None],
) -> str:
    """BLAKE3 (hex) of everything a run's SBOM is built from."""
    import blake3

    script = blake3.blake3(script_bytes).hexdigest()
    return _digest(_with_script(_inputs(deps, target), script_name, script))


def template_key(*, deps: Dependencies, target: tuple[str, str, str, str | None]) -> str:
    """BLAKE3 (hex) of everything a run's SBOM is built from but the script."""
    return _digest(_inputs(deps, target))


def serial_of(key: str) -> str:
    """The SBOM's serial number for its key: ``urn:uuid:`` and a version 4 UUID.

    The UUID's 128 bits are the key's first 32 hex digits with the version and
    variant bits set, as ``uuid.UUID(bytes=..., version=4)`` sets them (``uuid`` is
    not imported for it: its import costs more than this whole lookup).
    """
    raw = bytearray(bytes.fromhex(key[:32]))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def cache_path(cache_dir: Path, key: str) -> Path:
    """Where the document for ``key`` is kept."""
    return cache_dir / DIRECTORY / f"{key[:40]}.cdx.json"


def template_path(cache_dir: Path, key: str) -> Path:
    """Where the template for ``key`` (a :func:`template_key`) is kept."""
    return cache_dir / DIRECTORY / f"{key[:40]}.template.cdx.json"


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


def read_template(cache_dir: Path, key: str) -> dict[str, Any] | None:
    """The kept template for ``key``, parsed, or ``None`` (missing, unreadable or damaged).

    A template is a document jhansi built: CycloneDX 1.6 JSON whose ``metadata``
    holds a timestamp and the script's component (bom-ref :data:`SCRIPT_REF`, a
    name, hashes), with a serial number: anything else is not used.
    """
    try:
        document = json.loads(template_path(cache_dir, key).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        return None
    metadata = document.get("metadata")
    component = metadata.get("component") if isinstance(metadata, dict) else None
    if (
        document.get("specVersion") != "1.6"
        or not isinstance(document.get("serialNumber"), str)
        or not isinstance(metadata, dict)
        or not isinstance(metadata.get("timestamp"), str)
        or not isinstance(component, dict)
        or component.get("bom-ref") != SCRIPT_REF
        or not isinstance(component.get("name"), str)
        or not isinstance(component.get("hashes"), list)
    ):
        return None
    return document


def from_template(
    template: dict[str, Any],
    *,
    script_name: str,
    script_bytes: bytes,
    serial: str,
    timestamp: datetime | None = None,
) -> bytes:
    """The document of a script, made from a template (which is changed in place).

    Replaces the script's name and hashes (BLAKE3, then SHA-256, as the builder
    writes them), the serial number and the timestamp (now when not given),
    and writes the JSON as the CycloneDX library does (2-space indent, ASCII,
    keys in place): the same bytes the builder would have made for that script.
    """
    import blake3

    metadata = template["metadata"]
    component = metadata["component"]
    component["name"] = script_name
    component["hashes"] = [
        {"alg": "BLAKE3", "content": blake3.blake3(script_bytes).hexdigest()},
        {"alg": "SHA-256", "content": hashlib.sha256(script_bytes).hexdigest()},
    ]
    template["serialNumber"] = serial
    metadata["timestamp"] = (timestamp or datetime.now(UTC)).isoformat()
    return json.dumps(template, indent=2).encode("utf-8")


def store(path: Path, document: bytes) -> None:
    """Keep ``document`` at ``path`` (whole or not at all; a cache that cannot be
    written only costs time)."""
    from jhansi.paths import ensure_private_dir

    try:
        directory = ensure_private_dir(path.parent)
        partial = directory / f".{path.name}.{os.urandom(16).hex()}"
        partial.write_bytes(document)
        partial.replace(path)
    except OSError:
        pass


def cached_sbom(
    *,
    script_name: str,
    script_bytes: bytes,
    deps: Dependencies,
    backend: BackendInfo | None,
    image: str,
    cache_dir: Path,
) -> bytes | None:
    """The run's SBOM without building one, else ``None``.

    The document kept for the same inputs, else one made from the template kept for
    the same inputs but the script (and then kept under its own key), else ``None``:
    then :func:`jhansi.supply.sbom.sbom_for_run` builds it.
    """
    import blake3

    inputs = _inputs(deps, target_fields(deps, backend, image))
    script = blake3.blake3(script_bytes).hexdigest()
    key = _digest(_with_script(inputs, script_name, script))
    kept = read_cached(cache_dir, key)
    if kept is not None:
        return kept
    template = read_template(cache_dir, _digest(inputs))
    if template is None:
        return None
    document = from_template(
        template, script_name=script_name, script_bytes=script_bytes, serial=serial_of(key)
    )
    store(cache_path(cache_dir, key), document)
    return document
