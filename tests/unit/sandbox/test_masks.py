"""Which project paths are masked, and the backends' refusal to mount through a link.

Pure file-system checks on a temporary project; that the sandboxes hide what is
masked, and create nothing on the host, is ``tests/security/test_mask_links.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jhansi.config import DEFAULT_MASK
from jhansi.errors import SandboxError
from jhansi.sandbox.docker.container import engine_mounts
from jhansi.sandbox.interface import Mount
from jhansi.sandbox.masks import check_mounts, find_masked, masks_directory


def masked(project: Path, patterns: tuple[str, ...] = DEFAULT_MASK) -> set[str]:
    return {p.relative_to(project).as_posix() for p in find_masked(project, patterns)}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


@pytest.mark.parametrize(
    "name",
    [
        ".ENV",
        ".Env.Local",
        "server.PEM",
        "ID_RSA",
        "Id_Ed25519.pub",
        ".SSH",
        ".envrc",
        ".git-credentials",
        ".pgpass",
        ".my.cnf",
        "cert.p12",
        "cert.PFX",
        "app.jks",
        "release.keystore",
        "credentials.json",
        "service-account-prod.json",
        "terraform.tfstate",
        "terraform.tfstate.backup",
        ".terraformrc",
        ".vault-token",
        ".htpasswd",
        "vault.kdbx",
        ".s3cfg",
        ".boto",
        ".dockercfg",
        "office.ovpn",
        "id_dsa",
        ".bash_history",
        ".zsh_history",
        ".python_history",
        "secrets.yml",
        "secrets.yaml",
        "notes.txt.gpg",
        ".azure",
        ".gcloud",
        "prod.env",
        "client_secret_123.apps.googleusercontent.com.json",
    ],
)
def test_secret_names_are_masked_in_any_case(project: Path, name: str) -> None:
    sub = project / "deep" / "er"
    sub.mkdir(parents=True)
    (sub / name).write_text("secret")
    assert masked(project) == {f"deep/er/{name}"}


def test_credential_files_of_tools_are_masked(project: Path) -> None:
    files = (".kube/config", ".docker/config.json", ".config/gcloud/x", "a/.config/gh/hosts.yml")
    for rel in files:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("secret")
    assert masked(project) == {".kube", ".docker", ".config/gcloud", "a/.config/gh"}


@pytest.mark.parametrize(
    "name",
    [
        "main.py",
        "secrets.py",
        "environment.yml",
        "keys.py",
        "README.md",
        "pyproject.toml",
        "credentials.py",
        "tokenizer.json",
        "envs",
        ".github",
        "rsa.py",
        "history.txt",
    ],
)
def test_ordinary_source_files_are_not_masked(project: Path, name: str) -> None:
    (project / name).write_text("x")
    assert masked(project) == set()


def test_user_patterns_match_names_and_paths_case_insensitively(project: Path) -> None:
    (project / "Secrets").mkdir()
    (project / "Secrets" / "a.txt").write_text("x")
    (project / "data").mkdir()
    (project / "data" / "Cert.P12").write_text("x")
    assert masked(project, ("secrets/*", "*.p12")) == {"Secrets/a.txt", "data/Cert.P12"}


def test_a_masked_directory_is_hidden_whole(project: Path) -> None:
    (project / ".git" / "hooks").mkdir(parents=True)
    (project / ".git" / "hooks" / "id_rsa").write_text("x")
    assert masked(project) == {".git"}


def test_links_out_of_the_project_are_left_as_links(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "real.pem").write_text("x")
    links = {
        "abs.pem": str(outside / "real.pem"),
        "oldroot.pem": f"/oldroot{outside}/created",
        "rel.pem": "../outside/x",
        ".ssh": f"/nonexistent-{os.getpid()}",
        ".aws": str(outside),
        ".kube": "..",
        ".gnupg": ".",
        "loop.key": "loop.key",
    }
    for name, target in links.items():
        (project / name).symlink_to(target)
    assert masked(project) == set()
    assert all((project / name).is_symlink() for name in links)
    assert not (outside / "created").exists()


def test_a_link_into_the_project_masks_its_target(project: Path) -> None:
    (project / "config" / "deep").mkdir(parents=True)
    (project / "config" / "prod.txt").write_text("secret")
    (project / "config" / "deep" / "k.txt").write_text("secret")
    (project / ".env").symlink_to("config/prod.txt")
    (project / ".ssh").symlink_to("config/deep")
    # A chain of links, and a link whose target is itself masked.
    (project / "a.key").symlink_to("b.pem")
    (project / "b.pem").symlink_to(project / "config" / "prod.txt")
    (project / "c.pem").symlink_to(".git")
    (project / ".git").mkdir()
    assert masked(project) == {"config/prod.txt", "config/deep", ".git"}


def test_a_linked_directory_is_not_entered(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "id_rsa").write_text("x")
    (project / "linked").symlink_to(elsewhere)
    (project / "inner").mkdir()
    (project / "inner" / ".env").write_text("x")
    (project / "alias").symlink_to("inner")
    assert masked(project) == {"inner/.env"}


def test_masks_inside_a_masked_link_target_are_not_nested(project: Path) -> None:
    (project / "keys").mkdir()
    (project / "keys" / "server.pem").write_text("x")
    (project / ".ssh").symlink_to("keys")
    assert masked(project) == {"keys"}


def test_special_files_with_secret_names_are_masked(project: Path) -> None:
    os.mkfifo(project / ".env")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(project / "agent.pem"))
    finally:
        sock.close()
    assert masked(project) == {".env", "agent.pem"}
    # Deciding file or directory never opens the FIFO (which would block).
    assert not masks_directory(project / ".env")


def test_hard_links_are_masked_by_name(project: Path) -> None:
    # A hard link is the same file under two names: masking is by name, so the
    # other name stays visible (a clone cannot carry one to a host file).
    (project / "notes.txt").write_text("x")
    os.link(project / "notes.txt", project / "server.pem")
    assert masked(project) == {"server.pem"}


# -- the backends' own check -----------------------------------------------------


def test_an_empty_mount_over_a_link_is_refused_by_every_backend(project: Path) -> None:
    (project / "evil.pem").symlink_to("/oldroot/tmp/x")
    mounts = (Mount(project, "/work"), Mount(project / "evil.pem", "/work/evil.pem", kind="empty"))
    with pytest.raises(SandboxError, match=r"evil\.pem"):
        check_mounts(mounts)
    with pytest.raises(SandboxError, match="symbolic link"):
        engine_mounts(mounts, (Path("/m/file"), Path("/m/dir")))


def test_a_special_file_mask_is_refused_where_the_runtime_opens_it(project: Path) -> None:
    # gVisor's gofer opens a mount point before mounting over it: a FIFO blocks it
    # forever (seen here: the container never starts), a device node may act.
    os.mkfifo(project / ".env")
    (project / ".git").mkdir()
    (project / "x.pem").write_text("x")
    mounts = tuple(
        Mount(project / name, f"/work/{name}", kind="empty") for name in (".git", "x.pem")
    )
    empty = (Path("/m/file"), Path("/m/dir"))
    assert len(engine_mounts(mounts, empty, opens_targets=True)) == 2
    fifo = (*mounts, Mount(project / ".env", "/work/.env", kind="empty"))
    assert len(engine_mounts(fifo, empty)) == 3
    with pytest.raises(SandboxError, match=r"\.env.*FIFO"):
        engine_mounts(fifo, empty, opens_targets=True)


def test_a_mount_below_a_linked_directory_is_refused(project: Path, tmp_path: Path) -> None:
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "f").write_text("")
    (project / "sub").symlink_to(tmp_path / "host")
    (tmp_path / "src").write_text("")
    mounts = (Mount(project, "/work"), Mount(tmp_path / "src", "/work/sub/f"))
    with pytest.raises(SandboxError, match=r"sub"):
        check_mounts(mounts)


def test_a_mask_that_vanished_is_refused(project: Path) -> None:
    mounts = (Mount(project, "/work"), Mount(project / ".env", "/work/.env", kind="empty"))
    with pytest.raises(SandboxError, match="disappeared"):
        check_mounts(mounts)


def test_plain_mounts_pass(project: Path, tmp_path: Path) -> None:
    (project / ".env").write_text("x")
    (project / ".git").mkdir()
    (tmp_path / "script.py").write_text("")
    check_mounts(
        (
            Mount(project, "/work"),
            Mount(project / ".env", "/work/.env", kind="empty"),
            Mount(project / ".git", "/work/.git", kind="empty"),
            Mount(tmp_path / "script.py", "/work/new/script.py"),
            Mount(tmp_path / "script.py", "/opt/jhansi/main/script.py"),
        )
    )
    assert masks_directory(project / ".git")
    assert not masks_directory(project / ".env")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_a_directory_that_cannot_be_listed_is_hidden_whole(project: Path) -> None:
    """A directory its user may enter but not list (``chmod 311``) hides its names from
    the walk, not from a sandbox of the same user that opens them by name: it is hidden
    whole. Walked as uid 1000 in a user namespace of its own, without capabilities (the
    kernel's own permission checks, as for a user running jhansi)."""
    box = project / "box"
    box.mkdir()
    (box / ".env").write_text("TOKEN=guessable\n")
    (project / "open").mkdir()
    box.chmod(0o311)
    project.parent.chmod(0o755)
    code = f"""
import os
from pathlib import Path
from jhansi.config import DEFAULT_MASK
from jhansi.sandbox.masks import find_masked
project = Path({str(project)!r})
assert os.getuid() == 1000 and not os.access(project / "box", os.R_OK)
print(sorted(p.relative_to(project).as_posix() for p in find_masked(project, DEFAULT_MASK)))
"""
    proc = subprocess.run(
        ["unshare", "-U", "--map-user=1000", "--map-group=1000", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['box']"]
    # The project itself: nothing in it could be hidden, so the walk refuses.
    project.chmod(0o311)
    refused = code.replace('project / "box"', "project").replace(
        "print(sorted(",
        "from jhansi.errors import SandboxError\n"
        "try:\n    list(find_masked(project, DEFAULT_MASK))\n"
        "except SandboxError as exc:\n    print(exc.message)\n    print(exc.hint)\n"
        "raise SystemExit(0)\nprint(sorted(",
    )
    proc = subprocess.run(
        ["unshare", "-U", "--map-user=1000", "--map-group=1000", sys.executable, "-c", refused],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    message, hint = proc.stdout.splitlines()
    assert message.startswith(f"cannot list the project directory {project} to hide its secrets")
    assert hint.startswith("Make it listable by you (chmod u+r)")
