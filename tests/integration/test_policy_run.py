"""The policy end to end: real locks from the index, real OSV records, real runs on bubblewrap.

The advisory data is the fixture copy of real OSV records (tests/fixtures/advisory-database);
every lock is made by the real uv against the real package index.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jhansi.trust import trust
from tests.conftest import run_jhansi

ROOT = Path(__file__).resolve().parents[2]
ADVISORIES = ROOT / "tests" / "fixtures" / "advisory-database"

VULNERABLE = """\
# /// script
# dependencies = ["requests==2.19.1"]
# ///
import requests

print("requests", requests.__version__)
"""

CLEAN = """\
# /// script
# dependencies = []
# ///
print("clean")
"""

pytestmark = pytest.mark.network


def _project(root: Path, policy: str = "") -> Path:
    """A project whose advisory data is the one real record for CVE-2018-18074.

    requests 2.19.1 pins old idna and urllib3 releases with advisories of their own;
    the data is cut down to the one record the cases are about.
    """
    root.mkdir(parents=True, exist_ok=True)
    data = root / "osv" / "requests"
    data.mkdir(parents=True, exist_ok=True)
    record = ADVISORIES / "vulns" / "requests" / "PYSEC-2018-28.yaml"
    (data / record.name).write_bytes(record.read_bytes())
    (root / "jhansi.toml").write_text(
        f'[sandbox]\nbackend = "bwrap"\n[policy]\nadvisory_db = "osv"\n{policy}'
    )
    trust(root / "jhansi.toml")  # the project chooses the advisory data: the user trusts it
    (root / "vulnerable.py").write_text(VULNERABLE)
    (root / "clean.py").write_text(CLEAN)
    return root


def _runs() -> list[dict[str, object]]:
    proc = run_jhansi("ledger", "log", "--json")
    assert proc.returncode == 0, proc.stderr
    runs: list[dict[str, object]] = json.loads(proc.stdout)["runs"]
    return runs


def test_vulnerable_pin_is_refused_then_ignored_then_refused_when_expired(
    tmp_path: Path, bwrap_path: Path
) -> None:
    project = _project(tmp_path / "p")
    proc = run_jhansi("run", "vulnerable.py", cwd=project)
    assert proc.returncode == 3, proc.stderr
    assert "PYSEC-2018-28" in proc.stderr
    assert "CVE-2018-18074" in proc.stderr
    assert "requests" not in proc.stdout  # nothing ran
    denied = run_jhansi("run", "--json", "vulnerable.py", cwd=project)
    assert denied.returncode == 3
    document = json.loads(denied.stdout)
    assert document["status"] == "error"
    ids = [f["id"] for f in document["policy"]["findings"]]
    assert "PYSEC-2018-28" in ids
    assert document["policy"]["audit"]["source"] == "offline-osv"

    accepted = 'ignore = [{id = "PYSEC-2018-28", reason = "no redirects", until = 2999-12-31}]\n'
    _project(project, accepted)
    ran = run_jhansi("run", "--json", "vulnerable.py", cwd=project)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["stdout"]["text"] == "requests 2.19.1\n"
    assert [f["id"] for f in result["policy"]["ignored"]] == ["PYSEC-2018-28"]
    assert result["policy"]["ignored"][0]["ignored"] == "no redirects"

    expired = 'ignore = [{id = "PYSEC-2018-28", reason = "no redirects", until = 2020-01-01}]\n'
    _project(project, expired)
    again = run_jhansi("run", "vulnerable.py", cwd=project)
    assert again.returncode == 3, again.stderr
    assert "expired on 2020-01-01" in again.stderr

    statuses = [r["status"] for r in _runs()]
    assert statuses.count("denied") == 3
    assert statuses.count("succeeded") == 1


def test_a_warm_run_reuses_its_decision_until_the_advisory_data_changes(
    tmp_path: Path, bwrap_path: Path, jhansi_home: Path
) -> None:
    """The second run reuses the first one's decision (deps/warm.py); new advisory data
    refuses the third, although the script, lock and settings are unchanged."""
    accepted = 'ignore = [{id = "PYSEC-2018-28", reason = "no redirects", until = 2999-12-31}]\n'
    project = _project(tmp_path / "p", accepted)
    first = run_jhansi("run", "--json", "vulnerable.py", cwd=project)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["dependencies"]["lock_reused"] is False
    warm = jhansi_home / "cache" / "warm"
    # Kept under the key made before the lock existed and under the one made with it.
    decided = sorted(warm.iterdir())
    assert len(decided) == 2
    again = run_jhansi("run", "--json", "vulnerable.py", cwd=project)
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    assert document["dependencies"]["lock_reused"] is True
    assert document["dependencies"]["environment_reused"] is True
    assert [f["id"] for f in document["policy"]["ignored"]] == ["PYSEC-2018-28"]
    assert sorted(warm.iterdir()) == decided  # reused, not decided again

    newer = ADVISORIES / "vulns" / "requests" / "PYSEC-2023-74.yaml"
    (project / "osv" / "requests" / newer.name).write_bytes(newer.read_bytes())
    refused = run_jhansi("run", "vulnerable.py", cwd=project)
    assert refused.returncode == 3, refused.stderr
    assert "PYSEC-2023-74" in refused.stderr
    assert "requests" not in refused.stdout  # nothing ran


def test_refusal_is_recorded_with_findings_and_the_ledger_verifies(
    tmp_path: Path, bwrap_path: Path
) -> None:
    project = _project(tmp_path / "p")
    assert run_jhansi("run", "vulnerable.py", cwd=project).returncode == 3
    record = next(r for r in _runs() if r["status"] == "denied")
    shown = run_jhansi("ledger", "show", "--json", str(record["run_id"]))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "PYSEC-2018-28" in text
    assert '"offline-osv"' in text
    assert run_jhansi("ledger", "verify").returncode == 0


def test_licence_deny_rule_refuses(tmp_path: Path, bwrap_path: Path) -> None:
    project = _project(tmp_path / "p", 'licenses.deny = ["Apache-2.0"]\n')
    (project / "vulnerable.py").write_text(
        VULNERABLE.replace("requests==2.19.1", "requests==2.32.3")
    )
    proc = run_jhansi("check", "--json", "vulnerable.py", cwd=project)
    assert proc.returncode == 3, proc.stderr
    (script,) = json.loads(proc.stdout)["scripts"]
    licence = [f for f in script["policy"]["findings"] if f["rule"] == "license"]
    assert any(f["package"] == "requests" and f["severity"] == "deny" for f in licence)


def test_check_several_scripts_lists_findings_per_script(tmp_path: Path, bwrap_path: Path) -> None:
    project = _project(tmp_path / "p")
    proc = run_jhansi("check", "--json", "clean.py", "vulnerable.py", cwd=project)
    assert proc.returncode == 3, proc.stderr
    document = json.loads(proc.stdout)
    assert document["status"] == "denied"
    by_script = {s["script"]: s for s in document["scripts"]}
    assert by_script["clean.py"]["status"] == "ok"
    assert by_script["clean.py"]["policy"]["findings"] == []
    assert by_script["vulnerable.py"]["status"] == "denied"
    assert "PYSEC-2018-28" in {f["id"] for f in by_script["vulnerable.py"]["policy"]["findings"]}
    frozen = run_jhansi("check", "--frozen", "--json", "clean.py", cwd=project)
    assert frozen.returncode == 0, frozen.stderr
    assert json.loads(frozen.stdout)["status"] == "ok"


def test_check_frozen_refuses_a_missing_lock(tmp_path: Path, bwrap_path: Path) -> None:
    project = _project(tmp_path / "p")
    (project / "fresh.py").write_text(VULNERABLE.replace("requests==2.19.1", "idna==3.10"))
    proc = run_jhansi("check", "--frozen", "fresh.py", cwd=project)
    assert proc.returncode == 7, proc.stderr
    assert "jhansi lock" in proc.stderr


def test_sbom_of_a_run_and_of_a_script_validate(tmp_path: Path, bwrap_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    accepted = 'ignore = [{id = "PYSEC-2018-28", reason = "test", until = 2999-12-31}]\n'
    project = _project(tmp_path / "p", accepted)
    validator = JsonStrictValidator(SchemaVersion.V1_6)
    ran = run_jhansi("run", "--sbom", "run.cdx.json", "vulnerable.py", cwd=project)
    assert ran.returncode == 0, ran.stderr
    written = run_jhansi("sbom", "vulnerable.py", "-o", "script.cdx.json", cwd=project)
    assert written.returncode == 0, written.stderr
    run_id = next(r["run_id"] for r in _runs() if r["status"] == "succeeded")
    shown = json.loads(run_jhansi("ledger", "show", "--json", str(run_id)).stdout)
    start = next(r for r in shown["records"] if r["kind"] == "exec.start")["body"]
    recorded = (project / "run.cdx.json").read_bytes()
    import blake3

    assert start["sbom"]["blake3"] == blake3.blake3(recorded).hexdigest()
    assert start["policy"]["audit"]["source"] == "offline-osv"
    assert start["policy"]["audit"]["data_date"]  # the offline data's date is recorded
    assert [f["id"] for f in start["policy"]["ignored"]] == ["PYSEC-2018-28"]
    # A new script on the same dependencies (its own lock file, naming it, pins the
    # same packages): its document is made from the template the run kept, not built.
    odd = 'na\u00efve "quoted" \\ \u2603.py'
    (project / odd).write_text(VULNERABLE + 'print("another script")\n')
    other = run_jhansi("sbom", odd, "-o", "other.cdx.json", cwd=project)
    assert other.returncode == 0, other.stderr
    (template,) = (tmp_path / "jhansi-home" / "cache" / "sbom").glob("*.template.cdx.json")
    assert json.loads(template.read_text())["metadata"]["component"]["name"] == "vulnerable.py"
    for name in ("run.cdx.json", "script.cdx.json", "other.cdx.json"):
        text = (project / name).read_text()
        assert validator.validate_str(text) is None, name
        bom = json.loads(text)
        assert bom["specVersion"] == "1.6"
        purls = {c.get("purl") for c in bom["components"]}
        assert "pkg:pypi/requests@2.19.1" in purls
        assert any(v["id"] == "PYSEC-2018-28" for v in bom.get("vulnerabilities", []))
    made = json.loads((project / "other.cdx.json").read_text())
    assert made["metadata"]["component"]["name"] == odd
    assert made["serialNumber"] != json.loads(recorded)["serialNumber"]
    assert made["components"] == json.loads(recorded)["components"]


def test_pip_audit_path_against_a_loopback_osv_server_finds_the_same(
    tmp_path: Path, bwrap_path: Path
) -> None:
    """pip-audit's OSV service, pointed (PIP_AUDIT_OSV_URL, then [policy] osv_url) at a
    real HTTP server on loopback that answers from the same OSV records."""
    from tests.osv_server import serve_osv

    project = _project(tmp_path / "p")
    online = '[policy]\nvulnerability_service = "osv"\n'
    (project / "jhansi.toml").write_text('[sandbox]\nbackend = "bwrap"\n' + online)
    trust(project / "jhansi.toml")
    with serve_osv(project / "osv") as url:
        by_env = run_jhansi(
            "check", "--json", "vulnerable.py", cwd=project, env={"PIP_AUDIT_OSV_URL": url}
        )
        (project / "jhansi.toml").write_text(
            '[sandbox]\nbackend = "bwrap"\n' + online + f'osv_url = "{url}"\n'
        )
        trust(project / "jhansi.toml")
        by_config = run_jhansi("check", "--json", "vulnerable.py", cwd=project)
    for proc in (by_env, by_config):
        assert proc.returncode == 3, proc.stderr
        (script,) = json.loads(proc.stdout)["scripts"]
        assert script["policy"]["audit"]["source"] == "osv"
        assert script["policy"]["audit"]["location"] == url
        ids = {f["id"] for f in script["policy"]["findings"] if f["rule"] == "vulnerability"}
        assert ids == {"PYSEC-2018-28"}
