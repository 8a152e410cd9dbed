"""Licences of packages as SPDX expressions, and the allow/deny rules they are held to.

Where a licence comes from (first that gives one):

1. the PEP 639 ``License-Expression`` field;
2. the legacy ``License`` field when it is already a valid SPDX expression
   (``Apache-2.0``, ``MIT OR Apache-2.0``): the author's own, most precise words;
3. licence classifiers, mapped by the reviewed table in ``data/classifiers.toml``
   (several mapped classifiers are read as a choice: ``A OR B``);
4. the ``License`` field in a common non-SPDX spelling (``MIT License``,
   ``Apache 2.0``, ``New BSD License`` …), from the same file;
5. else the raw name (the ``License`` field, or an unmapped licence classifier),
   which is an *unknown* licence for the rules.

Rules: an expression passes when some choice of its OR branches (in
disjunctive normal form) passes, and a choice passes when none of its licences
is denied and, when an allow list is given, every one is allowed. A licence
``X WITH exception`` is matched by its full text and by ``X``; an explicit allow
of the full text wins over a deny of ``X`` (the exception only adds rights).
Deprecated and ``+`` spellings (``GPL-2.0+``) are normalized by
``license_expression`` before comparing, in the rules too.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jhansi.supply.metadata import PackageMetadata

_DATA = Path(__file__).parent / "data" / "classifiers.toml"
_LICENSE_CLASSIFIER = "License :: "
_FOLD = re.compile(r"[\s,;:()_/\-]+")
_NOISE = frozenset({"the", "version", "v", "license"})


@dataclass(frozen=True, slots=True)
class LicenseInfo:
    """A package's licence as jhansi understood it, and where that came from."""

    expression: str | None
    """A valid SPDX expression (a single id is one too), normalized; None when unknown."""
    name: str | None
    """The raw licence name when it maps to no SPDX expression (``expression`` is None)."""
    evidence: str
    """Where it was read: ``License-Expression field``, ``classifier "…"`` …"""


