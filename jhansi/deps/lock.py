"""Resolve requirements for a target interpreter into a PEP 751 ``pylock.toml``, once.

uv resolves (``uv pip compile --format pylock.toml``), wheels only: a package
that publishes no wheel for the target is refused at lock time, because
resolving would otherwise run its build code on the host. The lock records
what it was resolved from in a ``[tool.jhansi]`` table (PEP 751 reserves
``[tool.*]`` for tools)::

    [tool.jhansi]
    inputs = "<BLAKE3 of the canonical inputs>"
    requirements = ["numpy", "pyyaml", "requests"]
    target = "cpython-3.11-x86_64-manylinux_2_36"

The inputs are the normalized, sorted requirements, the target's tags (which
include its Python minor version) and the ``--exclude-newer`` cut-off. A later
:func:`lock` with the same inputs reuses the file without calling uv; different
inputs re-lock, keeping the existing pins where they still fit (uv reads the
old lock as preferences) unless ``upgrade`` is asked for. ``frozen`` never
calls uv: a missing or stale lock is an error naming the command that fixes it.

A lock resolved from scratch is also kept in the user's cache (``<cache>/resolved/``),
under its inputs and the resolver's settings (:func:`jhansi.deps.uv.resolver_settings`:
the user's indexes, uv's and pip's variables, uv's config file). Where no lock file
exists yet (a new script), the kept one for the same inputs is written there, checked
like any lock, without calling uv.

The Python *minor* version is what is locked for (``--python-version 3.11``),
not the patch release: uv writes it as the lock's ``requires-python``, and a
lock made for ``3.11.7`` would refuse the ``3.11.2`` in a Debian image. For the
same reason a patch upgrade of the target does not make a lock stale.

A script with no requirements has no lock: callers skip :func:`lock` (and
installing) for it, and :func:`lock` refuses an empty list.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jhansi.deps.origin import check_origin
from jhansi.deps.pylock import LockResult, canonical_name, packages_of, parse_lock
from jhansi.deps.target import Target
from jhansi.deps.uv import host_python, no_wheel, not_found, run_uv
from jhansi.errors import DependencyError, SandboxError, ToolError, UsageError
from jhansi.report import Reporter

_INPUTS_DOMAIN = b"jhansi/lock-inputs/v1\x00"
_TOOL_HEADER = "[tool.jhansi]"
LOCK_TIMEOUT = 600.0


# -- inputs ---------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def normalize_requirement(requirement: str) -> str:
    """A PEP 508 string in one spelling per meaning, for comparing and hashing.

    The name and extras are PEP 503-normalized, extras and specifiers sorted,
    insignificant whitespace dropped. Good enough to tell "unchanged" from
    "changed"; a spelling it misses only costs one extra resolution.
    """
    text = " ".join(requirement.split())
    match = _NAME.match(text)
    if match is None:
        return text
    name = canonical_name(match.group())
    rest = text[match.end() :]
    head, semicolon, marker = rest.partition(";")
    extras = ""
    stripped = head.strip()
    if stripped.startswith("["):
        inside, _, after = stripped[1:].partition("]")
        names = sorted({canonical_name(e.strip()) for e in inside.split(",") if e.strip()})
        extras = f"[{','.join(names)}]" if names else ""
        stripped = after.strip()
    if stripped.startswith("@"):
        spec = " @ " + stripped[1:].strip()
    else:
        spec = ",".join(sorted(p for p in "".join(stripped.split()).strip("()").split(",") if p))
    out = f"{name}{extras}{spec}"
    if semicolon and marker.strip():
        out += f"; {marker.strip()}"
    return out


def _check_requirements(requirements: Sequence[str]) -> list[str]:
    """Refuse what would be read as something else than a requirement by uv."""
    checked: list[str] = []
    for requirement in requirements:
        text = requirement.strip()
        # uv reads requirements as a requirements file: a line starting with "-" is
        # an option (--index-url, -r, -e …), a line break starts another line.
        if not text or text.startswith("-") or any(c in text for c in "\r\n\x00"):
            raise DependencyError(
                f"not a requirement: {requirement!r}",
                hint="Declare dependencies as PEP 508 strings such as `requests>=2.31`.",
            )
        checked.append(text)
    return checked


def inputs_digest(
    requirements: Sequence[str], target: Target, exclude_newer: str | None = None
) -> str:
    """BLAKE3 of what a lock is resolved from (requirements given normalized or not)."""
    import blake3
    import rfc8785

    document = {
        "requirements": sorted({normalize_requirement(r) for r in requirements}),
        "python": target.python_minor,
        "target": target.tags,
        "exclude_newer": exclude_newer,
    }
    return blake3.blake3(_INPUTS_DOMAIN + rfc8785.dumps(document)).hexdigest()


# -- reading a lock -------------------------------------------------------------------------


def _recorded_inputs(document: dict[str, Any]) -> str | None:
    tool = document.get("tool")
    table = tool.get("jhansi") if isinstance(tool, dict) else None
    inputs = table.get("inputs") if isinstance(table, dict) else None
    return inputs if isinstance(inputs, str) else None


def _without_tool_table(content: bytes) -> bytes:
    """The lock as uv wrote it: jhansi's table is always appended last."""
    text = content.decode("utf-8", "replace")
    index = text.find(f"\n{_TOOL_HEADER}\n")
    return content if index < 0 else text[: index + 1].encode()


