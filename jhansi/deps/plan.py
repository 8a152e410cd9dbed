"""From a script to the requirements it needs, each with where it came from.

Precedence, most authoritative first:

1. ``--requirements FILE`` (a requirements.txt or a pyproject.toml's
   ``[project] dependencies``) replaces detection;
2. a PEP 723 ``# /// script`` block is authoritative when present;
3. otherwise every import is classified: standard library (of the *target*
   interpreter), a local module, mapped to a distribution by evidence
   (:mod:`jhansi.deps.mapping`), optional (guarded by ``except ImportError``), or
   **unresolved**.

``--with PKG`` adds to any of them. An unresolved import is never guessed into a
package name — models invent names and attackers register them — so the run is
refused until it is declared.

A run never gets two distributions that install the same module: a declared one
known to provide an import replaces what the map would add for it
(``--with opencv-python-headless`` and ``import cv2`` lock only that build), and
two declared builds of one module (the import map's ``[exclusive]`` groups) are
refused, naming both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jhansi.errors import DependencyError, InputError

if TYPE_CHECKING:  # imported where used: a warm run reuses its plan and needs neither
    from collections.abc import Iterable

    from jhansi.deps.detect import ImportSite
    from jhansi.deps.mapping import ImportMap
    from jhansi.deps.pep723 import ScriptMetadata
    from jhansi.deps.target import Target

Kind = Literal["stdlib", "local", "requirement", "optional", "undeclared", "unresolved"]
Source = Literal["pep723", "with", "requirements", "map"]

#: Standard-library modules of Python 3.8 and 3.9 that later versions dropped; with
#: jhansi's own ``sys.stdlib_module_names``, the list for targets older than 3.10.
LEGACY_STDLIB = frozenset(
    {"_dummy_thread", "dummy_threading", "formatter", "parser", "symbol", "macpath"}
)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def fallback_stdlib() -> frozenset[str]:
    """Standard-library names for an interpreter too old to list its own (< 3.10)."""
    import sys

    return frozenset(sys.stdlib_module_names) | LEGACY_STDLIB


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement to lock, and why."""

    name: str
    """Normalized distribution name."""
    spec: str
    """The PEP 508 string passed to the resolver."""
    source: Source
    evidence: str
    imports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImportDecision:
    """What jhansi made of one imported top-level name."""

    name: str
    """The imported name as written (``google.cloud.storage``, ``yaml``)."""
    kind: Kind
    lines: tuple[int, ...]
    requirement: str | None = None
    evidence: str = ""
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DependencyPlan:
    """Everything decided about a script's dependencies before locking."""

    requirements: tuple[Requirement, ...]
    imports: tuple[ImportDecision, ...]
    requires_python: str | None
    mode: Literal["pep723", "requirements", "detected"]

    @property
    def unresolved(self) -> tuple[ImportDecision, ...]:
        """Imports that no declaration, map entry or standard library explains."""
        return tuple(d for d in self.imports if d.kind == "unresolved")

    @property
    def specs(self) -> tuple[str, ...]:
        """The requirement strings, as the resolver gets them."""
        return tuple(r.spec for r in self.requirements)


def _local(top: str, roots: tuple[Path, ...]) -> bool:
    for root in roots:
        if (root / f"{top}.py").is_file() or (root / top).is_dir():
            return True
        if any(root.glob(f"{top}.*.so")) or any(root.glob(f"{top}.so")):
            return True
    return False


def read_requirements_file(path: Path) -> tuple[str, ...]:
    """Requirements from a requirements.txt or a pyproject.toml's ``[project] dependencies``."""
    import tomllib

    from jhansi.deps.pep723 import check_requirement

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read --requirements {path}: {exc}",
            hint="Name a readable requirements.txt or pyproject.toml.",
        ) from None
    if path.name == "pyproject.toml":
        try:
            project = tomllib.loads(text).get("project", {})
        except tomllib.TOMLDecodeError as exc:
            raise InputError(
                f"{path} is not valid TOML: {exc}", hint=f"Fix the TOML in {path}."
            ) from None
        deps = project.get("dependencies", []) if isinstance(project, dict) else []
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise InputError(
                f"{path}: [project] dependencies is not a list of strings",
                hint='Write it as dependencies = ["requests>=2.32"].',
            )
        return tuple(check_requirement(d, str(path)) for d in deps)
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise InputError(
                f"{path}:{number}: options such as {line.split()[0]} are not accepted",
                hint="List requirements only; index settings belong in your uv or pip "
                "configuration, not in a file a script brings.",
            )
        found.append(check_requirement(line, f"{path}:{number}"))
    return tuple(found)


