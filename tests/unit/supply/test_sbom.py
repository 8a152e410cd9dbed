"""jhansi.supply.sbom and its cache: CycloneDX 1.6 documents, each kind checked here.

jhansi does not validate an SBOM when a run makes it (the document is built by the
CycloneDX library; the schema validator is too slow to import on the run path): these
tests check every kind of document jhansi writes with the strict CycloneDX 1.6 JSON
schema validator instead, the ones made from a cached template included.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import pytest

from jhansi.deps.pylock import LockedPackage, LockedWheel, LockResult
from jhansi.supply.metadata import PackageMetadata
from jhansi.supply.sbom import TargetComponent, build_sbom, purl_of
from jhansi.supply.sbom_cache import SCRIPT_REF, from_template

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


def test_every_kind_of_document_is_strict_cyclonedx_1_6() -> None:
    """The kinds jhansi writes: with and without a lock (licences as SPDX id,
    expression and raw name; a package without metadata), with vulnerabilities, on a
    container with a digest (hash and OCI purl) or without one, on an interpreter."""
    kinds: dict[str, dict[str, Any]] = {
        "lock, vulnerabilities, container with digest": {},
        "no lock (stdlib only), container": {"lock": None, "metadata": {}, "vulnerabilities": ()},
        "container without digest": {
            "target_component": TargetComponent("container", "python:3.12-slim", "3.12-slim"),
        },
        "container by digest, no tag": {
            "target_component": TargetComponent(
                "container", "registry.invalid:5000/team/py@" + H["f"], "", H["f"]
            ),
        },
        "interpreter, lock": {
            "target_component": TargetComponent("interpreter", "cpython", "3.11.2"),
        },
        "interpreter, no lock": {
            "lock": None,
            "metadata": {},
            "vulnerabilities": (),
            "target_component": TargetComponent("interpreter", "cpython", "3.11.2"),
        },
        "an unfixed vulnerability, an odd script name": {
            "vulnerabilities": [replace(VULN, fix_versions=(), aliases=())],
            "script_name": 'dir/na\u00efve "quoted" \\ back\u2603 \U0001f600.py',
        },
    }
    for kind, overrides in kinds.items():
        document = raw(**overrides)
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator

        error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document.decode())
        assert error is None, (kind, error)


TARGETS = {
    "container": CONTAINER,
    "container without digest": TargetComponent("container", "python:3.12-slim", "3.12-slim"),
    "interpreter": TargetComponent("interpreter", "cpython", "3.11.2"),
}
ODD_NAME = 'sub/na\u00efve "q" \\ \u2603 \U0001f600\t.py'


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
@pytest.mark.parametrize("with_lock", [True, False], ids=["lock", "no-lock"])
def test_a_template_patched_document_is_the_document_built_for_that_script(
    target: TargetComponent, with_lock: bool
) -> None:
    """Only the script's component, the serial and the timestamp depend on the script:
    the template path makes the same bytes the builder makes."""
    common: dict[str, Any] = {"target_component": target}
    if not with_lock:
        common.update(lock=None, metadata={}, vulnerabilities=())
    template = raw(**common)
    other = b"print('\\u2603 other script')\n"
    serial = "urn:uuid:9b4b4b4e-0000-4000-8000-000000000001"
    later = datetime(2027, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    patched = from_template(
        json.loads(template),
        script_name=ODD_NAME,
        script_bytes=other,
        serial=serial,
        timestamp=later,
    )
    built = raw(**common, script_name=ODD_NAME, script_bytes=other, serial=serial, timestamp=later)
    assert patched == built
    strictly_valid(patched)
    data = json.loads(patched)
    assert data["metadata"]["component"]["name"] == ODD_NAME
    assert data["metadata"]["timestamp"] == "2027-01-02T03:04:05.678901+00:00"


def test_only_the_scripts_component_names_the_script() -> None:
    """A template holds one script's name and hashes in ``metadata.component`` and
    nowhere else: everything else refers to the script by the constant bom-ref."""
    data = build(script_name="unique-script-name.py")
    assert data["metadata"]["component"]["bom-ref"] == SCRIPT_REF
    del data["metadata"]["component"]
    rest = json.dumps(data)
    assert "unique-script-name" not in rest
    assert blake3.blake3(SCRIPT).hexdigest() not in rest
    assert hashlib.sha256(SCRIPT).hexdigest() not in rest
    assert SCRIPT_REF in rest  # the dependency graph names it by its bom-ref


def test_the_serial_is_the_keys_version_4_uuid() -> None:
    from jhansi.supply.sbom_cache import serial_of

    for key in ("0" * 64, "f" * 64, blake3.blake3(b"x").hexdigest(), "0123456789abcdef" * 4):
        expected = uuid.UUID(bytes=bytes.fromhex(key[:32]), version=4)
        assert serial_of(key) == expected.urn


def _run_deps(*, lock: bool = False, target: str = "3.11.7") -> Any:
    from jhansi.deps.plan import DependencyPlan
    from jhansi.deps.result import Dependencies
    from jhansi.deps.target import Target
    from jhansi.supply.policy import PolicyReport, SupplyCheck
    from jhansi.supply.vulns.interface import AuditResult, Vulnerability

    plan = DependencyPlan(requirements=(), imports=(), requires_python=None, mode="detected")
    platform = Target(target, "cpython", "x86_64", "glibc", "2.36")
    if not lock:
        return Dependencies(plan=plan, target=platform)
    vuln = Vulnerability(
        VULN.id, VULN.aliases, VULN.summary, "requests", VULN.version, VULN.fix_versions
    )
    audit = AuditResult("offline-osv", True, (vuln,), data_date="2026-11-01")
    supply = SupplyCheck(PolicyReport(()), METADATA, audit)
    return Dependencies(plan=plan, target=platform, lock=LOCK, supply=supply)


def _docker(digest: str | None) -> Any:
    from jhansi.sandbox.interface import BackendInfo

    details = {"image": "python:3.12-slim"}
    if digest:
        details["image_digest"] = digest
    return BackendInfo("docker", details)


def test_a_runs_sbom_is_built_once_and_then_read_from_the_cache(tmp_path: Path) -> None:
    from jhansi.supply.sbom import sbom_for_run
    from jhansi.supply.sbom_cache import cache_path, cached_sbom, sbom_key, target_fields

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
    # Other inputs than the script: neither the document nor the template.
    assert cached_sbom(**{**given, "deps": _run_deps(target="3.12.1")}) is None
    assert cached_sbom(**{**given, "backend": _docker(None)}) is None
    key = sbom_key(
        script_name="s.py",
        script_bytes=b"print(1)\n",
        deps=given["deps"],
        target=target_fields(given["deps"], None, "python:3.12-slim"),
    )
    path = cache_path(tmp_path, key)
    assert path.read_bytes() == built
    path.write_bytes(built[: len(built) // 2])  # damaged: not returned, made again
    again = cached_sbom(**given)  # from the template
    assert again is not None
    strictly_valid(again)
    assert json.loads(again)["serialNumber"] == json.loads(built)["serialNumber"]
    assert path.read_bytes() == again
    path.write_bytes(b"{")  # and with no template either: built again
    for template in tmp_path.glob("sbom/*.template.cdx.json"):
        template.unlink()
    assert cached_sbom(**given) is None
    rebuilt = sbom_for_run(**given)
    assert json.loads(rebuilt)["serialNumber"] == json.loads(built)["serialNumber"]
    assert cached_sbom(**given) == rebuilt


@pytest.mark.parametrize(
    "backend", [None, _docker(None), _docker(H["f"])], ids=["interpreter", "container", "digest"]
)
def test_a_new_script_on_known_dependencies_gets_its_document_from_the_template(
    tmp_path: Path, backend: Any
) -> None:
    from jhansi._version import __version__
    from jhansi.supply.sbom import _target_component, _uv_version, sbom_for_run
    from jhansi.supply.sbom_cache import cached_sbom, sbom_key, serial_of, target_fields

    deps = _run_deps(lock=True)
    given: dict[str, Any] = {
        "deps": deps,
        "backend": backend,
        "image": "python:3.12-slim",
        "cache_dir": tmp_path,
    }
    first = sbom_for_run(script_name="first.py", script_bytes=SCRIPT, **given)
    strictly_valid(first)
    second_bytes = b"import requests  # \xe2\x98\x83 another script\n"
    second = cached_sbom(script_name=ODD_NAME, script_bytes=second_bytes, **given)
    assert second is not None
    strictly_valid(second)
    data = json.loads(second)
    key = sbom_key(
        script_name=ODD_NAME,
        script_bytes=second_bytes,
        deps=deps,
        target=target_fields(deps, backend, "python:3.12-slim"),
    )
    assert data["serialNumber"] == serial_of(key) != json.loads(first)["serialNumber"]
    subject = data["metadata"]["component"]
    assert subject["name"] == ODD_NAME
    assert subject["hashes"] == [
        {"alg": "BLAKE3", "content": blake3.blake3(second_bytes).hexdigest()},
        {"alg": "SHA-256", "content": hashlib.sha256(second_bytes).hexdigest()},
    ]
    # Byte for byte what the builder makes for the second script, at the same moment.
    assert second == build_sbom(
        script_name=ODD_NAME,
        script_bytes=second_bytes,
        lock=deps.lock,
        metadata=deps.supply.metadata,
        target_component=_target_component(deps, backend, "python:3.12-slim"),
        vulnerabilities=deps.supply.audit.vulnerabilities,
        tools={"jhansi": __version__, "uv": _uv_version()},
        serial=data["serialNumber"],
        timestamp=datetime.fromisoformat(data["metadata"]["timestamp"]),
    )
    # Kept under its own key: a repeat of the second script is the same bytes.
    assert cached_sbom(script_name=ODD_NAME, script_bytes=second_bytes, **given) == second
    assert sbom_for_run(script_name=ODD_NAME, script_bytes=second_bytes, **given) == second


def test_the_template_is_keyed_by_what_the_sbom_takes_from_the_lock(tmp_path: Path) -> None:
    """Another script's lock file (its header names that script: another digest) pinning
    the same packages shares the template; other pins, digests or requirements do not."""
    from jhansi.supply.sbom import sbom_for_run
    from jhansi.supply.sbom_cache import cached_sbom

    deps = _run_deps(lock=True)
    given: dict[str, Any] = {"backend": None, "image": "python:3.12-slim", "cache_dir": tmp_path}
    sbom_for_run(script_name="a.py", script_bytes=b"1\n", deps=deps, **given)

    def other(**changes: Any) -> bytes | None:
        changed = replace(deps, lock=replace(LOCK, **changes))
        return cached_sbom(script_name="b.py", script_bytes=b"2\n", deps=changed, **given)

    assert other(digest="2" * 64, path=Path("/project/pylock.b.toml")) is not None
    assert other(packages=LOCK.packages[:-1]) is None
    *same, last = LOCK.packages
    assert other(packages=(*same, replace(last, version="1.1"))) is None
    wheel = LockedWheel("weird-1.0-py3-none-any.whl", "u4", (H["f"],))
    assert other(packages=(*same, replace(last, wheels=(wheel,)))) is None
    assert other(requirements=("requests>=2",)) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],
        lambda text: "[]",
        lambda text: text.replace(f'"{SCRIPT_REF}"', '"someone-else"'),
        lambda text: text.replace('"specVersion": "1.6"', '"specVersion": "1.5"'),
        lambda text: json.dumps({**json.loads(text), "metadata": {"component": {}}}),
    ],
    ids=["truncated", "not-a-bom", "other-ref", "other-version", "no-subject"],
)
def test_a_damaged_template_is_ignored_and_built_again(tmp_path: Path, damage: Any) -> None:
    from jhansi.supply.sbom import sbom_for_run
    from jhansi.supply.sbom_cache import cached_sbom, target_fields, template_key, template_path

    deps = _run_deps(lock=True)
    given: dict[str, Any] = {
        "deps": deps,
        "backend": None,
        "image": "python:3.12-slim",
        "cache_dir": tmp_path,
    }
    first = sbom_for_run(script_name="a.py", script_bytes=b"print(1)\n", **given)
    path = template_path(
        tmp_path, template_key(deps=deps, target=target_fields(deps, None, "python:3.12-slim"))
    )
    assert path.read_bytes() == first
    path.write_text(damage(first.decode()))
    assert cached_sbom(script_name="b.py", script_bytes=b"print(2)\n", **given) is None
    built = sbom_for_run(script_name="b.py", script_bytes=b"print(2)\n", **given)
    strictly_valid(built)
    assert path.read_bytes() == built  # the template is whole again
    third = cached_sbom(script_name="c.py", script_bytes=b"print(3)\n", **given)
    assert third is not None
    strictly_valid(third)
    assert json.loads(third)["metadata"]["component"]["name"] == "c.py"


_LIGHT_PATH = """
import json, pickle, sys
from pathlib import Path
from jhansi.supply.sbom_cache import cached_sbom

