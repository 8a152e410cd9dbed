"""Masks never write on the host: a hostile project's masked-name links, on every backend.

A cloned repository can carry symbolic links whose names match a mask. A mount over
such a link follows it: bwrap mounts after pivot_root with the host's root at
/oldroot, and created an empty file at the link's target on the host on every run
(``--rw`` or not); a dangling ``.ssh -> /nonexistent`` broke every later run. This
runs a project full of such links twice through ``jhansi run`` and checks that the
runs succeed, nothing was created or touched at any target on the host, the links
are still links, and secrets in upper case (or behind a link into the project, or
in a FIFO) are not readable inside. On gVisor a masked FIFO is hidden by the
copy-on-write /work's mask layer, and refused where masks are mounts (its gofer
would open it, and block).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from jhansi.errors import ExitCode
from tests.conftest import (
    BACKENDS,
    backend_env,
    prepare_jhansi_home,
    require_backend,
    run_jhansi,
)

CANARY = "jhansi-canary-mask-51c9"

#: Runs inside the sandbox: reads every masked path (without blocking on a FIFO) and
#: reports which ones showed the canary.
PROBE = f"""\
import json, os

seen, errors = [], {{}}
for path in (
    "/work/.ENV", "/work/sub/server.PEM", "/work/sub/ID_RSA", "/work/.env",
    "/work/config/prod.txt", "/work/id_rsa", "/work/pipe.key", "/work/.git/config",
):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        if {CANARY!r}.encode() in data:
            seen.append(path)
    except OSError as exc:
        errors[path] = exc.strerror
for path in ("/work/.aws", "/work/.ssh"):
    try:
        for name in os.listdir(path):
            with open(os.path.join(path, name), "rb") as handle:
                if {CANARY!r}.encode() in handle.read():
                    seen.append(path + "/" + name)
    except OSError as exc:
        errors[path] = exc.strerror
