"""jhansi.supply.licenses: where a licence is read from, and the allow/deny rules."""

from __future__ import annotations

import pytest

from jhansi.supply.licenses import (
    LicenseInfo,
    LicenseRules,
    LicenseVerdict,
    classifier_table,
    evaluate,
    license_of,
    spdx_expression,
)
from jhansi.supply.metadata import PackageMetadata

MIT_CLASSIFIER = "License :: OSI Approved :: MIT License"
APACHE_CLASSIFIER = "License :: OSI Approved :: Apache Software License"
BSD_CLASSIFIER = "License :: OSI Approved :: BSD License"
GPL3_PLUS = "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)"


def meta(**fields: object) -> PackageMetadata:
    return PackageMetadata(name="pkg", version="1.0", source="index", **fields)  # type: ignore[arg-type]


def test_every_mapped_classifier_is_a_valid_spdx_id() -> None:
    table = classifier_table()
    assert len(table) >= 30
    for classifier, spdx in table.items():
        assert classifier.startswith("License :: "), classifier
        assert spdx_expression(spdx) == spdx, (classifier, spdx)
    assert BSD_CLASSIFIER not in table  # ambiguous: which BSD?


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # License-Expression wins over everything else.
        (
            {
                "license_expression": "mit or apache-2.0",
                "license": "GPL",
                "classifiers": (MIT_CLASSIFIER,),
            },
            LicenseInfo("MIT OR Apache-2.0", None, "License-Expression field"),
        ),
        (
            {"license_expression": "LicenseRef-Proprietary"},
            LicenseInfo("LicenseRef-Proprietary", None, "License-Expression field"),
        ),
        # A License field that already is SPDX is the author's most precise word.
        (
            {"license": "Apache-2.0", "classifiers": (APACHE_CLASSIFIER,)},
            LicenseInfo("Apache-2.0", None, "License field"),
        ),
        ({"license": "GPL-2.0+"}, LicenseInfo("GPL-2.0-or-later", None, "License field")),
        # Classifiers, through the reviewed table.
        (
            {"license": "BSD", "classifiers": (APACHE_CLASSIFIER,)},
            LicenseInfo("Apache-2.0", None, f'classifier "{APACHE_CLASSIFIER}"'),
        ),
        (
            {"classifiers": (GPL3_PLUS,)},
            LicenseInfo("GPL-3.0-or-later", None, f'classifier "{GPL3_PLUS}"'),
        ),
        (
            {"classifiers": (APACHE_CLASSIFIER, BSD_CLASSIFIER, MIT_CLASSIFIER)},
            LicenseInfo(
                "Apache-2.0 OR MIT",
                None,
                f'classifier "{APACHE_CLASSIFIER}", "{MIT_CLASSIFIER}"',
            ),
        ),
        # Common spellings of the License field.
        ({"license": "MIT License"}, LicenseInfo("MIT", None, 'License field "MIT License"')),
        (
            {"license": "Apache License, Version 2.0"},
            LicenseInfo("Apache-2.0", None, 'License field "Apache License, Version 2.0"'),
        ),
        ({"license": "new BSD"}, LicenseInfo("BSD-3-Clause", None, 'License field "new BSD"')),
        ({"license": "BSD-3-Clause"}, LicenseInfo("BSD-3-Clause", None, "License field")),
        # What maps to nothing stays a name: an unknown licence.
        (
            {"license": "BSD", "classifiers": (BSD_CLASSIFIER,)},
            LicenseInfo(None, "BSD", "License field (no SPDX id)"),
        ),
        (
            {"classifiers": (BSD_CLASSIFIER,)},
            LicenseInfo(None, "BSD License", f'classifier "{BSD_CLASSIFIER}" (no SPDX id)'),
        ),
        ({}, LicenseInfo(None, None, "no licence in the package's metadata")),
    ],
)
def test_license_of(fields: dict[str, object], expected: LicenseInfo) -> None:
    assert license_of(meta(**fields)) == expected


def test_unavailable_metadata_says_why() -> None:
    info = license_of(
        PackageMetadata("pkg", "1.0", source="unavailable", problem="the index did not answer")
    )
    assert (info.expression, info.name) == (None, None)
    assert "the index did not answer" in info.evidence


def known(expression: str) -> LicenseInfo:
    return LicenseInfo(spdx_expression(expression), None, "test")


def test_no_rules_pass_any_known_licence() -> None:
    assert evaluate(known("GPL-3.0-only"), LicenseRules()) == LicenseVerdict(
        True, None, "GPL-3.0-only (test)"
    )


