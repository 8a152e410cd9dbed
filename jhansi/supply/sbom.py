"""The CycloneDX 1.6 SBOM of one run: the script, what it ran on, its packages, their flaws.

* ``metadata.component``: the script (type ``application``; BLAKE3 and SHA-256
  of its bytes); ``metadata.tools``: jhansi and uv with their versions.
* one ``library`` component per locked package: purl ``pkg:pypi/<name>@<version>``
  (also its bom-ref), every wheel digest the lock allows, its licence (an SPDX
  id or expression when one is known, else the raw name);
* the interpreter (``platform``) or the container image (``container``, with
  its digest as a hash and an OCI purl when known) the script runs on;
* the dependency graph: the script depends on what it runs on and on the
  lock's direct requirements,
  each package on the locked packages its ``Requires-Dist`` names (markers are
  not evaluated: an edge names a locked package the metadata declares);
* ``vulnerabilities``: each affecting the package's bom-ref, with the fix.

The document is valid CycloneDX 1.6 by construction: cyclonedx-python-lib builds
and writes it from its model. It is not checked against the schema when a run
makes it (the strict JSON schema validator alone costs a second or more to
import); the test suite checks every kind of document jhansi writes with it.
Given ``serial`` and ``timestamp`` the bytes are deterministic.

cyclonedx-python-lib is a heavy import: it is imported inside :func:`build_sbom`,
and a run on known dependencies does not need it at all
(:mod:`jhansi.supply.sbom_cache`).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, Protocol

from jhansi.deps.pylock import LockResult, canonical_name
from jhansi.supply.licenses import license_of
from jhansi.supply.metadata import PackageMetadata
from jhansi.supply.sbom_cache import SCRIPT_REF as _SCRIPT_REF

if TYPE_CHECKING:
    from pathlib import Path

    from cyclonedx.model import HashType
    from cyclonedx.model.bom_ref import BomRef
    from cyclonedx.model.license import License

    from jhansi.deps.result import Dependencies
    from jhansi.sandbox.interface import BackendInfo

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class TargetComponent:
    """What the script runs on: an interpreter, or a container image."""

    kind: Literal["interpreter", "container"]
    name: str
    """``cpython``, or the image reference (``python:3.12-slim``)."""
    version: str
    """The interpreter's version, or the image's tag (may be empty)."""
    digest: str | None = None
    """``sha256:<hex>``: the image's content digest when known."""


class VulnLike(Protocol):
    """A vulnerability affecting one locked package (what the vulnerability sources report)."""

    @property
    def id(self) -> str:
        """The advisory id (``PYSEC-2018-28``, ``GHSA-…``)."""

    @property
    def aliases(self) -> Sequence[str]:
        """Other ids of the same flaw (``CVE-2018-18074`` …)."""

    @property
    def summary(self) -> str:
        """One line (may be empty)."""

    @property
    def package(self) -> str:
        """The affected distribution's name."""

    @property
    def version(self) -> str:
        """The affected (locked) version."""

    @property
    def fix_versions(self) -> Sequence[str]:
        """Versions that fix it (may be empty)."""


def purl_of(name: str, version: str) -> str:
    """``pkg:pypi/<normalized name>@<version>``: a package's purl and bom-ref."""
    from packageurl import PackageURL

    return str(PackageURL(type="pypi", name=canonical_name(name), version=version).to_string())


def _hashes(digests: Sequence[str]) -> list[HashType]:
    from cyclonedx.model import HashAlgorithm, HashType

    algorithms = {
        "sha256": HashAlgorithm.SHA_256,
        "sha384": HashAlgorithm.SHA_384,
        "sha512": HashAlgorithm.SHA_512,
        "sha3_256": HashAlgorithm.SHA3_256,
        "sha3_384": HashAlgorithm.SHA3_384,
        "sha3_512": HashAlgorithm.SHA3_512,
        "blake2b": HashAlgorithm.BLAKE2B_512,
        "blake3": HashAlgorithm.BLAKE3,
    }
    out: list[HashType] = []
    for digest in digests:
        algorithm, _, content = digest.partition(":")
        alg = algorithms.get(algorithm.lower().replace("-", "_"))
        if alg is not None and content:
            out.append(HashType(alg=alg, content=content.lower()))
    return out


def _licenses(meta: PackageMetadata | None) -> list[License]:
    from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
    from cyclonedx.spdx import is_supported_id

    if meta is None:
        return []
    info = license_of(meta)
    if info.expression is not None:
        if is_supported_id(info.expression):
            return [DisjunctiveLicense(id=info.expression)]
        return [LicenseExpression(info.expression)]
    if info.name:
        return [DisjunctiveLicense(name=info.name)]
    return []


