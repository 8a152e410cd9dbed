"""jhansi.supply.sbom: a CycloneDX 1.6 document checked by the strict schema validator."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import pytest

from jhansi.deps.lock import LockedPackage, LockedWheel, LockResult
from jhansi.supply.metadata import PackageMetadata
from jhansi.supply.sbom import TargetComponent, build_sbom, purl_of

SCRIPT = b"import requests\nprint(requests.get('https://example.invalid').status_code)\n"
SERIAL = "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79"
WHEN = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
H = {c: "sha256:" + c * 64 for c in "abcdef"}

LOCK = LockResult(
    path=Path("/project/pylock.script.toml"),
    digest="0" * 64,
    packages=(
        LockedPackage(
            "requests",
            "2.19.0",
            (
                LockedWheel(
                    "requests-2.19.0-py2.py3-none-any.whl", "https://files.invalid/r.whl", (H["a"],)
                ),
            ),
        ),
        LockedPackage(
            "Charset_Normalizer",
            "3.4.0",
            (
                LockedWheel(
                    "charset_normalizer-3.4.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                    "u1",
                    (H["b"],),
                ),
                LockedWheel("charset_normalizer-3.4.0-py3-none-any.whl", "u2", (H["c"],)),
            ),
        ),
        LockedPackage(
            "idna", "3.10", (LockedWheel("idna-3.10-py3-none-any.whl", "u3", (H["d"],)),)
        ),
        LockedPackage(
            "weird", "1.0", (LockedWheel("weird-1.0-py3-none-any.whl", "u4", (H["e"],)),)
        ),
    ),
    reused=False,
    inputs_digest="1" * 64,
    requirements=("requests>=2", "weird"),
)

METADATA = {
    "requests": PackageMetadata(
        "requests",
        "2.19.0",
        license="Apache 2.0",
        summary="Python HTTP for Humans.",
        requires_dist=(
            "charset_normalizer<4,>=2",
            "idna<4,>=2.5",
            "PySocks!=1.5.7; extra == 'socks'",
        ),
        source="index",
    ),
    "charset-normalizer": PackageMetadata(
        "charset-normalizer", "3.4.0", license_expression="MIT OR Apache-2.0", source="index"
    ),
    "idna": PackageMetadata(
        "idna", "3.10", classifiers=("License :: OSI Approved :: BSD License",), source="index"
    ),
    # "weird" has no metadata at all (unavailable): it still appears, without a licence.
}


@dataclass(frozen=True)
class Vuln:
    id: str
    aliases: tuple[str, ...]
    summary: str
    package: str
    version: str
    fix_versions: tuple[str, ...]


VULN = Vuln(
    "PYSEC-2018-28",
    ("CVE-2018-18074", "GHSA-x84v-xcm2-53pg"),
    "Requests sends credentials to a redirect target",
    "Requests",
    "2.19.0",
    ("2.20.0",),
)
CONTAINER = TargetComponent("container", "python:3.12-slim", "3.12-slim", "sha256:" + "9" * 64)


def build(**overrides: Any) -> dict[str, Any]:
    return json.loads(raw(**overrides))


def raw(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "script_name": "fetch.py",
        "script_bytes": SCRIPT,
        "lock": LOCK,
        "metadata": METADATA,
        "target_component": CONTAINER,
        "vulnerabilities": [VULN],
        "tools": {"jhansi": "0.4.0", "uv": "0.9.7"},
        "serial": SERIAL,
        "timestamp": WHEN,
    }
    return build_sbom(**{**arguments, **overrides})


def strictly_valid(document: bytes) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(document.decode()) is None


def components(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["bom-ref"]: c for c in document["components"]}


def test_the_document_is_strict_cyclonedx_1_6() -> None:
    document = raw()
    strictly_valid(document)
    data = json.loads(document)
    assert (data["bomFormat"], data["specVersion"], data["serialNumber"]) == (
        "CycloneDX",
        "1.6",
        SERIAL,
    )
    assert data["metadata"]["timestamp"].startswith("2026-11-26T12:00:00")


def test_the_script_is_the_subject_with_blake3_and_sha256() -> None:
    subject = build()["metadata"]["component"]
    assert (subject["type"], subject["name"]) == ("application", "fetch.py")
    assert {h["alg"]: h["content"] for h in subject["hashes"]} == {
        "BLAKE3": blake3.blake3(SCRIPT).hexdigest(),
        "SHA-256": hashlib.sha256(SCRIPT).hexdigest(),
    }


def test_tools_are_jhansi_and_uv() -> None:
    tools = build()["metadata"]["tools"]["components"]
    assert {(t["name"], t["version"]) for t in tools} == {("jhansi", "0.4.0"), ("uv", "0.9.7")}


def test_every_locked_package_is_a_component_with_purl_hashes_and_licence() -> None:
    found = components(build())
    for package in LOCK.packages:
        purl = purl_of(package.name, package.version)
        component = found[purl]
        assert component["purl"] == purl
        assert component["type"] == "library"
        assert {f"sha256:{h['content']}" for h in component["hashes"]} == set(package.hashes)
    assert found["pkg:pypi/charset-normalizer@3.4.0"]["name"] == "charset-normalizer"
    assert found["pkg:pypi/requests@2.19.0"]["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    assert found["pkg:pypi/requests@2.19.0"]["description"] == "Python HTTP for Humans."
    assert found["pkg:pypi/charset-normalizer@3.4.0"]["licenses"] == [
        {"expression": "MIT OR Apache-2.0"}
    ]
    assert found["pkg:pypi/idna@3.10"]["licenses"] == [{"license": {"name": "BSD License"}}]
    assert "licenses" not in found["pkg:pypi/weird@1.0"]


def test_the_dependency_graph() -> None:
    graph = {d["ref"]: d.get("dependsOn", []) for d in build()["dependencies"]}
    assert graph["jhansi:script"] == [
        "jhansi:container:python:3.12-slim",
        "pkg:pypi/requests@2.19.0",
        "pkg:pypi/weird@1.0",
    ]
    # PySocks is not locked: no edge to it.
    assert graph["pkg:pypi/requests@2.19.0"] == [
        "pkg:pypi/charset-normalizer@3.4.0",
        "pkg:pypi/idna@3.10",
    ]
    assert graph["pkg:pypi/idna@3.10"] == []
    given = build(dependencies={"Weird": ["IDNA"], "requests": []})
    graph = {d["ref"]: d.get("dependsOn", []) for d in given["dependencies"]}
    assert graph["pkg:pypi/weird@1.0"] == ["pkg:pypi/idna@3.10"]
    assert graph["pkg:pypi/requests@2.19.0"] == []


def test_vulnerabilities_affect_the_package_and_recommend_the_fix() -> None:
    (vuln,) = build()["vulnerabilities"]
    assert vuln["id"] == "PYSEC-2018-28"
    assert vuln["affects"] == [
        {
            "ref": "pkg:pypi/requests@2.19.0",
            "versions": [{"status": "affected", "version": "2.19.0"}],
        }
    ]
    assert vuln["recommendation"] == "Upgrade to 2.20.0"
    assert vuln["description"] == VULN.summary
    assert {r["id"] for r in vuln["references"]} == {"CVE-2018-18074", "GHSA-x84v-xcm2-53pg"}
    unfixed = build(vulnerabilities=[replace(VULN, fix_versions=())])["vulnerabilities"][0]
    assert "recommendation" not in unfixed


def test_a_container_target_has_its_digest_and_an_oci_purl() -> None:
    (container,) = [c for c in build()["components"] if c["type"] == "container"]
    assert container["name"] == "python:3.12-slim"
    assert container["hashes"] == [{"alg": "SHA-256", "content": "9" * 64}]
    assert container["purl"].startswith("pkg:oci/python@sha256")
    assert "tag=3.12-slim" in container["purl"]


def test_an_interpreter_target_and_no_lock() -> None:
    document = raw(
        lock=None,
        metadata={},
        vulnerabilities=(),
        target_component=TargetComponent("interpreter", "cpython", "3.11.2"),
    )
    strictly_valid(document)
    data = json.loads(document)
    assert [(c["type"], c["name"], c["version"]) for c in data["components"]] == [
        ("platform", "cpython", "3.11.2")
    ]
    graph = {d["ref"]: d.get("dependsOn", []) for d in data["dependencies"]}
    assert graph["jhansi:script"] == ["jhansi:interpreter:cpython"]


def test_output_is_deterministic_given_serial_and_timestamp() -> None:
    assert raw() == raw()
    assert raw() != raw(serial="9b4b4b4e-0000-4000-8000-000000000000")
    first = json.loads(
        build_sbom(
            script_name="a.py",
            script_bytes=b"",
            lock=None,
            metadata={},
            target_component=CONTAINER,
            tools={"jhansi": "0"},
        )
    )
    assert first["serialNumber"].startswith("urn:uuid:")


def test_an_invalid_document_is_a_loud_internal_error() -> None:
    # A digest that is not hex cannot be a CycloneDX hash: the validator must catch it.
    broken = replace(
        LOCK,
        packages=(
            LockedPackage("idna", "3.10", (LockedWheel("idna.whl", "u", ("sha256:not-hex",)),)),
        ),
    )
    with pytest.raises(RuntimeError, match=r"invalid CycloneDX 1\.6 SBOM"):
        raw(lock=broken)


def _run_deps() -> Any:
    from jhansi.deps.plan import DependencyPlan
    from jhansi.deps.target import Target
    from jhansi.runner import Dependencies

    plan = DependencyPlan(requirements=(), imports=(), requires_python=None, mode="detected")
    return Dependencies(plan=plan, target=Target("3.11.7", "cpython", "x86_64", "glibc", "2.36"))


def test_a_runs_sbom_is_built_once_and_then_read_from_the_cache(tmp_path: Path) -> None:
    from jhansi.supply.sbom import sbom_for_run
    from jhansi.supply.sbom_cache import DIRECTORY, cached_sbom

    given: dict[str, Any] = {
        "script_name": "s.py",
        "script_bytes": b"print(1)\n",
        "deps": _run_deps(),
        "backend": None,
        "image": "python:3.12-slim",
        "cache_dir": tmp_path,
    }
    assert cached_sbom(**given) is None
    built = sbom_for_run(**given)
    assert json.loads(built)["bomFormat"] == "CycloneDX"
    assert cached_sbom(**given) == built
    assert cached_sbom(**{**given, "script_bytes": b"print(2)\n"}) is None
    (path,) = (tmp_path / DIRECTORY).iterdir()
    path.write_bytes(built[: len(built) // 2])  # damaged: not returned, built again
    assert cached_sbom(**given) is None
    rebuilt = sbom_for_run(**given)
    assert json.loads(rebuilt)["serialNumber"] == json.loads(built)["serialNumber"]
    assert cached_sbom(**given) == rebuilt
