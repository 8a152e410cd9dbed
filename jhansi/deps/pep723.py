"""PEP 723 inline script metadata, read as the untrusted input it is.

A script's ``# /// script`` block may declare ``dependencies`` and
``requires-python``. Anything that could redirect where packages come from is
refused: a ``[tool.uv]`` table (it can set indexes and sources), any other
``[tool.*]`` table (a script does not configure the tools that check it), and
direct references (``pkg @ https://…``, VCS URLs, local paths), which bypass the
index and so the provenance checks.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

from jhansi.errors import InputError

#: The reference regular expression from PEP 723.
_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")
_ALLOWED_KEYS = frozenset({"dependencies", "requires-python"})
_MAX_DEPENDENCIES = 500
#: Longer than any real requirement with markers; bounds what packaging parses.
_MAX_REQUIREMENT = 1000


@dataclass(frozen=True, slots=True)
class ScriptMetadata:
    """The parsed ``script`` block."""

    dependencies: tuple[str, ...]
    """PEP 508 requirement strings, validated."""
    requires_python: str | None
    line: int
    """The line of the block's opening ``# /// script``."""


def _refuse(where: str, line: int, what: str, hint: str) -> InputError:
    return InputError(f"{where}:{line}: PEP 723 block refused: {what}", hint=hint)


def read_metadata(source: str, where: str) -> ScriptMetadata | None:
    """The script's PEP 723 ``script`` block, or ``None`` if it has none."""
    blocks = [m for m in _BLOCK.finditer(source) if m.group("type") == "script"]
    if not blocks:
        return None
    line = source.count("\n", 0, blocks[0].start()) + 1
    if len(blocks) > 1:
        raise _refuse(
            where,
            line,
            "more than one `# /// script` block",
            "Keep exactly one block (PEP 723 forbids several).",
        )
    content = "".join(
        text[2:] if text.startswith("# ") else text[1:]
        for text in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        table = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise _refuse(
            where,
            line,
            f"not valid TOML: {exc}",
            "Fix the TOML between `# /// script` and `# ///`.",
        ) from None
    except (RecursionError, MemoryError):
        # tomllib parses nested arrays and tables recursively: `[[[[...` thousands deep.
        raise _refuse(
            where,
            line,
            "its TOML nests too deeply",
            "A script block holds a flat list of dependencies; fix the block.",
        ) from None
    tool = table.pop("tool", None)
    if tool is not None:
        names = ", ".join(f"[tool.{k}]" for k in tool) if isinstance(tool, dict) else "[tool]"
        raise _refuse(
            where,
            line,
            f"{names} in a script's metadata",
            "A script is untrusted input: it may not configure uv (indexes, sources) or "
            "jhansi. Put such settings in jhansi.toml or your uv configuration instead.",
        )
    unknown = sorted(set(table) - _ALLOWED_KEYS)
    if unknown:
        raise _refuse(
            where,
            line,
            f"unknown key(s) {', '.join(unknown)}",
            "A script block may hold only `dependencies` and `requires-python`.",
        )
    dependencies = table.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise _refuse(
            where,
            line,
            "`dependencies` must be a list of strings",
            'Write it as dependencies = ["requests>=2.32", "pyyaml"].',
        )
    if len(dependencies) > _MAX_DEPENDENCIES:
        raise _refuse(
            where,
            line,
            f"{len(dependencies)} dependencies (at most {_MAX_DEPENDENCIES})",
            "Declare what the script imports, nothing more.",
        )
    checked = tuple(check_requirement(d, f"{where}:{line}") for d in dependencies)
    requires = table.get("requires-python")
    if requires is not None:
        if not isinstance(requires, str):
            raise _refuse(
                where,
                line,
                "`requires-python` must be a string",
                'Write it as requires-python = ">=3.11".',
            )
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(requires)
        except InvalidSpecifier:
            raise _refuse(
                where,
                line,
                f"requires-python = {requires!r} is not a version specifier",
                'Write it as requires-python = ">=3.11".',
            ) from None
    return ScriptMetadata(dependencies=checked, requires_python=requires, line=line)


def check_requirement(text: str, where: str) -> str:
    """``text`` if it is a PEP 508 requirement on a package from the index."""
    from packaging.requirements import InvalidRequirement, Requirement

    hint = 'Write requirements as PEP 508 strings, e.g. "requests>=2.32".'
    bad = next((c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        # packaging hands marker strings to ast.literal_eval, which raises on a NUL
        # (and a requirement has no business holding control characters at all).
        raise InputError(
            f"{where}: {text!r} holds a control character (U+{ord(bad):04X})", hint=hint
        )
    if len(text) > _MAX_REQUIREMENT:
        raise InputError(
            f"{where}: a requirement of {len(text)} characters (at most {_MAX_REQUIREMENT})",
            hint=hint,
        )
    try:
        requirement = Requirement(text)
    except (InvalidRequirement, ValueError, SyntaxError, RecursionError) as exc:
        raise InputError(
            f"{where}: {text!r} is not a valid requirement: {exc}", hint=hint
        ) from None
    if requirement.url:
        raise InputError(
            f"{where}: {text!r} is a direct reference ({requirement.url})",
            hint="jhansi installs only packages from the index, so that they can be checked: "
            f"name {requirement.name} with a version instead.",
        )
    return str(requirement)
