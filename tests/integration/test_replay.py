"""``jhansi replay``: recorded runs run again from the ledger alone, and compared.

Real runs on bubblewrap (one on rootful Docker, from the 0.1.0 fixture ledger), real
uv against the real index for the dependency case, the fixture OSV record for the
policy's refusal. Each test has its own JHANSI_HOME (tests/conftest.py), so its
ledger and environment cache are its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jhansi.deps.install import remove_tree
from jhansi.errors import ExitCode, ReplayError
from jhansi.trust import trust
from tests.conftest import run_jhansi

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ledger-0.1.0"
ADVISORIES = ROOT / "tests" / "fixtures" / "advisory-database"
#: Runs of the fixture ledger (its README.md lists them).
DET_BWRAP = "001a245735540-f6e5914fc3d0c285"
CLOCK = "001a2457356e4-9b413b9f013fed18"
REFUSED = "001a245735add-478859715b803345"
DET_DOCKER = "001a245736e1e-592108b8cacfa33c"

BWRAP = {"JHANSI_SANDBOX_BACKEND": "bwrap"}
#: The fixture ledger's signing key: a replay runs only what a trusted key signed.
KEY = ("--key", str(FIXTURE / "signing-key.pub.pem"))


def _document(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def _run(script: Path, *options: str, args: tuple[str, ...] = ()) -> str:
    """Run ``script`` with ``jhansi run --json OPTIONS SCRIPT ARGS``; its run id."""
    proc = run_jhansi("run", "--json", *options, str(script), *args, env=BWRAP)
    assert proc.returncode == 0, proc.stderr
    run_id: str = _document(proc)["run_id"]
    return run_id


def _replay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_jhansi("replay", "--json", *args, env=env)


def _checks(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["what"]: check for check in document["checks"]}


def _show(run_id: str, *args: str) -> dict[str, Any]:
    proc = run_jhansi("ledger", "show", "--json", run_id, *args)
    assert proc.returncode == 0, proc.stderr
    return _document(proc)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    (root / "det.py").write_text(
        "import os, sys\n"
        "print('args', sys.argv[1:], 'greeting', os.environ.get('GREETING'))\n"
        "with open('out.txt', 'w') as f:\n"
        "    f.write('42\\n')\n"
    )
    (root / "noisy.py").write_text(
        "import random, time\nprint('same line')\nprint('time', time.time(), random.random())\n"
    )
    return root


@pytest.mark.bwrap
def test_a_deterministic_run_replays_identically_and_the_replay_is_recorded_and_linked(
    bwrap_path: Path, project: Path
) -> None:
    original = _run(project / "det.py", "--env", "GREETING=hello", args=("one", "--two"))
    # The value the user passed is recorded (so that a replay can restore it).
    start = _show(original)["records"][0]["body"]
    assert start["env_values"]["format"] == "json"
    proc = _replay(original)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = _document(proc)
    assert document["status"] == "same"
    assert document["differs"] == []
    checks = _checks(document)
    for what in ("code", "exit status", "stdout", "stderr", "files changed", "backend"):
        assert checks[what]["status"] == "same", checks[what]
    assert list(checks["files changed"]["replayed"]) == ["/work/out.txt"]
    assert any("/work" in item for item in document["not_restored"])
    # Recorded like any run, in an ephemeral sandbox, linked to the original.
    replay_id = document["replay_id"]
    assert replay_id
    assert replay_id != original
    shown = _show(replay_id)
    assert shown["replay_of"] == original
    assert shown["records"][0]["body"]["replay_of"] == original
    assert shown["records"][0]["body"]["sandbox"]["ephemeral"] is True
    log = _document(run_jhansi("ledger", "log", "--json"))["runs"]
    assert [r["replay_of"] for r in log] == [None, original]
    human = run_jhansi("replay", original)
    assert human.returncode == 0, human.stderr
    assert "the replay matches the recorded run" in human.stdout
    assert "not restored" in human.stdout


@pytest.mark.bwrap
def test_a_script_printing_the_time_is_reported_as_different_naming_stdout(
    bwrap_path: Path, project: Path
) -> None:
    original = _run(project / "noisy.py")
    proc = _replay(original)
    assert proc.returncode == ExitCode.REPLAY_DIFFERS == 8, proc.stderr
    document = _document(proc)
    assert document["status"] == "differs"
    assert document["differs"] == ["stdout"]
    stdout = _checks(document)["stdout"]
    assert stdout["recorded"]["blake3"] != stdout["replayed"]["blake3"]
    assert stdout["detail"].startswith('first difference at line 2: recorded "time ')
    human = run_jhansi("replay", original)
    assert human.returncode == 8
    assert "DIFFERS stdout" in human.stdout
    assert "the replay differs: stdout" in human.stdout


@pytest.mark.bwrap
@pytest.mark.network
def test_a_replay_after_the_environment_was_deleted_installs_the_same_hashes(
    bwrap_path: Path, project: Path, jhansi_home: Path
) -> None:
    script = project / "withdep.py"
    script.write_text(
        '# /// script\n# dependencies = ["six==1.16.0"]\n# ///\n'
        "import six\nprint(six.__version__)\n"
    )
    original = _run(script)
    recorded = _show(original)["records"][0]["body"]["dependencies"]
    key = recorded["environment"]
    environment = jhansi_home / "cache" / "envs" / key
    assert environment.is_dir()
    remove_tree(environment)  # read-only, as installed
    assert not environment.exists()
    proc = _replay(original, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = _document(proc)
    deps = document["dependencies"]
    assert deps["environment"] == {"recorded": key, "replayed": key, "installed": True}
    assert deps["lock"] == recorded["lock"]["blob"]
    (six,) = deps["packages"]
    assert (six["name"], six["version"]) == ("six", "1.16.0")
    assert six["hashes"] == [
        "sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
    ]
    assert _checks(document)["lock"]["status"] == "same"
    assert (jhansi_home / "cache" / "envs" / key).is_dir()  # installed by uv again
    # With the environment there, the next replay reuses it.
    again = _document(_replay(original))
    assert again["dependencies"]["environment"]["installed"] is False


def _vulnerable_project(root: Path) -> Path:
    root.mkdir(parents=True)
    data = root / "osv" / "requests"
    data.mkdir(parents=True)
    record = ADVISORIES / "vulns" / "requests" / "PYSEC-2018-28.yaml"
    (data / record.name).write_bytes(record.read_bytes())
    (root / "jhansi.toml").write_text(
        '[sandbox]\nbackend = "bwrap"\n[policy]\nadvisory_db = "osv"\n'
    )
    trust(root / "jhansi.toml")
    (root / "vulnerable.py").write_text(
        '# /// script\n# dependencies = ["requests==2.19.1"]\n# ///\nimport requests\n'
    )
    return root


@pytest.mark.bwrap
@pytest.mark.network
def test_a_run_refused_by_policy_replays_to_the_same_refusal(
    bwrap_path: Path, tmp_path: Path
) -> None:
    project = _vulnerable_project(tmp_path / "p")
    refused = run_jhansi("run", "vulnerable.py", cwd=project)
    assert refused.returncode == 3, refused.stderr
    (denied,) = _document(run_jhansi("ledger", "log", "--json"))["runs"]
    # The replay reads the recorded advisory data again (it is still there).
    proc = _replay(denied["run_id"], env=BWRAP)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = _document(proc)
    assert document["kind"] == "refusal"
    checks = _checks(document)
    assert checks["refusal"]["status"] == "same"
    assert checks["refusal"]["replayed"] == {"kind": "PolicyDenied", "exit_code": 3}
    assert checks["policy findings"]["replayed"] == ["PYSEC-2018-28"]
    assert checks["lock"]["status"] == "same"
    replay = _show(document["replay_id"])
    assert [r["kind"] for r in replay["records"]] == ["exec.denied"]
    assert replay["replay_of"] == denied["run_id"]


@pytest.fixture
def old_ledger(tmp_path: Path) -> Path:
    """A copy of the ledger jhansi 0.1.0 recorded (its records were written without
    ``--env`` values); the replays are recorded in this test's own ledger."""
    copy = tmp_path / "ledger-0.1.0"
    shutil.copytree(FIXTURE, copy)
    return copy