# -- writing a lock -------------------------------------------------------------------------


def _toml_string(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string (ASCII, \uXXXX escapes) is a TOML basic string


def _tool_table(
    inputs: str, requirements: Sequence[str], target: Target, exclude_newer: str | None
) -> str:
    lines = [
        _TOOL_HEADER,
        "# What this lock was resolved from: jhansi locks again when any of it changes.",
        f"inputs = {_toml_string(inputs)}",
        "requirements = [",
        *(f"    {_toml_string(r)}," for r in requirements),
        "]",
        f"target = {_toml_string(target.tags)}",
    ]
    if exclude_newer:
        lines.append(f"exclude-newer = {_toml_string(exclude_newer)}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content`` so that readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644  # a lock is meant to be read, reviewed and committed
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _result(
    path: Path, content: bytes, document: dict[str, Any], *, reused: bool, inputs: str
) -> LockResult:
    import blake3

    table = (document.get("tool") or {}).get("jhansi") or {}
    requirements = table.get("requirements") if isinstance(table, dict) else None
    return LockResult(
        path=path,
        digest=blake3.blake3(content).hexdigest(),
        packages=packages_of(document),
        reused=reused,
        inputs_digest=inputs,
        requirements=tuple(str(r) for r in requirements or ()),
        content=content,
    )


# -- lock -----------------------------------------------------------------------------------


def lock(
    requirements: Sequence[str],
    target: Target,
    *,
    lock_file: Path,
    reporter: Reporter,
    fix_command: str = "jhansi lock SCRIPT",
    frozen: bool = False,
    upgrade: bool = False,
    exclude_newer: str | None = None,
    cache_dir: Path | None = None,
) -> LockResult:
    """Lock ``requirements`` (PEP 508, validated by the caller) for ``target`` into ``lock_file``.

    Reuses ``lock_file`` without calling uv when its recorded inputs match.
    ``frozen``: never resolve; a missing or stale lock raises
    :class:`DependencyError` naming ``fix_command`` (which is also written in
    the lock's header as the command that regenerates it). ``upgrade``:
    resolve again, ignoring the existing pins. A package with no wheel for
    the target raises :class:`DependencyError` naming it and the target.

    Every lock returned, reused or just resolved, installs only files the
    user's package index serves (:func:`jhansi.deps.origin.check_origin`): a
    lock beside a script is a project file, and may pin versions but never
    choose where files come from. ``cache_dir`` holds what was verified
    (default: the user's cache).
    """
    if not requirements:
        raise ValueError("lock() needs at least one requirement; a script without any has no lock")
    if frozen and upgrade:
        raise UsageError(
            "--frozen and --upgrade contradict each other",
            hint="Use --upgrade to lock anew, or --frozen to use the lock as it is.",
        )
    checked = _check_requirements(requirements)
    normalized = sorted({normalize_requirement(r) for r in checked})
    inputs = inputs_digest(normalized, target, exclude_newer)

    existing: bytes | None = None
    stale_because = f"{lock_file} does not exist"
    try:
        existing = lock_file.read_bytes()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DependencyError(
            f"cannot read {lock_file}: {exc.strerror}", hint="Check its permissions."
        ) from None
    if existing is not None:
        try:
            document = parse_lock(existing, lock_file)
        except DependencyError as exc:
            if frozen:
                hint = f"Run `{fix_command}` to lock anew."
                raise DependencyError(exc.message, hint=hint) from None
            stale_because = exc.message
            existing = None
        else:
            if _recorded_inputs(document) == inputs and not upgrade:
                check_origin(
                    document, lock_file, cache_dir=_cache(cache_dir), fix_command=fix_command
                )
                return _result(lock_file, existing, document, reused=True, inputs=inputs)
            stale_because = (
                f"{lock_file} is out of date: {_what_changed(document, normalized, target)}"
            )
            if not upgrade and not frozen:
                # uv is shown the old lock to keep its pins: only a lock whose files are
                # the index's own (a project file may name any URL or host path).
                try:
                    check_origin(
                        document, lock_file, cache_dir=_cache(cache_dir), fix_command=fix_command
                    )
                except DependencyError as exc:
                    reporter.warning(f"not keeping the pins of {lock_file.name}: {exc.message}")
                    existing = None
    if frozen:
        raise DependencyError(
            f"--frozen: {stale_because}", hint=f"Run `{fix_command}` to update the lock."
        )
    kept = _resolution_path(_cache(cache_dir), inputs)
    if existing is None and not upgrade:
        # No lock here yet (a new script): the same inputs resolved before, with the same
        # resolver settings, give the same lock without asking uv again.
        shared = _kept_resolution(kept, inputs, lock_file)
        if shared is not None:
            document = parse_lock(shared, lock_file)
            check_origin(document, lock_file, cache_dir=_cache(cache_dir), fix_command=fix_command)
            write_atomically(lock_file, shared)
            return _result(lock_file, shared, document, reused=True, inputs=inputs)

    content = _resolve(
        checked,
        target,
        preferences=None if upgrade or existing is None else _without_tool_table(existing),
        fix_command=fix_command,
        upgrade=upgrade,
        exclude_newer=exclude_newer,
        reporter=reporter,
    )
    if "jhansi" in (parse_lock(content, lock_file).get("tool") or {}):
        raise DependencyError(  # uv began to keep tool tables: do not guess
            f"uv's lock output for {lock_file} already has a {_TOOL_HEADER} table",
            hint="Report this as a jhansi bug, with the output of `jhansi --version`.",
        )
    content = (
        content.rstrip(b"\n")
        + b"\n\n"
        + _tool_table(inputs, normalized, target, exclude_newer).encode()
    )
    document = parse_lock(content, lock_file)
    # What uv resolved comes from the user's indexes, but it was shown the old lock as
    # preferences: checked like any other lock, before it replaces anything.
    check_origin(document, lock_file, cache_dir=_cache(cache_dir), fix_command=fix_command)
    write_atomically(lock_file, content)
    if existing is None or upgrade:  # resolved from scratch: what a new script gets
        _keep_resolution(kept, content)
    return _result(lock_file, content, document, reused=False, inputs=inputs)


#: Where resolutions made from scratch are kept, by inputs and resolver settings.
RESOLVED_DIRECTORY = "resolved"


def _resolution_path(cache_dir: Path, inputs: str) -> Path:
    import blake3

    from jhansi.deps.uv import resolver_settings

    key = blake3.blake3(f"{inputs}\0{resolver_settings()}".encode()).hexdigest()
    return cache_dir / RESOLVED_DIRECTORY / f"pylock.{key[:40]}.toml"


def _kept_resolution(path: Path, inputs: str, lock_file: Path) -> bytes | None:
    """The kept lock at ``path`` if it reads back as a lock of ``inputs``, else ``None``."""
    try:
        content = path.read_bytes()
        document = parse_lock(content, lock_file)
    except (OSError, DependencyError):
        return None
    return content if _recorded_inputs(document) == inputs else None


def _keep_resolution(path: Path, content: bytes) -> None:
    from jhansi.paths import ensure_private_dir

    try:
        ensure_private_dir(path.parent)
        write_atomically(path, content)
        path.chmod(0o600)
    except (OSError, SandboxError):
        pass  # an unwritable (or unsafe) cache only costs time


def _cache(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    from jhansi.paths import Paths

    return Paths.from_environment().cache


def _what_changed(document: dict[str, Any], requirements: Sequence[str], target: Target) -> str:
    """Why a lock's recorded inputs differ from these, for a person."""
    tool = document.get("tool")
    table = tool.get("jhansi") if isinstance(tool, dict) else None
    if not isinstance(table, dict) or "inputs" not in table:
        return "it was not made by jhansi (no [tool.jhansi] inputs)"
    recorded = table.get("target")
    if recorded != target.tags:
        return f"it was locked for {recorded}, the target is {target.tags}"
    before = {str(r) for r in table.get("requirements") or ()}
    added = sorted(set(requirements) - before)
    removed = sorted(before - set(requirements))
    if added or removed:
        parts = ([f"added {', '.join(added)}"] if added else []) + (
            [f"removed {', '.join(removed)}"] if removed else []
        )
        return f"the requirements changed ({'; '.join(parts)})"
    return "it was locked with another --exclude-newer cut-off"


def _resolve(
    requirements: Sequence[str],
    target: Target,
    *,
    preferences: bytes | None,
    fix_command: str,
    upgrade: bool,
    exclude_newer: str | None,
    reporter: Reporter,
) -> bytes:
    """Run uv's resolver for ``target``, wheels only; return the pylock.toml it wrote."""
    with tempfile.TemporaryDirectory(prefix="jhansi-lock-") as tmp:
        output = Path(tmp) / "pylock.toml"  # uv insists on pylock.toml or pylock.NAME.toml
        if preferences is not None:
            try:
                parse_lock(preferences, output)
            except DependencyError:
                pass  # not worth keeping pins from: resolve from scratch
            else:
                output.write_bytes(preferences)  # uv keeps the pins it finds in its output
        args: list[str | Path] = [
            "pip",
            "compile",
            "-",
            "--format",
            "pylock.toml",
            "--python-version",
            target.python_minor,
            "--python-platform",
            target.uv_platform,
            # Never build: a package without a wheel for the target is refused here,
            # before any of its code could run on the host.
            "--no-build",
            "--custom-compile-command",
            fix_command,
            "-o",
            output,
        ]
        python = host_python()
        if python:
            args[2:2] = ["--python", python]
        if exclude_newer:
            args += ["--exclude-newer", exclude_newer]
        if upgrade:
            args.append("--upgrade")
        try:
            run_uv(
                args,
                what=f"resolve dependencies for {target.describe()}",
                hint="Check the requirements and the package index (your uv or pip "
                "index settings), then try again.",
                input=("\n".join(requirements) + "\n").encode(),
                cwd=Path(tmp),
                timeout=LOCK_TIMEOUT,
                reporter=reporter,
            )
        except ToolError as exc:
            raise _diagnose(exc, target) from None
        return output.read_bytes()


def no_wheel_error(stderr: str, target: Target, *, version: str = "") -> DependencyError | None:
    """The error for uv's "no wheel fits this target", or ``None`` if that is not what it said."""
    found = no_wheel(stderr)
    if found is None:
        return None
    which = f"{found.name} {version}" if version else f"{found.name}{found.spec}"
    hint = (
        f"Pin a version of {found.name} that publishes a wheel for {target.describe()}, "
        "or choose another package: jhansi never builds packages from source on the host."
    )
    if found.detail:
        hint += f" uv: {found.detail}"
    return DependencyError(
        f"{which} has no wheel for {target.describe()} (tags {target.tags})", hint=hint
    )


def _diagnose(exc: ToolError, target: Target) -> Exception:
    """Turn uv's resolution failures people can act on into precise errors."""
    wheel = no_wheel_error(exc.stderr, target)
    if wheel is not None:
        return wheel
    missing = not_found(exc.stderr)
    if missing is not None:
        return DependencyError(
            f"no distribution named {missing!r} on the package index",
            hint="Check the name: AI models invent package names, and attackers register "
            "them. Declare the real distribution (`# /// script` or --with).",
        )
    return exc
