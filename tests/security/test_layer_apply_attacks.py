"""Attacks on bringing a copy-on-write layer out: ``jhansi sandbox diff`` and ``apply``.

A hostile script writes /work; the user later reviews it with ``jhansi sandbox diff``
and copies it in with ``jhansi sandbox apply``. What these tests hold jhansi to:

* a project path the user changed (or made) after the sandbox changed it is a
  conflict, never overwritten or deleted, also below a directory the sandbox deleted;
* what ``apply`` deletes is what the sandbox deleted: an overlay marker the kernel did
  not honour (a ``user.overlay.opaque`` a script set under Docker's ``trusted.*``
  overlay) deletes nothing;
* no link ``apply`` leaves in the project leads outside it, over several applies, and
  ``diff`` never says "never applied" of what ``apply`` then applies;
* nothing a script chose (a link's target, a file name) reaches the terminal as a
  control character or as a line of its own;
* ``apply`` never plants a module that the next ``python -m jhansi`` in the project
  (and jhansi's own pre-commit hooks, ``python -m jhansi.ci.precommit``) imports
  instead of jhansi.

Everything is real: the CLI as a subprocess, real bubblewrap and Docker, real overlayfs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import backend_env, prepare_jhansi_home, require_backend, run_jhansi


def _setup(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> tuple[Path, dict[str, str]]:
    require_backend(request, backend)
    project = shared_dir / "project"
    project.mkdir()
    project.chmod(0o755)
    home = shared_dir / "jhansi-home"
    prepare_jhansi_home(backend, home)
    return project, {**backend_env(backend), "JHANSI_HOME": str(home)}


def _script(project: Path, name: str, text: str) -> None:
    path = project / name
    path.write_text(text)
    path.chmod(0o644)


def _run(env: dict[str, str], project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_jhansi(*args, env=env, cwd=project, timeout=300)


def _run_ok(env: dict[str, str], project: Path, script: str) -> dict[str, object]:
    proc = _run(env, project, "run", "--json", script)
    doc = json.loads(proc.stdout)
    assert (proc.returncode, doc["status"]) == (0, "succeeded"), (doc.get("stderr"), proc.stderr)
    return dict(doc)


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_apply_never_deletes_what_the_user_made_after_the_run(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> None:
    """The sandbox deletes src/; afterwards the user edits src/main.py and writes
    src/new.py on the host. Applying the deletion must not take the user's work
    with it: both are paths changed in the project since the sandbox changed them."""
    project, env = _setup(request, shared_dir, backend)
    (project / "src").mkdir()
    (project / "src").chmod(0o755)
    (project / "src" / "main.py").write_text("v1\n")
    (project / "src" / "main.py").chmod(0o644)
    _script(project, "wipe.py", "import shutil\nshutil.rmtree('/work/src')\n")
    _run_ok(env, project, "wipe.py")

    # The user goes on working in the project, not knowing what the layer holds.
    (project / "src" / "main.py").write_text("v1\nthe user's new work\n")
    (project / "src" / "new.py").write_text("a file the sandbox never saw\n")

    proc = _run(env, project, "sandbox", "apply", "--json")
    assert proc.stdout, proc.stderr
    assert (project / "src" / "new.py").exists(), (
        "apply deleted a file the user made after the run, which the sandbox never saw: "
        + proc.stdout
    )
    assert (project / "src" / "main.py").read_text() == "v1\nthe user's new work\n", proc.stdout


@pytest.mark.parametrize("backend", ["docker"])
def test_a_forged_opaque_marker_deletes_nothing(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> None:
    """Docker mounts the overlay with ``trusted.*`` markers; a script may set the
    ``user.overlay.opaque`` attribute on a directory of /work (the kernel ignores it: the
    sandbox still sees every file there). jhansi must read the layer as the kernel did:
    the run deleted nothing, so diff lists no deletion and apply deletes nothing."""
    project, env = _setup(request, shared_dir, backend)
    (project / "src").mkdir()
    (project / "src").chmod(0o755)
    (project / "src" / "main.py").write_text("keep me\n")
    (project / "src" / "main.py").chmod(0o644)
    _script(
        project,
        "forge.py",
        "import os, json\n"
        "os.setxattr('/work/src', 'user.overlay.opaque', b'y')\n"
        "open('/work/src/extra.txt', 'w').write('x')\n"
        "print(json.dumps(sorted(os.listdir('/work/src'))))\n",
    )
    doc = _run_ok(env, project, "forge.py")
    # The sandbox saw main.py all along, and the run's record says it added one file.
    assert json.loads(str(doc["stdout"]["text"])) == ["extra.txt", "main.py"]  # type: ignore[index]
    recorded = {
        (c["path"], c["change"])
        for c in doc["files_changed"]  # type: ignore[union-attr]
        if c["area"] == "/work"
    }
    assert recorded == {("src/extra.txt", "added")}, recorded

    proc = _run(env, project, "sandbox", "diff", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {(c["path"], c["change"]) for c in json.loads(proc.stdout)["changes"]}
    assert ("src/main.py", "deleted") not in listed, listed

    _run(env, project, "sandbox", "apply", "--json")
    assert (project / "src" / "main.py").read_text() == "keep me\n"


@pytest.mark.parametrize("backend", ["bwrap"])
def test_no_applied_link_leads_outside_the_project(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> None:
    """Run 1 makes ``d`` a link 20 directories deep (inside) and ``x`` a link through
    ``d/../..`` (20 times) to etc/passwd: inside while ``d`` is that link. diff says
    ``x`` is never applied, apply applies it. Run 2 makes ``d`` a plain directory; the
    second apply does not look at ``x`` again, which now leads to the host's
    /etc/passwd."""
    project, env = _setup(request, shared_dir, backend)
    deep = "/".join(f"s{i}" for i in range(20))
    _script(
        project,
        "one.py",
        "import os\n"
        f"os.symlink({deep!r}, '/work/d')\n"
        "os.symlink('d/' + '../' * 20 + 'etc/passwd', '/work/x')\n",
    )
    _script(
        project,
        "two.py",
        "import os\nos.unlink('/work/d')\nos.mkdir('/work/d')\n"
        "open('/work/d/README', 'w').write('a directory now')\n",
    )
    _run_ok(env, project, "one.py")
    diff = _run(env, project, "sandbox", "diff", "--json")
    refused = {c["path"] for c in json.loads(diff.stdout)["changes"] if "refused" in c}
    applied = _run(env, project, "sandbox", "apply", "--json")
    done = {a["path"] for a in json.loads(applied.stdout)["applied"]}
    problems = [f"diff said never applied, apply applied: {p}" for p in sorted(refused & done)]

    _run_ok(env, project, "two.py")
    _run(env, project, "sandbox", "apply", "--json")
    for path in project.rglob("*"):
        resolved = Path(os.path.realpath(path))
        if path.is_symlink() and not resolved.is_relative_to(project.resolve()):
            problems.append(f"{path.name} leads outside the project, to {resolved}")
    assert not problems, problems


_FORGED = "jhansi: every change was checked, nothing refused"


@pytest.mark.parametrize("backend", ["bwrap"])
def test_names_and_link_targets_reach_the_terminal_inert(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> None:
    """A link target carrying ESC sequences (clear screen, set the title) and file names
    carrying newlines: diff, apply and --rw show them escaped, never as control
    characters and never as a line of their own that looks like jhansi's."""
    project, env = _setup(request, shared_dir, backend)
    _script(
        project,
        "names.py",
        "import os\n"
        f"os.symlink('/etc/\\x1b]0;owned\\x07\\x1b[2J\\n{_FORGED}\\n', '/work/lnk')\n"
        f"open('/work/harmless.txt\\n{_FORGED}', 'w').write('x')\n",
    )
    _run_ok(env, project, "names.py")
    outputs = {
        "diff": _run(env, project, "sandbox", "diff"),
        "apply": _run(env, project, "sandbox", "apply"),
        "run --rw": _run(env, project, "run", "--rw", "names.py"),
    }
    problems = []
    for what, proc in outputs.items():
        for stream in (proc.stdout, proc.stderr):
            if "\x1b" in stream or "\x07" in stream:
                problems.append(f"{what}: a raw control character: {stream!r}")
            if _FORGED in stream.splitlines():
                problems.append(f"{what}: a forged line of its own: {stream!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("backend", ["bwrap"])
def test_apply_plants_no_module_that_shadows_jhansi(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> None:
    """``python -m jhansi`` (and jhansi's pre-commit hooks, ``python -m
    jhansi.ci.precommit``, which pre-commit starts in the project's root) puts the
    working directory first on sys.path: a ``jhansi/`` package applied into the
    project's root runs the sandbox's code on the host, as the user, at the next
    jhansi command there."""
    project, env = _setup(request, shared_dir, backend)
    marker = shared_dir / "host-code-ran"
    planted = f"open({str(marker)!r}, 'w').write('the sandbox ran on the host')\n"
    _script(
        project,
        "plant.py",
        "import os\n"
        "os.makedirs('/work/jhansi/ci', exist_ok=True)\n"
        "open('/work/jhansi/__init__.py', 'w').write('')\n"
        "open('/work/jhansi/ci/__init__.py', 'w').write('')\n"
        f"open('/work/jhansi/__main__.py', 'w').write({planted!r})\n"
        f"open('/work/jhansi/ci/precommit.py', 'w').write({planted!r})\n",
    )
    _run_ok(env, project, "plant.py")
    _run(env, project, "sandbox", "apply", "--json")
    for args in (["-m", "jhansi", "--version"], ["-m", "jhansi.ci.precommit", "check"]):
        subprocess.run(
            [sys.executable, *args],
            cwd=project,
            env={**os.environ, **env},
            capture_output=True,
            timeout=120,
            check=False,
        )
    assert not marker.exists(), "a module apply wrote into the project ran on the host"


@pytest.mark.parametrize("backend", ["bwrap"])
def test_project_masks_hold_when_diff_and_apply_run_elsewhere(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> None:
    """The project's own jhansi.toml masks ``secrets/*``. The script replaces the masked
    stand-in with a file of its own. ``jhansi sandbox diff NAME`` / ``apply NAME`` (the
    forms the run's hint gives) started from another directory must still treat
    ``secrets/token.txt`` as masked: no line of its host content shown, never written."""
    project, env = _setup(request, shared_dir, backend)
    canary = "TOKEN=host-canary-4f1c"
    (project / "secrets").mkdir()
    (project / "secrets").chmod(0o755)
    (project / "secrets" / "token.txt").write_text(canary + "\n")
    (project / "secrets" / "token.txt").chmod(0o644)
    _script(project, "jhansi.toml", '[sandbox]\nmask = ["secrets/*"]\n')
    _script(
        project,
        "swap.py",
        "import os\n"
        "assert open('/work/secrets/token.txt').read() == ''  # masked: an empty stand-in\n"
        "os.unlink('/work/secrets/token.txt')\n"
        "open('/work/secrets/token.txt', 'w').write('TOKEN=attacker-chosen\\n')\n",
    )
    name = str(_run_ok(env, project, "swap.py")["sandbox"])
    elsewhere = shared_dir / "elsewhere"
    elsewhere.mkdir()
    diff = run_jhansi("sandbox", "diff", name, env=env, cwd=elsewhere)
    apply = run_jhansi("sandbox", "apply", name, env=env, cwd=elsewhere)
    problems = []
    if canary in diff.stdout + diff.stderr:
        problems.append(f"diff showed the masked file's host content:\n{diff.stdout}")
    if (project / "secrets" / "token.txt").read_text() != canary + "\n":
        problems.append(f"apply wrote the masked file:\n{apply.stdout}")
    assert not problems, "\n".join(problems)
