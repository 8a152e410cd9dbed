"""After a failed run: which missing distribution its ImportError names, and how to add it.

A script that dies of ``ImportError: email-validator is not installed, run `pip
install 'pydantic[email]'``` or ``ModuleNotFoundError: No module named 'yaml'``
(an import jhansi could not see: ``__import__(name)``) needs one more requirement.
:func:`recognize` reads the end of the run's stderr and says which, so that jhansi
can end with the ``--with`` that fixes it. One that dies of ``ImportError:
libxcb.so.1: cannot open shared object file`` in ``cv2`` had a build a sandbox
cannot load (``opencv-python``, declared): the hint names the build it prefers
(the import map's ``[sandbox_prefers]``), to declare in its place.

The script's stderr is untrusted: anything can print a fake ImportError to have
the user install a look-alike package. So a suggestion is made only with the same
evidence the import map needs (:mod:`jhansi.deps.mapping`): a distribution some
real wheel of the most-downloaded projects showed, or a module name the map
resolves; it is never one already installed; and it is rebuilt from validated
parts (a PEP 503 name, extras of the same characters), never copied from the
output, so that it cannot carry terminal escapes or shell syntax.

Only the exception that ended the run counts (the last traceback and the ones it
was chained from): an ImportError a script caught and logged earlier is not why
it failed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection

    from jhansi.deps.mapping import ImportMap

#: The last line of a traceback for the exceptions that mean "not installed"
#: (``ModuleNotFoundError``, ``ImportError``, and subclasses named so: ``PydanticImportError``).
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*(?:\w*ImportError|ModuleNotFoundError): (?P<msg>.*)$")
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)
_NO_MODULE = re.compile(r"^No module named '(?P<name>[\w.]+)'(?P<rest>.*)$")
#: ``No module named 'yaml.x'; 'yaml' is not a package``: a module of that name was
#: found (often the project's own ``yaml.py``): installing the distribution will not help.
_NOT_A_PACKAGE = "is not a package"
_PIP_INSTALL = re.compile(
    r"(?:\bpip3?\s+install|\buv\s+pip\s+install|\buv\s+add)\s+(?P<args>[^`\n]*)"
)
#: ``X is not installed`` (pydantic), ``the 'X' package is not installed`` (httpx): what
#: is missing, said before the command that adds it.
_NOT_INSTALLED = re.compile(
    r"(?:^|\s)(?P<quote>'?)(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P=quote)"
    r"(?: package)? is not installed"
)
_REQUIREMENT = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?:\[(?P<extras>[A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*)\])?"
)
#: pip options that take a value or say where packages come from: a command with any
#: of them is not one to repeat.
_REFUSED_OPTIONS = re.compile(
    r"^-(?:[icfer]|-index-url|-extra-index-url|-find-links|-editable|-requirement|-constraint)"
)
_VERSION = re.compile(r"[<>=!~]")
_SHARED_LIBRARY = re.compile(
    r"^(?P<lib>lib[A-Za-z0-9_.+-]+\.so[0-9.]*): cannot open shared object file"
)
_FRAME = re.compile(r'^  File "(?P<path>[^"]+)"')
#: How far back in stderr to look (the tail is bounded already; this bounds the work).
_MAX_CHARS = 64 * 1024


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, slots=True)
class MissingDependency:
    """A distribution a failed run needed, and the requirement that adds it."""

    distribution: str
    """What is missing, PEP 503 normalized (``email-validator``)."""
    requirement: str
    """What to declare, rebuilt from validated parts: a normalized name, then any
    extras (``pydantic[email]``), or the distribution itself."""
    replaces: str = ""
    """The declared build it replaces, which could not load (``opencv-python``)."""
    library: str = ""
    """The shared library that build could not find (``libxcb.so.1``)."""

    def message(self) -> str:
        """One line: what the script needs, and the ``--with`` that adds it."""
        if self.replaces:
            return (
                f"{self.replaces} needs {self.library}, which this sandbox lacks; declare "
                f"{self.requirement} in its place (--with or the PEP 723 block)"
            )
        needs = self.requirement
        if self.requirement.split("[", 1)[0] != self.distribution:
            needs = f"{self.distribution} ({self.requirement})"
        return (
            f"the script needs {needs}; add it with --with {shlex.quote(self.requirement)} "
            "or a PEP 723 line"
        )

    def as_dict(self) -> dict[str, str]:
        """The ``--json`` form."""
        return {
            "distribution": self.distribution,
            "requirement": self.requirement,
            **({"replaces": self.replaces} if self.replaces else {}),
            "hint": self.message(),
        }


def recognize(
    stderr: bytes,
    *,
    installed: Collection[str] = (),
    table: ImportMap | None = None,
) -> MissingDependency | None:
    """The missing distribution the exception that ended a run names, or None.

    ``installed`` holds the normalized names of what the run had (a name in it is
    not missing: the failure is something else); ``table`` is the import map
    (default: the bundled one).
    """
    if table is None:
        from jhansi.deps.mapping import bundled

        table = bundled()
    have = {_normalize(name) for name in installed}
    text = stderr[-_MAX_CHARS:].decode("utf-8", "replace")
    lines = _final_traceback(text.splitlines())
    messages = [m.group("msg") for line in lines if (m := _EXCEPTION.match(line))]
    for message in reversed(messages):
        found = (
            _from_pip_command(message, table)
            or _from_module_name(message, table)
            or _from_missing_library(message, lines, have, table)
        )
        if found is not None and found.distribution not in have:
            return found
    return None


def _final_traceback(lines: list[str]) -> list[str]:
    """The last traceback, and those it was chained from."""
    starts = [i for i, line in enumerate(lines) if line == _TRACEBACK]
    first = len(starts) - 1
    while first > 0 and _chained_before(lines, starts[first]):
        first -= 1
    # With no traceback header in the kept tail, what there is is looked at.
    return lines[starts[first] :] if starts else lines


def _chained_before(lines: list[str], start: int) -> bool:
    previous = [line for line in lines[max(0, start - 3) : start] if line.strip()]
    return bool(previous) and previous[-1] in _CHAINED


def _from_pip_command(message: str, table: ImportMap) -> MissingDependency | None:
    """``... run `pip install 'pydantic[email]'``` -> pydantic[email] (needs email-validator)."""
    command = _PIP_INSTALL.search(message)
    if command is None:
        return None
    try:
        words = shlex.split(command.group("args"))
    except ValueError:
        words = command.group("args").split()
    for word in words:
        if _REFUSED_OPTIONS.match(word):
            return None
        if word.startswith("-"):
            continue
        requirement = _requirement(word.strip("'\"").rstrip(".,;:)!'\""), table)
        if requirement is None:
            return None
        name = requirement.split("[", 1)[0]
        named = _NOT_INSTALLED.search(message[: command.start()])
        needs = _normalize(named.group("name")) if named else name
        if not table.knows(needs):
            needs = name
        return MissingDependency(needs, requirement)
    return None


def _requirement(word: str, table: ImportMap) -> str | None:
    """``pydantic[email]`` rebuilt from its validated parts, for a known distribution
    (a version specifier, and whatever follows it, is dropped)."""
    cut = _VERSION.search(word)
    match = _REQUIREMENT.fullmatch(word[: cut.start()] if cut else word)
    if match is None:
        return None
    name = _normalize(match.group("name"))
    if not table.knows(name):
        return None
    extras = match.group("extras")
    if not extras:
        return name
    return f"{name}[{','.join(_normalize(e.strip()) for e in extras.split(','))}]"


def _from_module_name(message: str, table: ImportMap) -> MissingDependency | None:
    """``No module named 'yaml'`` -> pyyaml, when the import map knows the name."""
    match = _NO_MODULE.match(message)
    if match is None or _NOT_A_PACKAGE in match.group("rest"):
        return None
    found = table.resolve(match.group("name"))
    if found is None:
        return None
    return MissingDependency(found.distribution, found.distribution)


def _from_missing_library(
    message: str, lines: list[str], have: set[str], table: ImportMap
) -> MissingDependency | None:
    """``libxcb.so.1: cannot open shared object file``, raised inside ``cv2/`` while the
    run had ``opencv-python``: the build a sandbox prefers, in its place."""
    library = _SHARED_LIBRARY.match(message)
    if library is None:
        return None
    frames = {m.group("path") for line in lines if (m := _FRAME.match(line))}
    for group in table.exclusive:
        package = "/" + group.module.replace(".", "/") + "/"
        if not any(package in path for path in frames):
            continue
        for over in sorted(have & set(group.distributions)):
            instead = table.preferred_over(over)
            if instead is not None and instead in group.distributions:
                return MissingDependency(instead, instead, over, library.group("lib"))
    return None