deps = pickle.loads(Path({deps!r}).read_bytes())
document = cached_sbom(
    script_name="new.py",
    script_bytes=b"print('new')\\n",
    deps=deps,
    backend=None,
    image="python:3.12-slim",
    cache_dir=Path({cache!r}),
)
print(json.dumps({{
    "name": json.loads(document)["metadata"]["component"]["name"] if document else None,
    "loaded": sorted(sys.modules),
}}))
"""


def test_the_template_path_imports_no_cyclonedx(tmp_path: Path) -> None:
    """What the runner calls first (``sbom_cache.cached_sbom``) makes a new script's
    document from the template without importing the builder or the CycloneDX library."""
    import pickle

    from jhansi.supply.sbom import sbom_for_run

    deps = _run_deps(lock=True)
    cache = tmp_path / "cache"
    sbom_for_run(
        script_name="first.py",
        script_bytes=SCRIPT,
        deps=deps,
        backend=None,
        image="python:3.12-slim",
        cache_dir=cache,
    )
    (tmp_path / "deps.pickle").write_bytes(pickle.dumps(deps))
    code = _LIGHT_PATH.format(deps=str(tmp_path / "deps.pickle"), cache=str(cache))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["name"] == "new.py"
    heavy = {"jhansi.supply.sbom", "jhansi.supply.licenses", "packageurl", "jsonschema"}
    loaded = set(found["loaded"])
    assert not {m for m in loaded if m.split(".")[0] == "cyclonedx"}
    assert not heavy & loaded, sorted(heavy & loaded)