@pytest.mark.bwrap
@pytest.mark.network
def test_the_0_1_0_ledger_replays_its_deterministic_clock_and_refused_runs(
    bwrap_path: Path, old_ledger: Path, tmp_path: Path
) -> None:
    source = ("--ledger", str(old_ledger), *KEY)
    det = _replay(DET_BWRAP, *source)
    assert det.returncode == 0, det.stdout + det.stderr
    document = _document(det)
    assert document["status"] == "same"
    assert _checks(document)["files changed"]["recorded"] == {
        "/work/result.txt": "6ecee973eb8139977a713dec1bbab97f047c7ef6023cbef63d856509a438c8ad"
    }
    # Recorded in this user's ledger (the copy's key is not here), linked by run id.
    assert Path(document["ledger"]) != old_ledger
    assert _show(document["replay_id"])["replay_of"] == DET_BWRAP

    clock = _replay(CLOCK, *source)
    assert clock.returncode == 8
    assert _document(clock)["differs"] == ["stdout"]

    # The recorded advisory data (/tmp/fx/proj/osv) is not here: the fixture's record.
    osv = tmp_path / "osv" / "requests"
    osv.mkdir(parents=True)
    record = ADVISORIES / "vulns" / "requests" / "PYSEC-2018-28.yaml"
    (osv / record.name).write_bytes(record.read_bytes())
    refused = _replay(REFUSED, *source, "--advisory-db", str(tmp_path / "osv"), env=BWRAP)
    assert refused.returncode == 0, refused.stdout + refused.stderr
    checks = _checks(_document(refused))
    assert checks["refusal"]["recorded"] == {"kind": "PolicyDenied", "exit_code": 3}
    assert checks["refusal"]["status"] == "same"
    assert checks["policy findings"]["status"] == "same"
    # The source ledger was only read.
    assert (old_ledger / "ledger.jsonl").read_bytes() == (FIXTURE / "ledger.jsonl").read_bytes()