def _requirement_name(requirement: str) -> str | None:
    match = _NAME.match(requirement.strip())
    return canonical_name(match.group()) if match else None


def _graph(
    lock: LockResult | None,
    metadata: Mapping[str, PackageMetadata],
    dependencies: Mapping[str, Sequence[str]] | None,
) -> tuple[list[str], dict[str, list[str]]]:
    """(the script's direct packages, package → its locked dependencies), all normalized."""
    if lock is None:
        return [], {}
    locked = {canonical_name(p.name) for p in lock.packages}
    direct = sorted({n for r in lock.requirements if (n := _requirement_name(r)) in locked})
    graph: dict[str, list[str]] = {}
    given = {canonical_name(k): v for k, v in (dependencies or {}).items()}
    for package in lock.packages:
        name = canonical_name(package.name)
        if dependencies is not None:
            names = {canonical_name(d) for d in given.get(name, ())}
        else:
            meta = metadata.get(name)
            names = {
                n
                for r in (meta.requires_dist if meta else ())
                if (n := _requirement_name(r)) is not None
            }
        graph[name] = sorted((names & locked) - {name})
    return direct, graph


def build_sbom(
    *,
    script_name: str,
    script_bytes: bytes,
    lock: LockResult | None,
    metadata: Mapping[str, PackageMetadata],
    target_component: TargetComponent,
    vulnerabilities: Sequence[VulnLike] = (),
    tools: Mapping[str, str],
    dependencies: Mapping[str, Sequence[str]] | None = None,
    serial: str | None = None,
    timestamp: datetime | None = None,
) -> bytes:
    """The run's SBOM as CycloneDX 1.6 JSON (see the module docstring).

    ``metadata`` is keyed by normalized name (:func:`jhansi.supply.metadata.metadata_for`);
    ``tools`` maps a tool's name to its version (jhansi, uv); ``dependencies``
    (normalized name → names) replaces the graph derived from ``Requires-Dist``;
    ``serial`` is a UUID (``urn:uuid:`` prefix optional), random when omitted;
    ``timestamp`` defaults to now.
    """
    import blake3
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.dependency import Dependency
    from cyclonedx.model.impact_analysis import ImpactAnalysisAffectedStatus
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.model.vulnerability import (
        BomTarget,
        BomTargetVersionRange,
        Vulnerability,
        VulnerabilityReference,
        VulnerabilitySource,
    )
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion
    from packageurl import PackageURL

    script = Component(
        type=ComponentType.APPLICATION,
        name=script_name,
        bom_ref=_SCRIPT_REF,
        hashes=[
            HashType(alg=HashAlgorithm.BLAKE3, content=blake3.blake3(script_bytes).hexdigest()),
            HashType(alg=HashAlgorithm.SHA_256, content=hashlib.sha256(script_bytes).hexdigest()),
        ],
    )
    tool_components = [
        Component(
            type=ComponentType.APPLICATION,
            name=name,
            version=version or None,
            bom_ref=f"jhansi:tool:{name}",
        )
        for name, version in sorted(tools.items())
    ]

    components: list[Component] = []
    refs: dict[str, str] = {}
    for package in lock.packages if lock is not None else ():
        name = canonical_name(package.name)
        purl = purl_of(name, package.version)
        refs[name] = purl
        meta = metadata.get(name)
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=name,
                version=package.version,
                bom_ref=purl,
                purl=PackageURL.from_string(purl),
                hashes=_hashes(package.hashes),
                licenses=_licenses(meta),
                description=meta.summary if meta is not None else None,
            )
        )

    if target_component.kind == "container":
        target_purl = None
        hashes: list[HashType] = []
        if target_component.digest:
            hashes = _hashes([target_component.digest])
            repository, _, tag = target_component.name.partition("@")[0].rpartition(":")
            if not repository or "/" in tag:
                repository, tag = target_component.name.partition("@")[0], ""
            qualifiers = {"repository_url": repository}
            if tag:
                qualifiers["tag"] = tag
            target_purl = PackageURL(
                type="oci",
                name=repository.rsplit("/", 1)[-1].lower(),
                version=target_component.digest,
                qualifiers=qualifiers,
            )
        target = Component(
            type=ComponentType.CONTAINER,
            name=target_component.name,
            version=target_component.version or None,
            bom_ref=f"jhansi:container:{target_component.name}",
            hashes=hashes,
            purl=target_purl,
        )
    else:
        target = Component(
            type=ComponentType.PLATFORM,
            name=target_component.name,
            version=target_component.version or None,
            bom_ref=f"jhansi:interpreter:{target_component.name}",
        )
    components.append(target)

    direct, graph = _graph(lock, metadata, dependencies)
    bom_dependencies = [
        Dependency(
            ref=script.bom_ref,
            dependencies=[
                Dependency(ref=target.bom_ref),
                *(Dependency(ref=_ref(refs[n])) for n in direct),
            ],
        ),
        Dependency(ref=target.bom_ref),
        *(
            Dependency(
                ref=_ref(refs[name]), dependencies=[Dependency(ref=_ref(refs[d])) for d in deps]
            )
            for name, deps in graph.items()
        ),
    ]

    vulns = []
    for vuln in vulnerabilities:
        name = canonical_name(vuln.package)
        ref = refs.get(name) or purl_of(name, vuln.version)
        fixes = list(vuln.fix_versions)
        vulns.append(
            Vulnerability(
                bom_ref=f"{vuln.id}:{ref}",
                id=vuln.id,
                references=[
                    VulnerabilityReference(
                        id=alias, source=VulnerabilitySource(name=_source(alias))
                    )
                    for alias in sorted(set(vuln.aliases) - {vuln.id})
                ],
                description=vuln.summary or None,
                recommendation=f"Upgrade to {', '.join(fixes)}" if fixes else None,
                affects=[
                    BomTarget(
                        ref=ref,
                        versions=[
                            BomTargetVersionRange(
                                version=vuln.version, status=ImpactAnalysisAffectedStatus.AFFECTED
                            )
                        ],
                    )
                ],
                source=VulnerabilitySource(name=_source(vuln.id)),
            )
        )

    bom = Bom(
        serial_number=_serial(serial),
        metadata=BomMetaData(
            timestamp=timestamp or datetime.now(UTC),
            tools=ToolRepository(components=tool_components),
            component=script,
        ),
        components=components,
        dependencies=bom_dependencies,
        vulnerabilities=vulns,
    )
    text = make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string(indent=2)
    return text.encode("utf-8")