def test_a_denied_licence_is_named() -> None:
    verdict = evaluate(known("GPL-3.0-or-later"), LicenseRules(deny=("GPL-3.0-or-later",)))
    assert (verdict.ok, verdict.severity) == (False, "deny")
    assert "GPL-3.0-or-later is denied" in verdict.reason


def test_some_or_choice_passing_is_enough() -> None:
    rules = LicenseRules(deny=("GPL-3.0-only",))
    assert evaluate(known("MIT OR GPL-3.0-only"), rules).ok
    assert evaluate(known("(MIT OR GPL-3.0-only) AND BSD-3-Clause"), rules).ok
    verdict = evaluate(known("GPL-3.0-only AND MIT"), rules)
    assert verdict.severity == "deny"
    assert "GPL-3.0-only is denied" in verdict.reason


def test_an_allow_list_needs_every_licence_of_a_choice() -> None:
    rules = LicenseRules(allow=("MIT", "BSD-3-Clause"))
    assert evaluate(known("MIT AND BSD-3-Clause"), rules).ok
    assert evaluate(known("Apache-2.0 OR MIT"), rules).ok
    verdict = evaluate(known("MIT AND Apache-2.0"), rules)
    assert verdict.severity == "deny"
    assert "Apache-2.0 is not in the allowed licences" in verdict.reason


def test_rules_compare_normalized_spellings() -> None:
    # "+" and deprecated ids are the same licences as their current spellings.
    assert evaluate(known("GPL-2.0-or-later"), LicenseRules(deny=("GPL-2.0+",))).severity == "deny"
    assert evaluate(known("GPL-3.0-only"), LicenseRules(deny=("gpl-3.0",))).severity == "deny"
    assert evaluate(known("mit"), LicenseRules(allow=("MIT",))).ok


def test_with_exceptions() -> None:
    classpath = known("GPL-2.0-only WITH Classpath-exception-2.0")
    assert classpath.expression == "GPL-2.0-only WITH Classpath-exception-2.0"
    verdict = evaluate(classpath, LicenseRules(deny=("GPL-2.0-only",)))
    assert verdict.severity == "deny"
    assert "GPL-2.0-only WITH Classpath-exception-2.0 is denied" in verdict.reason
    # Allowing the licence with its exception, explicitly, wins over denying the licence.
    assert evaluate(
        classpath,
        LicenseRules(allow=("GPL-2.0-only WITH Classpath-exception-2.0",), deny=("GPL-2.0-only",)),
    ).ok
    # An allowed base licence allows it with an exception (which only adds rights).
    assert evaluate(classpath, LicenseRules(allow=("GPL-2.0-only",))).ok


@pytest.mark.parametrize("unknown", ["warn", "deny"])
def test_unknown_licences_follow_the_rule(unknown: str) -> None:
    rules = LicenseRules(unknown=unknown)  # type: ignore[arg-type]
    verdict = evaluate(license_of(meta(license="Some Custom Licence")), rules)
    assert verdict == LicenseVerdict(
        False,
        unknown,  # type: ignore[arg-type]
        "unknown licence: licence 'Some Custom Licence' is not an SPDX licence "
        "(License field (no SPDX id))",
    )
    assert evaluate(license_of(meta()), rules).severity == unknown


def test_an_unknown_licence_can_be_allowed_by_its_name() -> None:
    info = license_of(meta(classifiers=(BSD_CLASSIFIER,)))
    assert evaluate(info, LicenseRules(allow=("BSD License",), unknown="deny")).ok


def test_user_defined_licences_are_not_in_an_allow_list_unless_named() -> None:
    info = known("LicenseRef-Proprietary")
    assert info.expression == "LicenseRef-Proprietary"
    assert evaluate(info, LicenseRules(allow=("MIT",))).severity == "deny"
    assert evaluate(info, LicenseRules(allow=("MIT", "LicenseRef-Proprietary"))).ok


def test_every_spelling_in_the_table_maps_to_its_valid_spdx_id() -> None:
    import tomllib
    from pathlib import Path

    import jhansi.supply

    data = Path(jhansi.supply.__file__).parent / "data" / "classifiers.toml"
    names = tomllib.loads(data.read_text())["names"]
    assert len(names) >= 40
    for spelling, spdx in names.items():
        assert spdx_expression(spdx) == spdx, spdx
        assert license_of(meta(license=spelling)).expression == spdx, spelling
