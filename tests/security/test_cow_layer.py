"""The default copy-on-write /work through the real CLI: hostile writes stay in the layer.

Without ``--rw`` a script may write anywhere in /work, and every write lands in its
sandbox's layer (overlayfs: bwrap's ``--overlay``, Docker's local overlay volume,
served by gVisor's gofer too), never in the project. A hostile script reads masked
secrets every way it can, plants what the next run or ``sandbox apply`` would obey on
the host (configuration, locks, a version manager's file, a git hook), links out of
the project (absolute, relative, a directory swapped for a link to a host directory),
makes device nodes, FIFOs and names that are not UTF-8, and deletes a file the next
run will be asked to run. The project must be byte for byte what it was, nothing may
appear outside it, the host-side diff, apply and cp must follow none of the links,
and apply must write only the ordinary changes.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from jhansi.errors import ExitCode
from tests.conftest import backend_env, prepare_jhansi_home, require_backend, run_jhansi

CANARY = "jhansi-canary-layer-3e1b"

HOSTILE = r"""
import json, os, shutil, stat, sys

W = "/work"
outside = sys.argv[1]
seen = {}

def read(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            return os.read(fd, 1 << 16).decode("utf-8", "replace")
        finally:
            os.close(fd)
    except OSError as exc:
        return "errno %d" % exc.errno

# Masked secrets: read them, list them, move them, open them up, copy them up.
seen[".env"] = read(W + "/.env")
seen[".git/config"] = read(W + "/.git/config")
seen["sub/id_rsa"] = read(W + "/sub/id_rsa")
seen[".git listing"] = sorted(os.listdir(W + "/.git"))
for step in (
    lambda: os.chmod(W + "/.env", 0o644),
    lambda: os.rename(W + "/.git", W + "/moved-git"),
    lambda: os.rename(W + "/sub", W + "/moved-sub"),
    lambda: shutil.copytree(W + "/.git", W + "/copied-git"),
):
    try:
        step()
    except OSError:
        pass
for path in (W + "/.env", W + "/moved-git/config", W + "/copied-git/config",
             W + "/moved-sub/id_rsa", W + "/sub/id_rsa"):
    seen[path] = read(path)

# Ordinary output, where scripts put it.
open(W + "/summary.csv", "w").write("a,b\n")
os.makedirs(W + "/out/deep", exist_ok=True)
open(W + "/out/deep/model.bin", "wb").write(b"\0model")
os.link(W + "/summary.csv", W + "/summary-link.csv")
os.unlink(W + "/old.txt")
os.unlink(W + "/second.py")  # the next run is asked to run the project's second.py
open(os.fsencode(W) + b"/caf\xe9.txt", "wb").write(b"latin-1 name")

# What the host would obey after an apply.
for rel, text in {
    "jhansi.toml": "[sandbox]\npython = '/nonexistent/evil'\n",
    "pylock.x.toml": "lock-version = '1.0'\n",
    "Jhansi.TOML": "[sandbox]\npython = 'evil'\n",
    ".python-version": "evil\n",
    ".jhansi/ledger": "forged",
    ".git/hooks/pre-commit": "#!/bin/sh\ntouch /tmp/pwned\n",
}.items():
    try:
        os.makedirs(os.path.dirname(W + "/" + rel), exist_ok=True)
        open(W + "/" + rel, "w").write(text)
    except OSError:
        pass

# Links out of the project, and a directory swapped for a link to a host directory.
os.symlink("/etc/passwd", W + "/abs-link")
os.symlink("../../../../../../../../etc/passwd", W + "/rel-link")
shutil.rmtree(W + "/data")
os.symlink(outside, W + "/data")
try:
    os.makedirs(outside, exist_ok=True)  # only the sandbox's own view can take it
    open(W + "/data/planted", "w").write("x")
except OSError:
    pass

# Special files.
try:
    os.mknod(W + "/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    seen["mknod"] = "made"
except OSError as exc:
    seen["mknod"] = exc.errno
os.mkfifo(W + "/fifo")
print(json.dumps(seen))
"""

SECOND = "print('second run')\n"


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under ``root`` (links not followed): mode, owner, content or target."""
    found: dict[str, tuple[int, int, bytes]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                data = os.fsencode(str(path.readlink()))
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
            else:
                data = b""
            found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, data)
    return found


def _jhansi(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, dict[str, object], str]:
    proc = run_jhansi(*args, env=env, cwd=cwd, timeout=300)
    assert proc.stdout, f"no JSON on stdout; stderr: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize("backend", ["bwrap", "docker", "gvisor"])
def test_hostile_writes_stay_in_the_layer(
    request: pytest.FixtureRequest, shared_dir: Path, backend: str
) -> None:
    require_backend(request, backend)
    project = shared_dir / "project"
    for directory in ("sub", "data", ".git/hooks"):
        (project / directory).mkdir(parents=True)
    (project / ".env").write_text(f"API_KEY={CANARY}\n")
    (project / ".git" / "config").write_text(f"token = {CANARY}\n")
    (project / "sub" / "id_rsa").write_text(CANARY)
    (project / "data" / "file.txt").write_text("data")
    (project / "old.txt").write_text("to delete")
    (project / "keep.py").write_text("print('keep')\n")
    (project / "hostile.py").write_text(HOSTILE)
    (project / "second.py").write_text(SECOND)
    for path in (project, *project.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    outside = shared_dir / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text(CANARY)
    home = shared_dir / "jhansi-home"
    prepare_jhansi_home(backend, home)
    env = {**backend_env(backend), "JHANSI_HOME": str(home)}
    before, outside_before = _tree(project), _tree(outside)

    code, doc, stderr = _jhansi(env, project, "run", "--json", "hostile.py", str(outside))
    assert (code, doc["status"]) == (0, "succeeded"), f"{doc.get('stderr')}\n{stderr}"
    seen = json.loads(str(doc["stdout"]["text"]))  # type: ignore[index]
    assert CANARY not in json.dumps(seen), seen
    assert seen[".git listing"] == []
    assert seen["mknod"] == 1  # EPERM: no device nodes, in the layer or anywhere
    assert "copy-on-write" in doc["enforcement"]["work"]  # type: ignore[index]
    layer = Path(str(doc["layer"]))
    assert layer.is_relative_to(home)
    # The project is exactly what it was; nothing appeared outside it.
    assert _tree(project) == before
    assert _tree(outside) == outside_before
    assert not Path("/tmp/pwned").exists()
    # Everything landed in the layer, and the summary says what the sandbox saw.
    assert (layer / "summary.csv").read_text() == "a,b\n"
    changed = {
        (c["path"], c["change"])
        for c in doc["files_changed"]  # type: ignore[union-attr]
        if isinstance(c, dict) and c["area"] == "/work"
    }
    assert {
        ("summary.csv", "added"),
        ("out/deep/model.bin", "added"),
        ("old.txt", "deleted"),
        ("second.py", "deleted"),
        ("caf\\xe9.txt", "added"),
    } <= changed, changed

    # What runs is the project's script, never the layer's version (here: deleted).
    code, doc, stderr = _jhansi(env, project, "run", "--json", "second.py")
    assert (code, doc["status"]) == (0, "succeeded"), stderr
    assert doc["stdout"]["text"] == "second run\n"  # type: ignore[index]
    assert "the sandbox's layer has its own second.py" in stderr

    # The host-side tools follow no link the sandbox made.
    for inside in (":/work/data/canary.txt", ":/work/abs-link"):
        proc = run_jhansi("sandbox", "cp", inside, str(shared_dir / "x"), env=env, cwd=project)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert "symbolic link" in proc.stderr
    assert not (shared_dir / "x").exists()

    code, diff, stderr = _jhansi(env, project, "sandbox", "diff", "--json")
    assert code == 0, stderr
    changes = diff["changes"]
    assert isinstance(changes, list)
    refused = {c["path"]: c["refused"] for c in changes if "refused" in c}
    for rel in ("jhansi.toml", "pylock.x.toml", "Jhansi.TOML", ".python-version", ".jhansi"):
        assert rel in refused, (rel, refused)
    for rel in ("abs-link", "rel-link", "data"):
        assert "outside the project" in refused[rel], refused
    assert _tree(project) == before  # diff wrote nothing

    code, applied, stderr = _jhansi(env, project, "sandbox", "apply", "--json")
    assert code == 1, stderr  # some changes were not applied: they were refused
    done = {a["path"] for a in applied["applied"]}  # type: ignore[union-attr]
    assert {"summary.csv", "out/deep/model.bin", "old.txt", "summary-link.csv"} <= done
    assert (project / "summary.csv").read_text() == "a,b\n"
    assert (project / "out" / "deep" / "model.bin").read_bytes() == b"\0model"
    assert (project / os.fsdecode(b"caf\xe9.txt")).read_bytes() == b"latin-1 name"
    assert not (project / "old.txt").exists()
    for rel in ("jhansi.toml", "pylock.x.toml", "Jhansi.TOML", ".python-version", ".jhansi"):
        assert not (project / rel).exists(), rel
    assert list((project / ".git" / "hooks").iterdir()) == []
    assert (project / ".env").read_text() == f"API_KEY={CANARY}\n"
    for rel in ("abs-link", "rel-link", "null", "fifo"):
        assert not os.path.lexists(project / rel), rel
    assert not (project / "data").is_symlink()
    assert (project / "data").is_dir()
    assert _tree(outside) == outside_before
    assert stat.S_IMODE((project / "summary.csv").stat().st_mode) == 0o644
    # Recorded: what was written, with its hash.
    ledger = home / "data" / "ledger" / "ledger.jsonl"
    records = [json.loads(line) for line in ledger.read_bytes().splitlines()]
    record = next(r for r in reversed(records) if r["kind"] == "sandbox.apply")
    assert record["hash"] == applied["record"]
    by_path = {a["path"]: a for a in record["body"]["applied"]}
    import blake3

    assert by_path["summary.csv"]["blake3"] == blake3.blake3(b"a,b\n").hexdigest()
    names = [a for a in record["body"]["applied"] if "path_b64" in a]
    assert [base64.b64decode(a["path_b64"]) for a in names] == [b"caf\xe9.txt"]

    # The next run is not affected by what the first one planted.
    code, doc, stderr = _jhansi(env, project, "run", "--json", "keep.py")
    assert (code, doc["status"]) == (0, "succeeded"), stderr
    assert doc["stdout"]["text"] == "keep\n"  # type: ignore[index]
