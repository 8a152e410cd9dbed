"""Configuration files: reading and parsing them, and finding the project's.

A configuration file is identified by the BLAKE3 of its exact bytes (:func:`digest`),
which is what trust is keyed by and what the ledger records. A file, or the directory
holding it, that another user may write configures nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jhansi.errors import ConfigError


def read_bytes(path: Path) -> bytes:
    """The bytes of a configuration file; a file that cannot be read is a ConfigError."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint=f"Check that {path} exists and is readable.",
        ) from None


def parse_toml(path: Path, raw: bytes) -> dict[str, Any]:
    """``raw``, the bytes of ``path``, as a TOML table; not UTF-8 or not TOML is a ConfigError."""
    import tomllib  # only once a file is found: a run outside any project reads none

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start})",
            hint=f"Save {path} as UTF-8.",
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}",
            hint=f"Fix the TOML syntax in {path} (see https://toml.io).",
        ) from None


def digest(data: bytes) -> str:
    """The BLAKE3 (hex) that identifies a configuration file's exact content."""
    import blake3

    return blake3.blake3(data).hexdigest()


def tool_table(pyproject: Path, data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``[tool.jhansi]`` table of a parsed ``pyproject.toml``, or ``None`` when it has none."""
    tool = data.get("tool", {})
    table = tool.get("jhansi") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigError(
            f"{pyproject}: tool.jhansi must be a table",
            hint="Write it as [tool.jhansi.sandbox], [tool.jhansi.ledger], ...",
        )
    return table


def _shared(directory: Path) -> bool:
    """Whether anyone may create files in ``directory`` (``/tmp``): no project lives
    there, and nothing found in or above it configures a run."""
    try:
        return bool(directory.stat().st_mode & stat.S_IWOTH)
    except OSError:
        return False


def _others_write(path: Path) -> str | None:
    """Who besides the invoking user (and root) may write ``path``, or ``None``."""
    try:
        st = path.stat()
    except OSError:
        return None  # reading it says what is wrong
    me = os.getuid()
    if st.st_uid not in (me, 0):
        return f"it belongs to uid {st.st_uid}"
    if st.st_mode & stat.S_IWOTH:
        return "any user may write it"
    if st.st_mode & stat.S_IWGRP:
        import grp

        try:
            group = grp.getgrgid(st.st_gid)
        except KeyError:
            return f"group {st.st_gid} may write it"
        import pwd

        mine = {pwd.getpwuid(me).pw_name} if me else {"root"}
        others = set(group.gr_mem) - mine
        primary = [u.pw_name for u in pwd.getpwall() if u.pw_gid == st.st_gid and u.pw_uid != me]
        if others or primary:
            return f"group {group.gr_name} may write it"
    return None


def _check_not_shared(file: Path) -> None:
    """Refuse a configuration file, or the directory holding it, that another user may
    write: whoever can change it would configure this run (or plant it)."""
    for path in (file, file.parent):
        who = _others_write(path)
        if who is not None:
            raise ConfigError(
                f"{path} cannot configure jhansi: {who}",
                hint=f"Make {path} writable by you alone (chown/chmod g-w,o-w), or run the "
                "script from a directory of your own.",
            )


def find_project_config(start: Path) -> tuple[Path, Mapping[str, Any], bytes] | None:
    """The nearest project configuration at or above ``start``: its path, its jhansi
    table and the exact bytes that table was parsed from (what trust is keyed by)."""
    here = start.absolute()
    for directory in (here, *here.parents):
        if _shared(directory):
            # A directory anyone may write (/tmp) is no project: what another user left
            # in it, or above it, must not configure this run.
            return None
        candidate = directory / "jhansi.toml"
        if candidate.is_file():
            _check_not_shared(candidate)
            raw = read_bytes(candidate)
            return candidate, parse_toml(candidate, raw), raw
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            raw = read_bytes(pyproject)
            table = tool_table(pyproject, parse_toml(pyproject, raw))
            if table is None:
                return None
            _check_not_shared(pyproject)
            return pyproject, table, raw
    return None