def _ref(value: str) -> BomRef:
    from cyclonedx.model.bom_ref import BomRef

    return BomRef(value)


def _source(identifier: str) -> str:
    """The database an advisory id comes from, by its prefix."""
    prefix = identifier.split("-", 1)[0].upper()
    return {
        "CVE": "NVD",
        "GHSA": "GitHub Advisories",
        "PYSEC": "PyPA Advisory Database",
        "OSV": "OSV",
    }.get(prefix, prefix or "unknown")


def _serial(serial: str | None) -> uuid.UUID:
    if serial is None:
        return uuid.uuid4()
    return uuid.UUID(serial.removeprefix("urn:uuid:"))


def sbom_for_run(
    *,
    script_name: str,
    script_bytes: bytes,
    deps: Dependencies,
    backend: BackendInfo | None,
    image: str,
    cache_dir: Path,
) -> bytes:
    """The SBOM of one run (or of what a script would run), built once per distinct input.

    Building an SBOM costs a second or more (the CycloneDX library); a run of the same
    script on the same lock, target and findings reuses the document built the first
    time, byte for byte, and a new script on them gets the document made from the
    template kept then (:mod:`jhansi.supply.sbom_cache`). The document's serial number
    is derived from its inputs, so the same inputs always describe themselves with the
    same SBOM.
    """
    from jhansi._version import __version__
    from jhansi.supply.sbom_cache import (
        cache_path,
        cached_sbom,
        sbom_key,
        serial_of,
        store,
        target_fields,
        template_key,
        template_path,
    )

    kept = cached_sbom(
        script_name=script_name,
        script_bytes=script_bytes,
        deps=deps,
        backend=backend,
        image=image,
        cache_dir=cache_dir,
    )
    if kept is not None:
        return kept
    supply = deps.supply
    fields = target_fields(deps, backend, image)
    key = sbom_key(script_name=script_name, script_bytes=script_bytes, deps=deps, target=fields)
    document = build_sbom(
        script_name=script_name,
        script_bytes=script_bytes,
        lock=deps.lock,
        metadata=supply.metadata if supply is not None else {},
        target_component=_target_component(deps, backend, image),
        vulnerabilities=supply.audit.vulnerabilities if supply and supply.audit else (),
        tools={"jhansi": __version__, "uv": _uv_version()},
        serial=serial_of(key),
    )
    store(cache_path(cache_dir, key), document)
    # The same document is the template of every other script on the same inputs.
    store(template_path(cache_dir, template_key(deps=deps, target=fields)), document)
    return document


def _target_component(
    deps: Dependencies, backend: BackendInfo | None, image: str
) -> TargetComponent:
    from jhansi.supply.sbom_cache import target_fields

    kind, name, version, digest = target_fields(deps, backend, image)
    return TargetComponent(
        "container" if kind == "container" else "interpreter", name, version, digest
    )


def _uv_version() -> str:
    """The version of the uv jhansi runs (from its package's metadata: no process started)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("uv")
    except PackageNotFoundError:
        return "unknown"
