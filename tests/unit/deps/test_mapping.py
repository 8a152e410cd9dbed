"""jhansi.deps.mapping: import name -> distribution, from evidence only."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.resources import files
from typing import Any

import pytest

from jhansi.deps import mapping
from jhansi.deps.mapping import (
    Exclusive,
    ImportMap,
    ImportMapping,
    Override,
    Preference,
    resolve,
)

DATA = files("jhansi.deps").joinpath("data")


def _data() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        DATA.joinpath("import_map.json").read_text(encoding="utf-8")
    )
    return result


def _overrides() -> dict[str, Any]:
    return tomllib.loads(DATA.joinpath("import_overrides.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("import_name", "distribution"),
    [
        ("cv2", "opencv-python-headless"),
        ("sklearn", "scikit-learn"),
        ("PIL", "pillow"),
        ("yaml", "pyyaml"),
        ("bs4", "beautifulsoup4"),
        ("dateutil", "python-dateutil"),
        ("jwt", "pyjwt"),
        ("dotenv", "python-dotenv"),
        ("attr", "attrs"),
        ("google.protobuf", "protobuf"),
        ("OpenSSL", "pyopenssl"),
        ("git", "gitpython"),
        ("docx", "python-docx"),
        ("serial", "pyserial"),
        ("skimage", "scikit-image"),
        ("zmq", "pyzmq"),
        ("MySQLdb", "mysqlclient"),
        ("psycopg2", "psycopg2-binary"),
        ("Crypto", "pycryptodome"),
        ("requests", "requests"),
        ("numpy", "numpy"),
    ],
)
def test_well_known_imports(import_name: str, distribution: str) -> None:
    found = resolve(import_name)
    assert found is not None, import_name
    assert found.distribution == distribution
    assert found.import_name == import_name
    assert found.evidence


def test_made_up_names_do_not_map() -> None:
    assert resolve("fastapi_helpers_for_llm_agents") is None
    assert resolve("totally_not_a_real_package_42.sub") is None
    assert resolve("") is None
    assert resolve("not an import") is None
    assert resolve("a..b") is None


def test_submodules_fall_back_to_the_package() -> None:
    found = resolve("yaml.constructor.FullConstructor")
    assert found is not None
    assert found.distribution == "pyyaml"
    assert found.matched == "yaml"
    assert found.import_name == "yaml.constructor.FullConstructor"


def test_namespace_packages_use_the_longest_prefix() -> None:
    storage = resolve("google.cloud.storage.blob")
    assert storage is not None
    assert storage.distribution == "google-cloud-storage"
    assert storage.matched == "google.cloud.storage"
    protobuf = resolve("google.protobuf.json_format")
    assert protobuf is not None
    assert protobuf.distribution == "protobuf"
    # Never past a namespace package: its other contents could come from anywhere.
    assert resolve("google.cloud.not_a_real_service_xyz") is None
    assert resolve("google.not_a_real_thing_xyz") is None


def test_standard_library_and_test_packages_never_map() -> None:
    for name in ("test", "test.support", "tests", "typing", "enum", "dataclasses", "asyncio"):
        assert resolve(name) is None, name


def test_evidence() -> None:
    found = resolve("yaml")
    assert found is not None
    assert re.fullmatch(
        r"wheel top-level 'yaml', rank \d+ in top-pypi-packages\.csv .*", found.evidence
    )
    jwt = resolve("jwt")
    assert jwt is not None
    assert jwt.evidence.startswith("override: pinned: the unrelated `jwt` project")
    assert "jwt" in jwt.alternatives  # the unrelated `jwt` project also installs `jwt`
    storage = resolve("google.cloud.storage.blob")
    assert storage is not None
    assert storage.evidence.startswith("wheel top-level 'google.cloud.storage', rank ")


def test_data_header() -> None:
    data = _data()
    assert data["top"] >= 5000
    assert data["projects_read"] >= 4500
    assert data["source"]["file"] == "top-pypi-packages.csv"
    assert data["source"]["date"] == "2026-04-01"
    assert data["generator"].startswith("scripts/gen-import-map.py")
    for name, providers in data["imports"].items():
        ranks = [rank for _, rank in providers]
        assert ranks == sorted(ranks), name
        for distribution, _ in providers:
            assert distribution == re.sub(r"[-_.]+", "-", distribution).lower()


# Removed from the standard library in 3.12 and 3.13: their PyPI successors are
# real answers for a script on a newer interpreter (the caller asks the mapping
# only about names the target interpreter's standard library lacks).
REMOVED_FROM_STDLIB = {
    *("asynchat", "asyncore", "distutils", "imp", "smtpd", "aifc", "audioop", "cgi"),
    *("cgitb", "chunk", "crypt", "imghdr", "lib2to3", "mailcap", "msilib", "nis"),
    *("nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu"),
    "xdrlib",
}


def test_data_names_no_standard_library_module() -> None:
    stdlib = set(sys.stdlib_module_names) - REMOVED_FROM_STDLIB
    assert not {name.split(".")[0] for name in _data()["imports"]} & stdlib


def test_removed_standard_library_modules_map_to_their_successors() -> None:
    for name, distribution in [("cgi", "legacy-cgi"), ("imghdr", "standard-imghdr")]:
        found = resolve(name)
        assert found is not None, name
        assert found.distribution == distribution


def test_overrides_are_reviewed_entries() -> None:
    overrides = _overrides()
    assert set(overrides) <= {"imports", "never", "exclusive", "sandbox_prefers"}
    for name, entry in overrides["imports"].items():
        assert all(part.isidentifier() for part in name.split(".")), name
        assert entry["reason"].strip(), name
        assert entry["distribution"] == re.sub(r"[-_.]+", "-", entry["distribution"]).lower()
    for name, entry in overrides["never"].items():
        assert entry["reason"].strip(), name


def test_override_targets_are_evidenced_by_the_data() -> None:
    # An override names a distribution a real wheel showed to install that name:
    # a typo here would send users to whoever registers the misspelling.
    imports = _data()["imports"]
    for name, entry in _overrides()["imports"].items():
        providers = [dist for dist, _ in imports.get(name, [])]
        assert entry["distribution"] in providers, (name, providers)


def test_exclusive_groups_are_evidenced_by_the_data() -> None:
    # Each group's members are real wheels that install its module: a typo would
    # either miss a conflict or refuse a run for a name nobody installs.
    imports = _data()["imports"]
    for name, entry in _overrides()["exclusive"].items():
        providers = {dist for dist, _ in imports.get(name, [])}
        assert len(entry["distributions"]) >= 2, name
        assert set(entry["distributions"]) <= providers, (name, providers)
        assert entry["reason"].strip(), name


def test_sandbox_preferences_are_exclusive_pairs_the_data_ranks_first() -> None:
    groups = [set(e["distributions"]) for e in _overrides()["exclusive"].values()]
    preferred = _overrides()["sandbox_prefers"]
    assert {"opencv-python-headless", "opencv-contrib-python-headless"} <= set(preferred)
    for instead, entry in preferred.items():
        assert any({instead, entry["over"]} <= group for group in groups), instead
        assert entry["reason"].strip(), instead
    # No reviewed override sends a name to a build a sandbox avoids.
    avoided = {entry["over"] for entry in preferred.values()}
    assert not {e["distribution"] for e in _overrides()["imports"].values()} & avoided


def test_a_sandbox_gets_the_headless_opencv_with_the_evidence() -> None:
    found = resolve("cv2.dnn")
    assert found is not None
    assert (found.matched, found.distribution) == ("cv2", "opencv-python-headless")
    assert "opencv-python" in found.alternatives
    assert "opencv-python-headless" not in found.alternatives
    assert re.match(
        r"wheel top-level 'cv2', rank \d+ in .*; preferred in a sandbox over opencv-python "
        r"\(rank \d+\): a sandbox has no display",
        found.evidence,
    )


def test_a_preference_applies_only_where_the_data_shows_both_install_the_name() -> None:
    table = ImportMap(
        imports={
            "gui": [("thing-gui", 10), ("thing-headless", 20)],
            "other": [("thing-gui", 10)],  # the preferred build does not install it
        },
        prefers=[Preference("thing-headless", "thing-gui", "no display")],
        overrides={"pinned": Override("thing-gui", "reviewed")},
        source="csv",
    )
    gui = table.resolve("gui")
    assert gui is not None
    assert (gui.distribution, gui.alternatives) == ("thing-headless", ("thing-gui",))
    assert gui.evidence == (
        "wheel top-level 'gui', rank 20 in csv; preferred in a sandbox over thing-gui "
        "(rank 10): no display"
    )
    other = table.resolve("other")
    assert other is not None
    assert other.distribution == "thing-gui"
    pinned = table.resolve("pinned")  # a reviewed override is the answer as written
    assert pinned is not None
    assert pinned.distribution == "thing-gui"


def test_conflicts_and_preferences_among_distributions() -> None:
    table = ImportMap(
        imports={},
        exclusive=[Exclusive("cv2", ("a-gui", "a-headless", "b-gui"), "same files")],
        prefers=[Preference("a-headless", "a-gui", "no display")],
    )
    assert table.conflicts(["numpy", "a-gui"]) == []
    [(group, members)] = table.conflicts(["b-gui", "numpy", "a-headless"])
    assert (group.module, members) == ("cv2", ("b-gui", "a-headless"))
    assert table.preferred(["a-gui", "a-headless"]) == "a-headless"
    assert table.preferred(["b-gui", "a-headless"]) is None


def test_the_bundled_exclusive_groups_include_every_opencv_build() -> None:
    [(group, members)] = mapping.bundled().conflicts(["opencv-contrib-python", "opencv-python"])
    assert group.module == "cv2"
    assert members == ("opencv-contrib-python", "opencv-python")
    assert mapping.bundled().conflicts(["pyside6", "pyside6-essentials"]) == []


def test_overrides_and_never_cover_what_is_below_them() -> None:
    keras = resolve("tf_keras.layers")
    assert keras is not None
    assert keras.distribution == "tf-keras"
    assert keras.evidence.startswith("override: ")
    for name in ("utils", "utils.helpers", "examples", "setup", "conftest", "docs.conf"):
        assert resolve(name) is None, name


def test_overrides_win_over_data() -> None:
    table = ImportMap(
        imports={"jwt": [("jwt", 10), ("pyjwt", 45)]},
        overrides={"jwt": Override("pyjwt", "the JWT library scripts mean")},
    )
    assert table.resolve("jwt.algorithms") == ImportMapping(
        "jwt.algorithms", "jwt", "pyjwt", "override: the JWT library scripts mean", ("jwt",)
    )


def test_most_downloaded_wins_and_the_rest_are_alternatives() -> None:
    table = ImportMap(
        imports={"cv2": [("opencv-python", 50), ("opencv-python-headless", 60)]},
        source="csv (date), top 10",
    )
    found = table.resolve("cv2")
    assert found is not None
    assert found.distribution == "opencv-python"
    assert found.alternatives == ("opencv-python-headless",)
    assert found.evidence == "wheel top-level 'cv2', rank 50 in csv (date), top 10"


def test_namespace_rules() -> None:
    table = ImportMap(
        imports={
            # A legacy (pkg_resources-style) namespace wheel installs google/__init__.py.
            "google": [("legacy-google-thing", 900)],
            "google.cloud.storage": [("google-cloud-storage", 120)],
            "a": [("a-dist", 1)],
        },
        namespaces=["google", "google.cloud"],
        never={"test": "standard library"},
    )
    assert table.resolve("google.cloud.storage.blob.Blob") is not None
    assert table.resolve("google.cloud.storage_v2") is None
    assert table.resolve("google.other") is None
    found = table.resolve("google")  # exact: the data does say who installs it
    assert found is not None
    assert found.distribution == "legacy-google-thing"
    fallback = table.resolve("a.b")
    assert fallback is not None
    assert (fallback.matched, fallback.distribution) == ("a", "a-dist")
    assert table.resolve("test.support") is None


def test_an_override_decides_for_its_subtree() -> None:
    table = ImportMap(
        imports={
            "tf_keras.layers": [("tf-keras-nightly", 600), ("tf-keras", 2000)],
        },
        namespaces=["tf_keras"],
        overrides={"tf_keras": Override("tf-keras", "the release, not the nightly")},
        never={"tf_keras.experimental": "made up for this test"},
    )
    found = table.resolve("tf_keras.layers.Dense")
    assert found is not None
    assert (found.matched, found.distribution) == ("tf_keras", "tf-keras")
    assert table.resolve("tf_keras.experimental.thing") is None


def test_loading_is_lazy() -> None:
    code = (
        "import sys, jhansi.deps.mapping as m\n"
        "assert m.bundled.cache_info().currsize == 0\n"
        "assert 'json' not in sys.modules and 'tomllib' not in sys.modules, 'parsed at import'\n"
        "assert m.resolve('yaml').distribution == 'pyyaml'\n"
        "assert m.bundled.cache_info().currsize == 1\n"
        "assert m.bundled() is m.bundled()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_bundled_is_cached() -> None:
    assert mapping.bundled() is mapping.bundled()