print(json.dumps({{"seen": seen, "errors": errors}}))
"""


@dataclass(frozen=True)
class Hostile:
    """A project holding masked-name links, and the host paths they point to."""

    name: str
    env: dict[str, str]
    project: Path
    outside: Path
    links: dict[str, str]
    """Link name in the project -> what it points to."""
    absent: tuple[Path, ...]
    """Host paths that must not exist after the runs."""
    touched: tuple[Path, ...]
    """Host paths that exist and must keep their mtime (and content)."""


@pytest.fixture(params=BACKENDS)
def hostile(request: pytest.FixtureRequest, shared_dir: Path) -> Hostile:
    name = request.param
    require_backend(request, name)
    base = shared_dir / f"{name}-mask-links"
    base.mkdir()
    project = base / "project"
    (project / "sub").mkdir(parents=True)
    (project / "config").mkdir()
    (project / ".git").mkdir()
    (project / ".git" / "config").write_text(f"token = {CANARY}\n")
    outside = base / "outside"
    (outside / "hostdir").mkdir(parents=True)
    (outside / "hostdir" / "credentials").write_text(CANARY)
    (outside / "hostfile").write_text(CANARY)
    nowhere = Path(f"/nonexistent-{secrets.token_hex(6)}")
    links = {
        # Absolute, to a host path outside the project (missing, so a creat() makes it).
        "abs.pem": str(outside / "created-abs"),
        # Through the host's root as bwrap sees it after pivot_root.
        "oldroot.pem": f"/oldroot{outside}/created-oldroot",
        # Relative, escaping the project; and relative into /oldroot.
        "rel.key": "../outside/created-rel",
        "relold.key": f"../oldroot{outside}/created-relold",
        # Dangling at the host's root; to a host directory; to a host file.
        ".ssh": str(nowhere),
        ".aws": str(outside / "hostdir"),
        "id_rsa": str(outside / "hostfile"),
        # Into the project: the target is masked in the link's place.
        ".env": "config/prod.txt",
    }
    for link, points_to in links.items():
        (project / link).symlink_to(points_to)
    (project / "config" / "prod.txt").write_text(f"KEY={CANARY}\n")
    (project / ".ENV").write_text(f"KEY={CANARY}\n")
    (project / "sub" / "server.PEM").write_text(CANARY)
    (project / "sub" / "ID_RSA").write_text(CANARY)
    if name != "gvisor":  # gVisor refuses it: see the end of the test
        os.mkfifo(project / "pipe.key")
    (project / "probe.py").write_text(PROBE)
    prepare_jhansi_home(name, base / "jhansi-home")
    absent = (
        outside / "created-abs",
        outside / "created-oldroot",
        outside / "created-rel",
        outside / "created-relold",
        base / "oldroot",
        nowhere,
    )
    touched = (outside, outside / "hostdir", outside / "hostfile")
    env = {**backend_env(name), "JHANSI_HOME": str(base / "jhansi-home")}
    return Hostile(name, env, project, outside, links, absent, touched)


def test_masked_links_write_nothing_on_the_host(hostile: Hostile) -> None:
    assert all(not p.exists() for p in hostile.absent)
    before = {p: p.stat().st_mtime_ns for p in hostile.touched}
    reports = []
    for _ in range(2):  # the bug repeated on every run
        proc = run_jhansi(
            "run",
            "--json",
            "--project",
            str(hostile.project),
            str(hostile.project / "probe.py"),
            env=hostile.env,
            cwd=hostile.project,
            timeout=180,
        )
        assert proc.stdout, f"no JSON on stdout; stderr: {proc.stderr}"
        doc = json.loads(proc.stdout)
        detail = f"{doc.get('stdout')}\n{doc.get('stderr')}\njhansi stderr: {proc.stderr}"
        assert (proc.returncode, doc["status"]) == (0, "succeeded"), detail
        reports.append((json.loads(doc["stdout"]["text"].strip().splitlines()[-1]), detail))
    created = [str(p) for p in hostile.absent if os.path.lexists(p)]
    assert created == [], "a mask created files on the host"
    for report, detail in reports:
        assert report["seen"] == [], detail
    assert {p: p.stat().st_mtime_ns for p in hostile.touched} == before
    assert (hostile.outside / "hostfile").read_text() == CANARY
    assert [p.name for p in (hostile.outside / "hostdir").iterdir()] == ["credentials"]
    for link, points_to in hostile.links.items():
        assert str((hostile.project / link).readlink()) == points_to
    if hostile.name == "gvisor":
        # gVisor's gofer opens a mount point before mounting over it, and a FIFO
        # blocked it forever (the container never started). The default /work is an
        # overlay whose mask layer hides the FIFO with a plain stand-in: nothing mounts
        # over it and nothing opens it, and the run ends promptly, the secret unread.
        os.mkfifo(hostile.project / "pipe.key")
        proc = run_jhansi(
            "run",
            "--json",
            "--project",
            str(hostile.project),
            str(hostile.project / "probe.py"),
            env=hostile.env,
            cwd=hostile.project,
            timeout=60,
        )
        doc = json.loads(proc.stdout)
        assert (proc.returncode, doc["status"]) == (0, "succeeded"), proc.stderr
        assert "copy-on-write" in doc["enforcement"]["work"]
        assert json.loads(doc["stdout"]["text"].strip().splitlines()[-1])["seen"] == []
        # Where /work cannot be an overlay (a path Docker's volume options cannot carry),
        # masks are mounts again: the FIFO is refused, promptly.
        plain = hostile.project.parent / "no,overlay"
        plain.mkdir()
        (plain / "probe.py").write_text(PROBE)
        os.mkfifo(plain / "pipe.key")
        proc = run_jhansi(
            "run",
            "--project",
            str(plain),
            str(plain / "probe.py"),
            env=hostile.env,
            cwd=plain,
            timeout=60,
        )
        assert proc.returncode == ExitCode.SANDBOX, proc.stderr
        assert "pipe.key" in proc.stderr
        assert "FIFO" in proc.stderr