def plan(
    source: str,
    *,
    where: str,
    target: Target,
    local_roots: tuple[Path, ...],
    with_requirements: tuple[str, ...] = (),
    requirements_file: Path | None = None,
) -> DependencyPlan:
    """Decide what ``source`` needs (raises on a hostile block; unresolved imports are data)."""
    from jhansi.deps import mapping
    from jhansi.deps.detect import scan_imports
    from jhansi.deps.pep723 import check_requirement, read_metadata

    extra = tuple(check_requirement(r, "--with") for r in with_requirements)
    metadata: ScriptMetadata | None = read_metadata(source, where)
    if metadata and metadata.requires_python:
        check_requires_python(metadata.requires_python, target, where)
    sites = scan_imports(source, where)

    requirements: dict[str, Requirement] = {}

    def declare(spec: str, source_kind: Source, evidence: str) -> None:
        name = _normalize(_pep508_name(spec))
        if name not in requirements:
            requirements[name] = Requirement(name, spec, source_kind, evidence)

    mode: Literal["pep723", "requirements", "detected"] = "detected"
    if requirements_file is not None:
        mode = "requirements"
        for spec in read_requirements_file(requirements_file):
            declare(spec, "requirements", str(requirements_file))
    elif metadata is not None:
        mode = "pep723"
        for spec in metadata.dependencies:
            declare(spec, "pep723", f"{where}:{metadata.line}")
    for spec in extra:
        declare(spec, "with", "--with")
    if len(requirements) > 1:  # the map's data is parsed only when it can matter
        check_exclusive(requirements.values(), mapping.bundled(), where)

    by_name: dict[str, list[ImportSite]] = {}
    for site in sites:
        by_name.setdefault(site.module, []).append(site)
    decisions: list[ImportDecision] = []
    seen_tops: dict[str, ImportDecision] = {}
    for module, module_sites in by_name.items():
        lines = tuple(s.line for s in module_sites)
        optional = all(s.optional for s in module_sites)
        top = module.split(".", 1)[0]
        if top in target.stdlib or top == "__future__":
            decision = ImportDecision(
                module,
                "stdlib",
                lines,
                evidence=f"standard library of Python {target.python_minor}",
            )
        elif _local(top, local_roots):
            decision = ImportDecision(module, "local", lines, evidence="a module of the project")
        else:
            found = mapping.resolve(module)
            if found is None:  # `from namespace import package`: try the longer names
                for site in module_sites:
                    for name in site.names:
                        found = found or mapping.resolve(f"{module}.{name}")
            declared = requirements.get(_normalize(top))
            # Any declared provider of the name wins over the map's answer: never both.
            provider = (
                next(
                    (
                        _normalize(dist)
                        for dist in (found.distribution, *found.alternatives)
                        if _normalize(dist) in requirements
                    ),
                    None,
                )
                if found is not None
                else None
            )
            if found is not None and provider is not None:
                name = provider
                decision = ImportDecision(
                    module,
                    "requirement",
                    lines,
                    requirements[name].spec,
                    f"declared ({requirements[name].source}); {found.evidence}"
                    if name == _normalize(found.distribution)
                    else f"declared ({requirements[name].source}); wheel top-level "
                    f"{found.matched!r} is also installed by {name}, so {found.distribution} "
                    "is not added",
                    tuple(
                        d
                        for d in (found.distribution, *found.alternatives)
                        if _normalize(d) != name
                    ),
                )
            elif declared is not None:
                decision = ImportDecision(
                    module,
                    "requirement",
                    lines,
                    declared.spec,
                    f"declared ({declared.source}), same name",
                )
            elif mode != "detected":
                # A declaration is authoritative: an import it leaves out is reported, not
                # refused (the map may simply not know the name a declared package provides).
                decision = ImportDecision(
                    module,
                    "optional" if optional else "undeclared",
                    lines,
                    evidence=f"not in the {mode} declaration",
                )
            elif found is None:
                decision = ImportDecision(
                    module,
                    "optional" if optional else "unresolved",
                    lines,
                    evidence="no known distribution provides it",
                )
            elif optional:
                decision = ImportDecision(
                    module,
                    "optional",
                    lines,
                    found.distribution,
                    f"guarded by except ImportError; {found.evidence}",
                    found.alternatives,
                )
            else:
                declare(found.distribution, "map", found.evidence)
                decision = ImportDecision(
                    module,
                    "requirement",
                    lines,
                    found.distribution,
                    found.evidence,
                    found.alternatives,
                )
        # Submodules of an import already decided are the same decision.
        if top in seen_tops and decision.kind == seen_tops[top].kind:
            continue
        seen_tops.setdefault(top, decision)
        decisions.append(decision)

    final = []
    for requirement in requirements.values():
        used = tuple(
            d.name
            for d in decisions
            if d.requirement and _normalize(_pep508_name(d.requirement)) == requirement.name
        )
        final.append(
            Requirement(
                requirement.name, requirement.spec, requirement.source, requirement.evidence, used
            )
        )
    return DependencyPlan(
        requirements=tuple(final),
        imports=tuple(decisions),
        requires_python=metadata.requires_python if metadata else None,
        mode=mode,
    )


