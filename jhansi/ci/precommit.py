"""The pre-commit hooks: ``jhansi-check`` and ``jhansi-lock`` (see ``.pre-commit-hooks.yaml``).

pre-commit hands a hook every staged file its ``files`` pattern matches (all
``.py`` files). Only scripts are jhansi's business: a file with a PEP 723
``# /// script`` block, or one whose path matches ``--include REGEX`` (the
hook's ``args``, for scripts without a block). Then:

- ``check``: ``jhansi check --frozen`` on them; fails on a missing or stale lock,
  on an unresolved import and on a policy denial;
- ``lock``: ``jhansi lock`` on each; fails when a lock was created or changed,
  so that the commit is retried with the new lock staged (pre-commit's
  contract for hooks that modify files).

``python -m jhansi.ci.precommit check|lock [--include REGEX] [--advisory-db PATH] FILES...``
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: The reference regular expression of PEP 723, for the ``script`` block.
_BLOCK: Final = re.compile(
    r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$"
)


def has_script_block(text: str) -> bool:
    """Whether ``text`` carries a PEP 723 ``# /// script`` block."""
    return any(m.group("type") == "script" for m in _BLOCK.finditer(text))


def select(files: Sequence[str], include: str | None = None) -> list[str]:
    """The ``files`` that are scripts: a PEP 723 block, or a path matching ``include``."""
    pattern = re.compile(include) if include else None
    chosen = []
    for name in files:
        if pattern is not None and pattern.search(Path(name).as_posix()):
            chosen.append(name)
            continue
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if has_script_block(text):
            chosen.append(name)
    return chosen


def _jhansi(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jhansi", *args],
        capture_output=capture,
        text=True,
        check=False,
    )


def check(scripts: Sequence[str], advisory_db: str | None = None) -> int:
    """``jhansi check --frozen`` on ``scripts``; its exit code (0 when there are none)."""
    if not scripts:
        return 0
    extra = ["--advisory-db", advisory_db] if advisory_db else []
    return _jhansi("check", "--frozen", *extra, "--", *scripts).returncode


@dataclass(frozen=True, slots=True)
class LockChange:
    """A lock ``jhansi lock`` created or changed."""

    script: str
    lock_file: str
    created: bool


def _locks_near(script: str) -> dict[Path, bytes]:
    directory = Path(script).parent
    return {p.resolve(): p.read_bytes() for p in directory.glob("pylock.*.toml") if p.is_file()}


def lock(scripts: Sequence[str]) -> tuple[int, list[LockChange]]:
    """``jhansi lock`` on each script; the first error's code (else 0) and what changed."""
    changes: list[LockChange] = []
    code = 0
    for script in scripts:
        before = _locks_near(script)
        proc = _jhansi("lock", "--json", script, capture=True)
        # jhansi's own lines (an error is two: `error:`, `hint:`), each naming the
        # script: the hook may be handed several.
        for line in proc.stderr.splitlines():
            sys.stderr.write(f"{script}: {line}\n")
        try:
            document = json.loads(proc.stdout)
        except ValueError:
            document = {}
        if proc.returncode != 0:
            if not proc.stderr.strip():  # said nothing on stderr: what the JSON says
                error = document.get("error") or {}
                message = error.get("message") or f"jhansi lock failed (exit {proc.returncode})"
                sys.stderr.write(f"{script}: error: {message}\n")
                if error.get("hint"):
                    sys.stderr.write(f"{script}: hint: {error['hint']}\n")
            code = code or proc.returncode
            continue
        lock_file = document.get("lock_file")
        if not lock_file:
            continue  # the standard library only: nothing to lock
        path = Path(lock_file).resolve()
        old = before.get(path)
        if old is None or path.read_bytes() != old:
            changes.append(LockChange(script, lock_file, created=old is None))
    return code, changes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jhansi.ci.precommit", description="jhansi's pre-commit hooks."
    )
    parser.add_argument("command", choices=("check", "lock"))
    parser.add_argument(
        "--include",
        metavar="REGEX",
        help="Also treat files whose path matches REGEX as scripts (no PEP 723 block needed).",
    )
    parser.add_argument("--advisory-db", help="Offline OSV data for check (else [policy]).")
    parser.add_argument("files", nargs="*")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The hooks' entry point; returns the exit code pre-commit sees."""
    options = _parser().parse_args(argv)
    scripts = select(options.files, options.include)
    if options.command == "check":
        return check(scripts, options.advisory_db)
    code, changes = lock(scripts)
    for change in changes:
        verb = "created" if change.created else "updated"
        print(f"{change.script}: {verb} {change.lock_file}: stage it (git add) and commit again")
    return code or (1 if changes else 0)


if __name__ == "__main__":
    raise SystemExit(main())
