"""Install a lock into a content-addressed, read-only environment directory, once.

``<cache>/envs/<key>`` holds exactly the locked wheels, installed by uv with
``--target`` (a flat ``site-packages``-style directory the sandbox mounts
read-only and adds to ``sys.path``). The key is the BLAKE3, domain-separated,
of the lock's ``[[packages]]`` (canonical JSON, RFC 8785) and the target's
tags: two scripts whose locks pin the same files share one environment,
whatever their requirements, header or ``[tool.jhansi]`` table say.

An environment is complete once its marker file exists: it is written last,
the tree is then made read-only (files 0444 or 0555, directories 0555: readable
by the sandbox's uid whatever it is) and renamed into place in one step, so a
reader never sees half an environment. Two processes installing the same key
both install into private temporary directories; the loser of the rename
discards its copy. A present environment is reused without calling uv.

Bytecode: uv byte-compiles (``--compile-bytecode``) with the interpreter
running jhansi, so only when that interpreter is the target's implementation
and minor version (the ``.pyc`` magic number and cache tag are then the
target's own). Otherwise the sandbox compiles in memory at import time: the
environment is read-only and ``PYTHONDONTWRITEBYTECODE`` is set there. For
numpy + requests + pyyaml the ``.pyc`` files halve the import time (0.4 s →
0.2 s) for 17 MB more on disk.

Files are hard-linked from uv's cache (``--link-mode hardlink``; uv copies
instead when the cache is on another file system), which saves copying them
(~0.3 s of a cold numpy install). The environment stays immutable for the
sandbox: it is mounted read-only there, whatever the files' modes. uv never
writes to a cache entry in place (it makes new entries and renames them), and
jhansi does not touch the shared files either: :func:`make_read_only` leaves the
mode of a file with more than one link alone, because changing it would change
uv's cache entry (and any other environment linked to it). The directories, and
the files only this environment has (bytecode, the marker), are made read-only.
A pruned uv cache only removes the cache's links: the environment keeps its
files.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jhansi.deps.lock import no_wheel_error
from jhansi.deps.origin import check_origin
from jhansi.deps.pylock import LockResult, canonical_name, jsonable, parse_lock
from jhansi.deps.target import Target
from jhansi.deps.uv import host_python, run_uv
from jhansi.errors import DependencyError, ToolError
from jhansi.report import Reporter

logger = logging.getLogger("jhansi.deps.install")

MARKER = ".jhansi-environment.json"
"""Written last into an environment: its presence means the environment is complete."""

_KEY_DOMAIN = b"jhansi/environment/v1\x00"
INSTALL_TIMEOUT = 1800.0
_STALE_AFTER = 24 * 3600.0
"""Seconds after which a leftover temporary directory (a killed install) is removed."""


@dataclass(frozen=True, slots=True)
class Environment:
    """An installed, read-only environment for one lock and target."""

    key: str
    """BLAKE3 (hex) of the lock's packages and the target's tags: the directory's name."""
    path: Path
    """The directory to put on the sandbox's ``sys.path`` (mounted read-only)."""
    reused: bool
    """True when it was already installed and uv was not called."""


