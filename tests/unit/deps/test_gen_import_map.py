"""scripts/gen-import-map.py: zip reading from the end, top-level names, index config.

Wheels are built here, in memory; no test touches the network.
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gen-import-map.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    """The generator script, imported as a module."""
    spec = importlib.util.spec_from_file_location("gen_import_map", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


WHEEL_FILES = {
    "demo/__init__.py": "",
    "demo/core.py": "",
    "demo/sub/__init__.py": "",
    "demo/__pycache__/core.cpython-311.pyc": "",
    "single.py": "",
    "_private_helper.py": "",
    "_cffi_like.cpython-311-x86_64-linux-gnu.so": "",
    "fastext.abi3.so": "",
    "winext.cp311-win_amd64.pyd": "",
    "google/cloud/storage/__init__.py": "",
    "google/cloud/storage/blob.py": "",
    "google/cloud/storage/_helpers.py": "",
    "google/protos/thing_pb2.py": "",
    "tests/__init__.py": "",
    "tests/test_core.py": "",
    "test/helper.py": "",
    "demo.libs/libz-1234.so.1": "",
    "demo-stubs/__init__.pyi": "",
    "data_only/schema.json": "{}",
    "demo-1.0.data/purelib/extra_pkg/__init__.py": "",
    "demo-1.0.data/scripts/demo-tool": "#!python\n",
    "demo-1.0.dist-info/METADATA": "Name: demo\n",
    "demo-1.0.dist-info/RECORD": "",
}
EXPECTED = (
    "_cffi_like",
    "demo",
    "extra_pkg",
    "fastext",
    "google.cloud.storage",
    "google.protos.thing_pb2",
    "single",
    "winext",
)
# Stored, incompressible, and first in the archive: a reader that fetches it fails the test.
BLOB = bytes(range(256)) * 2048


def build_wheel(
    files: dict[str, str], *, top_level: str | None = None, comment: bytes = b""
) -> bytes:
    """A wheel-shaped zip: a large stored member first, dist-info last (as wheels are)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("demo/_blob.bin", BLOB, compress_type=zipfile.ZIP_STORED)
        for name, text in files.items():
            archive.writestr(name, text, compress_type=zipfile.ZIP_DEFLATED)
        if top_level is not None:
            archive.writestr(
                "demo-1.0.dist-info/top_level.txt", top_level, compress_type=zipfile.ZIP_DEFLATED
            )
        archive.comment = comment
    return buffer.getvalue()