#: A PEP 508 requirement that is nothing but a project name (what the import map gives).
_BARE_NAME = re.compile(r"[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9]", re.IGNORECASE)


def _pep508_name(spec: str) -> str:
    if _BARE_NAME.fullmatch(spec):  # no need to load packaging (~20 ms) for a bare name
        return spec
    from packaging.requirements import Requirement as Pep508

    return Pep508(spec).name


_DECLARED_IN = {"pep723": "the PEP 723 block", "with": "--with", "requirements": "--requirements"}


def check_exclusive(declared: Iterable[Requirement], table: ImportMap, where: str) -> None:
    """Refuse two declared distributions that install the same module (``[exclusive]``).

    Both were asked for explicitly, so jhansi does not choose: installed together, one
    overwrites the other's files and the module is neither of them.
    """
    by_name = {r.name: r for r in declared}
    found = table.conflicts(by_name)
    if not found:
        return
    group, members = found[0]
    first, second = (by_name[m] for m in members[:2])
    keep = table.preferred(members)
    if keep is not None:
        drop = next(m for m in members if m != keep)
        advice = (
            f"Keep {keep}, the build a sandbox can load, and remove {drop} from "
            f"{_DECLARED_IN[by_name[drop].source]}."
        )
    else:
        places = " or ".join(dict.fromkeys(_DECLARED_IN[r.source] for r in (first, second)))
        advice = f"Keep one of them and remove the other from {places} ({group.reason})."
    raise DependencyError(
        f"{where}: {first.name} ({_DECLARED_IN[first.source]}) and {second.name} "
        f"({_DECLARED_IN[second.source]}) both install the module {group.module}, and a run "
        "may have only one of them; nothing was run",
        hint=advice,
    )


def check_requires_python(requires: str, target: Target, where: str) -> None:
    """Refuse a script whose ``requires-python`` the sandbox's interpreter does not meet."""
    from packaging.specifiers import SpecifierSet

    if not SpecifierSet(requires).contains(target.python_version, prereleases=True):
        raise DependencyError(
            f"{where} requires Python {requires} (its PEP 723 requires-python), but the "
            f"sandbox's interpreter is Python {target.python_version}",
            hint="Choose an interpreter that satisfies it: --image (docker backend) or "
            "--python (bwrap backend).",
        )


def unresolved_error(plan: DependencyPlan, where: str) -> DependencyError:
    """The refusal for unresolved imports: which, where, and the exact line to add."""
    names = plan.unresolved
    listed = ", ".join(f"{d.name} (line {', '.join(map(str, d.lines))})" for d in names)
    first = names[0].name.split(".", 1)[0]
    return DependencyError(
        f"{where}: cannot tell which package provides {listed}; nothing was run",
        hint=(
            "jhansi never guesses a package from an import name (made-up names are an attack). "
            "Declare the real distribution in the script: `# /// script` / "
            f'`# dependencies = ["<the package that provides {first}>"]` / `# ///`, '
            f"or pass --with <that package>."
        ),
    )