def environment_key(document: dict[str, Any], target: Target) -> str:
    """The cache key of a parsed lock's packages installed for ``target``."""
    import blake3
    import rfc8785

    canonical = rfc8785.dumps(
        {"packages": jsonable(document.get("packages") or []), "target": target.tags}
    )
    return blake3.blake3(_KEY_DOMAIN + canonical).hexdigest()


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a finished environment (its marker was written last)."""
    return (path / MARKER).is_file()


def install(
    lock: LockResult,
    target: Target,
    *,
    cache_dir: Path,
    reporter: Reporter,
) -> Environment:
    """Install ``lock`` for ``target`` under ``cache_dir/envs``, or reuse it if present.

    Wheels only (``--no-build``), every file checked against the lock's hashes
    by uv. A package with no wheel for the target raises
    :class:`DependencyError` naming it, its version and the target's tags.
    """
    import blake3

    content = lock.content or lock.path.read_bytes()
    if blake3.blake3(content).hexdigest() != lock.digest:
        raise DependencyError(
            f"{lock.path} changed after it was locked",
            hint="Run jhansi again: it locks and installs from one reading of the file.",
        )
    document = parse_lock(content, lock.path)
    _check_target(document, target, lock.path)
    key = environment_key(document, target)
    envs = cache_dir.absolute() / "envs"  # uv runs elsewhere: no relative paths
    final = envs / key
    if is_complete(final):
        logger.debug("environment %s reused", key)
        return Environment(key=key, path=final, reused=True)

    # Whoever made this LockResult, uv fetches exactly the files the lock names: only
    # files the user's index serves (verified once, then from the cache).
    check_origin(document, lock.path, cache_dir=cache_dir)
    envs.mkdir(parents=True, exist_ok=True)
    _sweep(envs)
    if final.exists():
        _discard(final, envs)  # there but without its marker: never trust it
    packages = lock.packages
    # Staged beside its final place: renaming a directory within one parent needs no
    # write permission on the (already read-only) directory itself.
    staged = Path(tempfile.mkdtemp(prefix=".tmp-", dir=envs))
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-lock-", dir=envs))
    try:
        lock_copy = scratch / "pylock.toml"
        lock_copy.write_bytes(_for_install(document))
        reporter.step("install", f"{len(packages)} package(s) for {target.describe()}")
        reporter.progress("install", 0, len(packages))
        compiled = _can_compile_for(target)
        args: list[str | Path] = [
            "pip",
            "install",
            "--target",
            staged,
            "--no-build",
            # The lock names every file (checked by check_origin): uv asks no index
            # and no find-links, and refuses a file without its digest.
            "--no-index",
            "--require-hashes",
            "--python-version",
            target.python_minor,
            "--python-platform",
            target.uv_platform,
            "--link-mode",
            "hardlink",
            "--preview-features",
            "pylock",
            "-r",
            lock_copy,
        ]
        python = host_python()
        if python:
            args[2:2] = ["--python", python]
        if compiled:
            args.append("--compile-bytecode")
        try:
            run_uv(
                args,
                what=f"install dependencies for {target.describe()}",
                hint="Check your network and package index settings, then try again.",
                cwd=scratch,
                timeout=INSTALL_TIMEOUT,
                reporter=reporter,
            )
        except ToolError as exc:
            raise _diagnose(exc, lock, target) from None
        (staged / ".lock").unlink(missing_ok=True)  # uv's own lock on the directory
        _write_marker(staged, key=key, lock=lock, target=target, compiled=compiled)
        make_read_only(staged)
        try:
            staged.rename(final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not is_complete(final):
                raise
            logger.debug("environment %s was installed concurrently; keeping that one", key)
        reporter.progress("install", len(packages), len(packages))
        return Environment(key=key, path=final, reused=False)
    finally:
        remove_tree(staged)  # gone already when it was renamed into place
        remove_tree(scratch)


# -- the lock, as uv gets it ----------------------------------------------------------------

_CLAUSE = re.compile(r"^\s*(===|==|!=|>=|<=|~=|>|<)\s*([0-9]+(?:\.[0-9]+)*)(\.\*)?\s*$")


def _toml_string(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _for_install(document: dict[str, Any]) -> bytes:
    """The lock uv installs, written anew from the parsed and checked ``document``.

    Never the lock's own text with something cut out: a text edit can change how
    the rest parses (a multi-line string opened on the edited line), so that uv would
    install packages jhansi never saw. Only what installing needs is written: each
    package's name, version and marker, and its wheels' URLs and sha256 (the files
    :func:`check_origin` verified). The lock's ``requires-python`` is left out: uv
    checks it against the interpreter uv runs with, not ``--python-version``;
    :func:`_check_target` checks it against the real target instead.
    """
    lines = ['lock-version = "1.0"', 'created-by = "jhansi"']
    for package in document.get("packages") or ():
        lines += ["", "[[packages]]"]
        lines.append(f"name = {_toml_string(package['name'])}")
        lines.append(f"version = {_toml_string(package['version'])}")
        if package.get("marker"):
            lines.append(f"marker = {_toml_string(package['marker'])}")
        wheels = []
        for wheel in package.get("wheels") or ():
            sha256 = (wheel.get("hashes") or {}).get("sha256", "")
            fields = [f"url = {_toml_string(wheel['url'])}"]
            if wheel.get("name"):
                fields.append(f"name = {_toml_string(wheel['name'])}")
            fields.append(f"hashes = {{ sha256 = {_toml_string(sha256)} }}")
            wheels.append("    { " + ", ".join(fields) + " },")
        lines += ["wheels = [", *wheels, "]"]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def python_satisfies(specifier: str, version: str) -> bool | None:
    """Whether ``version`` meets a simple ``requires-python`` (``None``: cannot tell)."""
    try:
        have = _version_tuple(".".join(re.findall(r"[0-9]+", version)[:3]))
    except ValueError:
        return None
    for clause in specifier.split(","):
        match = _CLAUSE.match(clause)
        if match is None:
            return None
        op, raw, wildcard = match.groups()
        want = _version_tuple(raw)
        mine = have[: len(want)] if wildcard else have
        width = max(len(mine), len(want))
        a = mine + (0,) * (width - len(mine))
        b = want + (0,) * (width - len(want))
        ok = {
            "==": a == b,
            "===": a == b,
            "!=": a != b,
            ">=": a >= b,
            "<=": a <= b,
            ">": a > b,
            "<": a < b,
            "~=": a >= b and a[: len(want) - 1] == b[: len(want) - 1],
        }[op]
        if not ok:
            return False
    return True


def _check_target(document: dict[str, Any], target: Target, path: Path) -> None:
    """Refuse a lock resolved for another interpreter than ``target``."""
    tool = document.get("tool")
    table = tool.get("jhansi") if isinstance(tool, dict) else None
    recorded = table.get("target") if isinstance(table, dict) else None
    if isinstance(recorded, str) and recorded != target.tags:
        raise DependencyError(
            f"{path} was locked for {recorded}, not for {target.tags} ({target.describe()})",
            hint="Lock it again for this interpreter (without --frozen, jhansi run does).",
        )
    requires = document.get("requires-python")
    if isinstance(requires, str) and python_satisfies(requires, target.python_version) is False:
        raise DependencyError(
            f"{path} requires Python {requires}, but the target is {target.describe()}",
            hint="Lock it again for this interpreter (without --frozen, jhansi run does).",
        )


def _can_compile_for(target: Target) -> bool:
    """Whether the interpreter uv will byte-compile with writes ``.pyc`` the target can use."""
    host_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        host_python() is not None
        and sys.implementation.name == target.implementation
        and host_minor == target.python_minor
    )


def _diagnose(exc: ToolError, lock: LockResult, target: Target) -> Exception:
    versions = {canonical_name(p.name): p.version for p in lock.packages}
    from jhansi.deps.uv import no_wheel

    found = no_wheel(exc.stderr)
    if found is not None:
        version = versions.get(canonical_name(found.name), "")
        error = no_wheel_error(exc.stderr, target, version=version)
        if error is not None:
            return error
    if "Hash mismatch" in exc.stderr:
        return DependencyError(
            f"a downloaded file does not match its hash in {lock.path}: {exc.message}",
            hint="The index served another file than the one locked. Find out why before "
            "locking again with --upgrade.",
        )
    return exc


# -- the directory --------------------------------------------------------------------------


def _write_marker(
    directory: Path, *, key: str, lock: LockResult, target: Target, compiled: bool
) -> None:
    record = {
        "key": key,
        "lock": str(lock.path),
        "lock_digest": lock.digest,
        "target": target.tags,
        "packages": [f"{p.name}=={p.version}" for p in lock.packages],
        "bytecode": compiled,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (directory / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def make_read_only(root: Path) -> None:
    """Files 0444 (0555 if executable), directories 0555, symbolic links left alone.

    A file with more than one link is shared with uv's cache (``--link-mode
    hardlink``): its mode is uv's, and left alone. Directories are walked with
    ``scandir`` (each entry's type and status come with it), children before their
    directory, which loses its write bit last.
    """

    def walk(directory: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    walk(entry.path)
                    os.chmod(entry.path, 0o555)  # noqa: PTH101, S103 (read-only on purpose)
                elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    mode = 0o555 if st.st_mode & 0o111 else 0o444
                    os.chmod(entry.path, mode)  # noqa: PTH101 (no Path object per file)

    walk(os.fspath(root))
    root.chmod(0o555)


def remove_tree(root: Path) -> None:
    """Delete a (possibly read-only) environment or temporary directory; never raise."""
    if not root.exists() and not root.is_symlink():
        return
    for current, dirs, _files in os.walk(root):
        for name in dirs:
            path = Path(current, name)
            if not path.is_symlink():
                path.chmod(0o755)
        Path(current).chmod(0o755)
    if root.is_dir() and not root.is_symlink():
        root.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


def _discard(path: Path, envs: Path) -> None:
    """Move an incomplete environment out of the way, then delete it."""
    trash = envs / f".trash-{os.urandom(8).hex()}"
    try:
        path.rename(trash)  # within one parent: no write permission on it needed
    except OSError:
        return  # someone else moved it first
    remove_tree(trash)


def _sweep(envs: Path) -> None:
    """Remove temporary directories left by installs that were killed long ago."""
    now = time.time()
    for entry in envs.iterdir():
        if entry.name.startswith((".tmp-", ".trash-")):
            try:
                old = now - entry.lstat().st_mtime > _STALE_AFTER
            except OSError:
                continue
            if old:
                remove_tree(entry)