class RecordingFetch:
    """A range fetcher over bytes in memory that remembers what was asked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        return self.data[start:end]

    @property
    def fetched(self) -> int:
        return sum(end - start for start, end in self.ranges)


def test_central_directory_matches_zipfile_and_reads_only_the_end(gen: ModuleType) -> None:
    data = build_wheel(WHEEL_FILES, top_level="demo\nsingle\n")
    fetch = RecordingFetch(data)
    archive = gen.RemoteZip(fetch, len(data))
    entries = archive.entries()
    assert [e.name for e in entries] == zipfile.ZipFile(io.BytesIO(data)).namelist()
    top_level = next(e for e in entries if e.name.endswith("top_level.txt"))
    assert archive.read_member(top_level) == b"demo\nsingle\n"
    # One request: the tail holds the central directory and the dist-info members.
    assert fetch.ranges == [(len(data) - gen.TAIL_SIZE, len(data))]
    assert fetch.fetched < len(data) / 5


def test_small_tail_grows_down_to_the_central_directory(gen: ModuleType) -> None:
    data = build_wheel(WHEEL_FILES, top_level="demo\n")
    fetch = RecordingFetch(data)
    archive = gen.RemoteZip(fetch, len(data), tail_size=64)
    reference = zipfile.ZipFile(io.BytesIO(data))
    assert [e.name for e in archive.entries()] == reference.namelist()
    # Down to the central directory and the end record's maximal comment, not further.
    central_directory_start = reference.start_dir
    assert min(start for start, _ in fetch.ranges) >= min(
        central_directory_start, len(data) - gen.TAIL_SIZE
    )
    assert fetch.fetched == len(data) - min(start for start, _ in fetch.ranges)


def test_eocd_signature_inside_the_comment(gen: ModuleType) -> None:
    data = build_wheel({"a.py": ""}, comment=b"PK\x05\x06 looks like a record but is a comment")
    archive = gen.RemoteZip(RecordingFetch(data), len(data))
    assert [e.name for e in archive.entries()] == ["demo/_blob.bin", "a.py"]


def _force_zip64_end_record(data: bytes) -> bytes:
    """Mark the classic end record's fields as 'see zip64', as large archives do."""
    pos = data.rfind(b"PK\x05\x06")
    patched = bytearray(data)
    struct.pack_into("<HHII", patched, pos + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    return bytes(patched)


def test_zip64(gen: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # zipfile writes zip64 records and extra fields past these limits; lowering
    # them gives a real zip64 archive of a few kilobytes.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 16)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    data = _force_zip64_end_record(build_wheel(WHEEL_FILES, top_level="demo\nsingle\n"))
    monkeypatch.undo()
    assert b"PK\x06\x06" in data
    assert b"PK\x06\x07" in data
    # The standard library agrees that this is a valid archive.
    reference = zipfile.ZipFile(io.BytesIO(data))
    archive = gen.RemoteZip(RecordingFetch(data), len(data))
    entries = archive.entries()
    assert [e.name for e in entries] == reference.namelist()
    for entry, info in zip(entries, reference.infolist(), strict=True):
        assert entry.local_header_offset == info.header_offset
        assert entry.compressed_size == info.compress_size
    top_level = next(e for e in entries if e.name.endswith("top_level.txt"))
    assert archive.read_member(top_level) == b"demo\nsingle\n"
    # Without following the zip64 records these fields would be 0xFFFFFFFF.
    where = archive.central_directory()
    assert where.entries == len(entries)
    assert where.offset < len(data)


def test_not_a_zip(gen: ModuleType) -> None:
    data = b"not a zip at all" * 100
    with pytest.raises(gen.ZipFormatError):
        gen.RemoteZip(RecordingFetch(data), len(data)).entries()


def test_derive_names_from_the_file_list(gen: ModuleType) -> None:
    data = build_wheel(WHEEL_FILES)
    files = [e.name for e in gen.RemoteZip(RecordingFetch(data), len(data)).entries()]
    names = gen.derive_names(files)
    assert names.imports == EXPECTED
    assert set(names.namespaces) == {"google", "google.cloud", "google.protos"}


def test_top_level_txt_restricts_to_confirmed_names(gen: ModuleType) -> None:
    files = list(WHEEL_FILES)
    names = gen.derive_names(files, "demo\ngoogle\nnot_in_the_wheel\n")
    assert names.imports == ("demo", "google.cloud.storage", "google.protos.thing_pb2")
    # Metadata that names nothing the wheel installs is ignored, not trusted.
    assert gen.derive_names(files, "ghost\n").imports == EXPECTED


def test_legacy_namespace_packages(gen: ModuleType) -> None:
    files = ["zope/__init__.py", "zope/interface/__init__.py", "zope/interface/ro.py"]
    # Without the declaration, zope is a container: recorded, and the level below it too.
    plain = gen.derive_names(files)
    assert plain.imports == ("zope", "zope.interface")
    assert plain.containers == ("zope",)
    legacy = gen.derive_names(files, "zope\n", "zope\n")
    assert legacy.imports == ("zope.interface",)
    assert legacy.namespaces == ("zope",)


def test_private_names(gen: ModuleType) -> None:
    # A private module beside public names is dropped; alone it is the wheel's name.
    assert gen.derive_names(["pkg/__init__.py", "_version.py"]).imports == ("pkg",)
    assert gen.derive_names(["_only.py"]).imports == ("_only",)
    # Private packages and C extensions are real import targets.
    assert gen.derive_names(["_pytest/__init__.py", "pytest/__init__.py"]).imports == (
        "_pytest",
        "pytest",
    )
    assert gen.derive_names(["cffi/__init__.py", "_cffi_backend.cpython-311-x86_64-linux-gnu.so"])
    # Stub-only and test-only wheels provide nothing importable.
    assert gen.derive_names(["foo-stubs/__init__.pyi", "tests/__init__.py"]).imports == ()


@pytest.mark.parametrize(
    ("filenames", "chosen"),
    [
        (["a-1.tar.gz"], None),
        (
            [
                "a-1-cp311-cp311-win_amd64.whl",
                "a-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                "a-1-cp312-cp312-manylinux_2_17_x86_64.whl",
            ],
            "a-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        ),
        (
            ["a-1-cp38-abi3-manylinux2014_x86_64.whl", "a-1-py3-none-any.whl"],
            "a-1-py3-none-any.whl",
        ),
        (["a-1-cp310-cp310-macosx_11_0_arm64.whl"], "a-1-cp310-cp310-macosx_11_0_arm64.whl"),
        (["a-1-py2.py3-none-any.whl", "a-1.tar.gz"], "a-1-py2.py3-none-any.whl"),
    ],
)
def test_choose_wheel(gen: ModuleType, filenames: list[str], chosen: str | None) -> None:
    picked = gen.choose_wheel([{"filename": f} for f in filenames])
    assert (picked or {}).get("filename") == chosen


def test_index_configuration(gen: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(gen, "_pip_index_url", lambda: None)
    import pypi_simple

    assert gen.configured_simple_index() == (
        pypi_simple.PYPI_SIMPLE_ENDPOINT,
        "pypi_simple.PYPI_SIMPLE_ENDPOINT",
    )
    monkeypatch.setattr(gen, "_pip_index_url", lambda: "https://pip.example.invalid/simple/")
    assert gen.configured_simple_index()[1] == "pip config global.index-url"
    monkeypatch.setenv("PIP_INDEX_URL", "https://pipenv.example.invalid/simple/")
    assert gen.configured_simple_index()[1] == "PIP_INDEX_URL"
    monkeypatch.setenv("UV_INDEX_URL", "https://uv.example.invalid/simple/")
    assert gen.configured_simple_index()[1] == "UV_INDEX_URL"
    monkeypatch.setenv("UV_DEFAULT_INDEX", "https://uvd.example.invalid/simple/")
    assert gen.configured_simple_index()[0] == "https://uvd.example.invalid/simple/"
    assert gen.configured_simple_index("https://x.example.invalid/simple") == (
        "https://x.example.invalid/simple",
        "--index-url",
    )


def test_json_api_base(gen: ModuleType) -> None:
    assert gen.json_api_base("https://index.example.invalid/simple/") == (
        "https://index.example.invalid/pypi/"
    )
    assert gen.json_api_base("https://u:p@mirror.example.invalid/repo/simple") == (
        "https://u:p@mirror.example.invalid/repo/pypi/"
    )
    with pytest.raises(SystemExit):
        gen.json_api_base("file:///opt/pypi/simple")
    with pytest.raises(SystemExit):
        gen.json_api_base("https://index.example.invalid/root/+simple/")


def test_outputs(gen: ModuleType) -> None:
    results = [
        gen.ProjectResult("jwt", 900, imports=("jwt",), read=True),
        gen.ProjectResult("pyjwt", 45, imports=("jwt",), read=True),
        gen.ProjectResult("enum34", 300, imports=("enum",), read=True),
        gen.ProjectResult(
            "google-cloud-storage",
            120,
            imports=("google.cloud.storage",),
            namespaces=("google", "google.cloud"),
            read=True,
        ),
        gen.ProjectResult("sdist-only", 7, skipped="no wheel in the latest release (sdist only)"),
        gen.ProjectResult("broken", 8, skipped="fetch failed: HTTP 500"),
    ]
    text, skipped_text, summary = gen.build_outputs(results, {"top": 1000})
    data = json.loads(text)
    assert data["imports"] == {
        "google.cloud.storage": [["google-cloud-storage", 120]],
        "jwt": [["pyjwt", 45], ["jwt", 900]],
    }
    assert data["namespaces"] == ["google", "google.cloud"]
    assert data["stdlib_names_dropped"] == {"enum": ["enum34"]}
    assert data["projects_read"] == 4
    assert data["skipped"]["reasons"] == {
        "no wheel in the latest release (sdist only)": 1,
        "fetch failed": 1,
    }
    assert json.loads(skipped_text) == [
        ["sdist-only", 7, "no wheel in the latest release (sdist only)"],
        ["broken", 8, "fetch failed: HTTP 500"],
    ]
    assert summary == {"read": 4, "skipped": 2, "imports": 2}
    # Reviewable: one import per line.
    assert '"jwt": [["pyjwt", 45], ["jwt", 900]]' in text.splitlines()


def test_normalize(gen: ModuleType) -> None:
    assert gen.normalize("Zope.Interface") == "zope-interface"
    assert gen.normalize("typing__extensions") == "typing-extensions"


def test_central_directory_larger_than_the_tail(gen: ModuleType) -> None:
    many = {f"demo/generated/module_with_a_rather_long_name_{i:05}.py": "" for i in range(3000)}
    data = build_wheel({**WHEEL_FILES, **many}, top_level="demo\n")
    reference = zipfile.ZipFile(io.BytesIO(data))
    assert len(data) - reference.start_dir > gen.TAIL_SIZE
    fetch = RecordingFetch(data)
    archive = gen.RemoteZip(fetch, len(data))
    entries = archive.entries()
    assert [e.name for e in entries] == reference.namelist()
    # The tail, then the rest of the central directory: two requests, nothing before it.
    assert len(fetch.ranges) == 2
    assert fetch.ranges[1] == (reference.start_dir, len(data) - gen.TAIL_SIZE)
    top_level = next(e for e in entries if e.name.endswith("top_level.txt"))
    assert archive.read_member(top_level) == b"demo\n"


def test_shared_libraries_are_not_modules(gen: ModuleType) -> None:
    assert gen.module_name("libcheckpoint.so") is None
    assert gen.module_name("libz-1234.so.1") is None
    assert gen.module_name("plain.so") == ("plain", True)
    assert gen.module_name("librt.cpython-311-x86_64-linux-gnu.so") == ("librt", True)
    assert gen.module_name("x.pyi") is None
    assert gen.module_name("not-an-identifier.py") is None


def test_pth_roots(gen: ModuleType) -> None:
    # pywin32 puts win32 and win32/lib on sys.path; its modules import by their own names.
    files = [
        "win32/win32api.cp311-win_amd64.pyd",
        "win32/lib/win32con.py",
        "win32com/__init__.py",
        "pywin32.pth",
    ]
    pth = "# .pth file\nwin32\nwin32\\lib\nPythonwin\nimport pywin32_bootstrap\n"
    names = gen.derive_names(files, pth_files=[pth])
    assert names.imports == ("win32api", "win32com", "win32con")
    assert gen.pth_roots(["import os; os.x()", "/abs/path", "../escape", "a/b"]) == [("a", "b")]


def test_legacy_namespace_declared_in_init(gen: ModuleType) -> None:
    legacy = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"
    files = {
        "azure/__init__.py": legacy,
        "azure/servicemanagement/__init__.py": "",
        "azure/servicemanagement/client.py": "",
        "real/__init__.py": "x = 1\n",
        "real/impl/__init__.py": "",
    }
    data = build_wheel(files)
    archive = gen.RemoteZip(RecordingFetch(data), len(data))
    candidates = gen.namespace_init_candidates(archive.entries())
    # Empty files declare nothing: not worth a request.
    assert [e.name for e in candidates] == ["azure/__init__.py", "real/__init__.py"]
    declared = [
        e.name.rsplit("/", 1)[0]
        for e in candidates
        if gen.NAMESPACE_INIT_RE.search(archive.read_member(e))
    ]
    assert declared == ["azure"]
    names = gen.derive_names(list(files), legacy_namespaces=declared)
    assert names.imports == ("azure.servicemanagement", "real", "real.impl")
    assert names.containers == ("real", "real.impl")
    # A module directly in a legacy namespace is its own name.
    weakref = gen.derive_names(["backports/__init__.py", "backports/weakref.py"], None, "backports")
    assert weakref.imports == ("backports.weakref",)
    assert names.namespaces == ("azure",)


def test_deep_namespace_nesting_is_capped(gen: ModuleType) -> None:
    files = [f"bundle/coll_{i}/sub/plugins/modules/m_{j}.py" for i in range(3) for j in range(50)]
    names = gen.derive_names(files)
    assert names.imports == tuple(f"bundle.coll_{i}.sub.plugins" for i in range(3))
    assert "bundle.coll_0.sub" in names.namespaces
    assert all(ns.count(".") < gen.MAX_DEPTH - 1 for ns in names.namespaces)


def test_a_package_others_extend_is_no_namespace(gen: ModuleType) -> None:
    results = [
        gen.ProjectResult("pyqt5", 10, imports=("PyQt5",), read=True),
        gen.ProjectResult(
            "pyqt5-qt5",
            11,
            imports=("PyQt5.Qt5.bindings",),
            namespaces=("PyQt5", "PyQt5.Qt5"),
            read=True,
        ),
    ]
    data = json.loads(gen.build_outputs(results, {})[0])
    assert data["namespaces"] == ["PyQt5.Qt5"]


def test_containers_shared_by_several_distributions_are_namespaces(gen: ModuleType) -> None:
    def project(name: str, rank: int, files: list[str]) -> object:
        names = gen.derive_names(files)
        return gen.ProjectResult(
            name,
            rank,
            imports=names.imports,
            namespaces=names.namespaces,
            containers=names.containers,
            read=True,
        )

    tensorflow = [
        "tensorflow/__init__.py",
        "tensorflow/python/__init__.py",
        "tensorflow/lite/__init__.py",
        "tensorflow/lite/interpreter.py",
    ]
    results = [
        project("tensorflow", 5, tensorflow),
        project("tensorflow-cpu", 6, tensorflow),
        project(
            "backports-zoneinfo", 10, ["backports/__init__.py", "backports/zoneinfo/__init__.py"]
        ),
        project(
            "backports-tarfile", 20, ["backports/__init__.py", "backports/tarfile/__init__.py"]
        ),
        project("mylib", 30, ["mylib/__init__.py", "mylib/core/__init__.py", "mylib/core/c.py"]),
    ]
    data = json.loads(gen.build_outputs(results, {})[0])
    assert data["namespaces"] == ["backports"]
    assert data["imports"] == {
        "backports.tarfile": [["backports-tarfile", 20]],
        "backports.zoneinfo": [["backports-zoneinfo", 10]],
        "mylib": [["mylib", 30]],
        "mylib.core": [["mylib", 30]],
        # One project published in variants: the container they share is still its name.
        "tensorflow": [["tensorflow", 5], ["tensorflow-cpu", 6]],
        "tensorflow.lite": [["tensorflow", 5], ["tensorflow-cpu", 6]],
        "tensorflow.python": [["tensorflow", 5], ["tensorflow-cpu", 6]],
    }