@dataclass(frozen=True, slots=True)
class LicenseRules:
    """A licence policy: SPDX ids allowed (empty: all) and denied, and what unknown means."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    unknown: Literal["warn", "deny"] = "warn"


@dataclass(frozen=True, slots=True)
class LicenseVerdict:
    """The outcome of :func:`evaluate`: ``ok`` when there is nothing to report."""

    ok: bool
    severity: Literal["deny", "warn"] | None
    """``deny`` refuses, ``warn`` reports; None when ``ok``."""
    reason: str


# -- SPDX -----------------------------------------------------------------------------------


@functools.cache
def _licensing() -> Any:
    from license_expression import get_spdx_licensing  # type: ignore[import-untyped]

    return get_spdx_licensing()


def spdx_expression(text: str) -> str | None:
    """``text`` as a normalized SPDX expression, or None when it is not one.

    ``LicenseRef-…`` ids are valid SPDX (user-defined licences) though no list
    knows them.
    """
    text = text.strip()
    if not text or len(text) > 500:
        return None
    licensing = _licensing()
    try:
        info = licensing.validate(text)
    except Exception:  # the parser raises several unrelated types on odd input
        return None
    if not info.errors:
        return str(info.normalized_expression)
    unknown = [str(s) for s in info.invalid_symbols]
    if unknown and all(s.startswith("LicenseRef-") for s in unknown):
        try:
            parsed = licensing.parse(text, validate=False)
        except Exception:
            return None
        if parsed is not None and not any(" " in str(s) for s in unknown):
            return str(parsed)
    return None


def _fold(text: str) -> str:
    words = _FOLD.sub(" ", text.lower().replace("licence", "license")).split()
    return " ".join(w for w in words if w not in _NOISE)


@functools.cache
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    data: dict[str, Any] = tomllib.loads(_DATA.read_text(encoding="utf-8"))
    classifiers = {str(k): str(v) for k, v in data["classifiers"].items()}
    names = {_fold(str(k)): str(v) for k, v in data["names"].items()}
    return classifiers, names


def classifier_table() -> dict[str, str]:
    """The reviewed classifier → SPDX id mapping (a copy)."""
    return dict(_tables()[0])


def license_of(meta: PackageMetadata) -> LicenseInfo:
    """The licence of a package from its metadata (see the module docstring for the order)."""
    if meta.license_expression:
        expression = spdx_expression(meta.license_expression)
        if expression is not None:
            return LicenseInfo(expression, None, "License-Expression field")
    if meta.license:
        expression = spdx_expression(meta.license)
        if expression is not None:
            return LicenseInfo(expression, None, "License field")
    classifiers, names = _tables()
    licence_classifiers = [c for c in meta.classifiers if c.startswith(_LICENSE_CLASSIFIER)]
    mapped = [classifiers[c] for c in licence_classifiers if c in classifiers]
    if mapped:
        ids = list(dict.fromkeys(mapped))
        expression = spdx_expression(" OR ".join(ids))
        if expression is not None:
            used = [c for c in licence_classifiers if c in classifiers]
            return LicenseInfo(expression, None, "classifier " + ", ".join(f'"{c}"' for c in used))
    if meta.license:
        spelled = names.get(_fold(meta.license))
        if spelled is not None:
            return LicenseInfo(spelled, None, f'License field "{meta.license}"')
    if meta.license_expression:
        return LicenseInfo(
            None, meta.license_expression, "License-Expression field (not valid SPDX)"
        )
    if meta.license:
        return LicenseInfo(None, meta.license, "License field (no SPDX id)")
    unmapped = [c for c in licence_classifiers if c not in classifiers]
    if unmapped:
        return LicenseInfo(
            None, unmapped[0].rsplit(" :: ", 1)[-1], f'classifier "{unmapped[0]}" (no SPDX id)'
        )
    if meta.source == "unavailable":
        return LicenseInfo(None, None, f"metadata unavailable: {meta.problem or 'unknown'}")
    return LicenseInfo(None, None, "no licence in the package's metadata")


# -- rules ----------------------------------------------------------------------------------


def _key(text: str) -> str:
    """A licence id (or ``X WITH e``) as the rules compare it: normalized, case-folded."""
    return (spdx_expression(text) or text.strip()).casefold()


def _choices(expression: str) -> list[list[tuple[str, str]]]:
    """The OR choices of ``expression``, each a list of (full text, base licence) keys."""
    from license_expression import (
        AND,
        OR,
        LicenseSymbol,
        LicenseWithExceptionSymbol,
    )

    licensing = _licensing()
    parsed = licensing.dnf(licensing.parse(expression, validate=False))
    branches = list(parsed.args) if isinstance(parsed, OR) else [parsed]
    choices: list[list[tuple[str, str]]] = []
    for branch in branches:
        terms = list(branch.args) if isinstance(branch, AND) else [branch]
        choice: list[tuple[str, str]] = []
        for term in terms:
            if isinstance(term, LicenseWithExceptionSymbol):
                choice.append((str(term).casefold(), str(term.license_symbol.key).casefold()))
            elif isinstance(term, LicenseSymbol):
                choice.append((str(term.key).casefold(), str(term.key).casefold()))
            else:
                choice.append((str(term).casefold(), str(term).casefold()))
        choices.append(choice)
    return choices


def _display(key: str, expression: str) -> str:
    """The licence named by ``key`` in the expression's own spelling."""
    for part in re.split(r"\s+(?:AND|OR)\s+|[()]", expression):
        if part.strip().casefold() == key:
            return part.strip()
    return key


def evaluate(info: LicenseInfo, rules: LicenseRules) -> LicenseVerdict:
    """Hold one package's licence to the rules (see the module docstring)."""
    if info.expression is None:
        what = f"licence {info.name!r} is not an SPDX licence" if info.name else "no licence"
        detail = f"{what} ({info.evidence})"
        if info.name and info.name.casefold() in {a.casefold() for a in rules.allow}:
            return LicenseVerdict(True, None, f"licence {info.name!r} is allowed by name")
        return LicenseVerdict(False, rules.unknown, f"unknown licence: {detail}")
    allow = {_key(a) for a in rules.allow}
    deny = {_key(d) for d in rules.deny}
    reasons: list[str] = []
    for choice in _choices(info.expression):
        problems: list[str] = []
        for full, base in choice:
            name = _display(full, info.expression)
            if full in allow:
                continue
            if full in deny or base in deny:
                problems.append(f"{name} is denied")
            elif allow and base not in allow:
                problems.append(f"{name} is not in the allowed licences")
        if not problems:
            return LicenseVerdict(True, None, f"{info.expression} ({info.evidence})")
        reasons.extend(p for p in problems if p not in reasons)
    return LicenseVerdict(False, "deny", f"{info.expression}: {'; '.join(reasons)}")