@pytest.mark.docker
def test_the_0_1_0_docker_run_replays_on_its_image_by_id(
    docker_engine: Any, old_ledger: Path
) -> None:
    recorded = "sha256:830895dddc05fbf320275ccb5aa3520e0a738b0f41f37a82f53a524e4b64b65e"
    current = docker_engine.client.images.get(docker_engine.image).id
    proc = _replay(DET_DOCKER, "--ledger", str(old_ledger), *KEY)
    if current == recorded:  # the engine still has the image the run used
        assert proc.returncode == 0, proc.stdout + proc.stderr
        checks = _checks(_document(proc))
        assert checks["backend"]["replayed"] == "docker"
        assert checks["image"] == {
            "what": "image",
            "status": "same",
            "recorded": {"image_digest": recorded},
            "replayed": {"image_digest": recorded},
            "detail": "",
        }
        return
    # The test image was built again since the fixture was recorded: that image is gone.
    assert proc.returncode == 9, proc.stdout + proc.stderr
    assert f"the image the run used, {docker_engine.image} ({recorded})" in proc.stderr
    allowed = _replay(DET_DOCKER, "--ledger", str(old_ledger), *KEY, "--allow-different-image")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    document = _document(allowed)
    assert _checks(document)["image"]["status"] == "allowed"
    notes = _show(document["replay_id"])["records"][0]["body"]["replay_notes"]
    assert notes[0].startswith(f"image: the recorded {docker_engine.image} ({recorded}) is gone")


@pytest.mark.bwrap
def test_values_that_cannot_be_restored_are_named_and_asked_for(
    bwrap_path: Path, project: Path
) -> None:
    original = _run(project / "det.py", "--env", "API_TOKEN=s3cret", "--env", "GREETING=hi")
    start = _show(original)["records"][0]["body"]
    assert start["env_withheld"] == ["API_TOKEN"]  # a credential's value is never recorded
    proc = run_jhansi("replay", original)
    assert proc.returncode == ExitCode.NOT_REPRODUCIBLE == 9
    lines = proc.stderr.strip().splitlines()
    assert lines[-2] == (
        "error: cannot restore the value of API_TOKEN: they look like credentials (their "
        "names or values), so their values were not recorded"
    )
    assert lines[-1].startswith("hint: Pass each one: --env API_TOKEN=VALUE")
    given = _replay(original, "--env", "API_TOKEN=s3cret")
    assert given.returncode == 0, given.stdout + given.stderr


def test_a_0_1_0_record_names_the_variables_it_cannot_restore(old_ledger: Path) -> None:
    """A 0.1.0 record keeps variable names only. The fixture's runs were given none (its
    det.py replays: above); here one of its real start records with a variable of the
    user's added to its names, as a run given ``--env MODE=...`` was recorded then."""
    from jhansi.ledger.read import iter_records
    from jhansi.replay.plan import restore_environment

    (run,) = [
        dict(r.body)
        for r in iter_records(old_ledger)
        if r.kind == "exec.start" and r.body.get("run_id") == DET_BWRAP
    ]
    assert "env_values" not in run  # recorded before values were
    assert restore_environment(run, None, {}, [])[0] == ()  # type: ignore[arg-type]
    sandbox = {**run["sandbox"], "env_names": [*run["sandbox"]["env_names"], "MODE"]}
    body = {**run, "sandbox": sandbox}
    with pytest.raises(ReplayError) as raised:
        restore_environment(body, None, {}, [])  # type: ignore[arg-type]
    assert raised.value.message == (
        "cannot restore the value of MODE: the ledger keeps only their names for this run "
        "(recorded before values were)"
    )
    assert raised.value.hint.startswith("Pass each one: --env MODE=VALUE")
    variables, _ = restore_environment(body, None, {"MODE": "fast"}, [])  # type: ignore[arg-type]
    assert variables == (("MODE", "fast"),)


def test_an_unknown_run_id_is_two_lines_and_exit_2(old_ledger: Path) -> None:
    proc = run_jhansi("replay", "ffffffff", "--ledger", str(old_ledger), *KEY)
    assert proc.returncode == ExitCode.USAGE == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: no run 'ffffffff' in the ledger at ")
    assert lines[1] == "hint: `jhansi ledger log` lists the runs."
    assert "Traceback" not in proc.stderr


def test_a_corrupted_ledger_is_refused_with_exit_5(old_ledger: Path) -> None:
    # Intact, but nothing says whose it is: this machine has no key, none was given.
    unkeyed = run_jhansi("replay", CLOCK, "--ledger", str(old_ledger))
    assert unkeyed.returncode == ExitCode.LEDGER == 5
    assert unkeyed.stderr.splitlines()[0].startswith("error: cannot tell who wrote the ledger")
    path = old_ledger / "ledger.jsonl"
    text = path.read_text()
    assert '"argv":[]' in text
    path.write_text(text.replace('"argv":[]', '"argv":["x"]', 1))  # one record altered
    proc = run_jhansi("replay", CLOCK, "--ledger", str(old_ledger), *KEY)
    assert proc.returncode == ExitCode.LEDGER == 5
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: the ledger at {old_ledger} does not verify: ")
    assert lines[1].startswith("hint: `jhansi ledger verify` lists every problem")
    missing = run_jhansi("replay", CLOCK, "--ledger", str(old_ledger / "nowhere"))
    assert missing.returncode == 5
    assert missing.stderr.splitlines()[0] == f"error: no ledger at {old_ledger / 'nowhere'}"


def test_a_missing_code_blob_is_named(old_ledger: Path) -> None:
    blob = "18e0467f37b70646441c4d17899f7766c7a9de017d7f23a6fd2fa62e92ab4a38"
    (old_ledger / "blobs" / blob[:2] / blob[2:]).unlink()
    proc = run_jhansi("replay", DET_BWRAP, "--ledger", str(old_ledger), *KEY)
    assert proc.returncode == 5
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"error: the recorded code: blob {blob} is missing from " + str(
        old_ledger / "blobs"
    )
    assert lines[1].startswith("hint: Restore the ledger's blobs/ directory")
