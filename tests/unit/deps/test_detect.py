"""The import scan: found from the syntax tree, never by running the script."""

from __future__ import annotations

from jhansi.deps.detect import scan_imports

SOURCE = """
import os, sys
import numpy as np
import google.cloud.storage
from yaml import safe_load
from . import sibling
from .pkg import thing
import importlib
mod = importlib.import_module("requests")
other = __import__("toml")
computed = importlib.import_module(name)
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import pandas
else:
    import polars
try:
    import ujson as json
except ImportError:
    import json
try:
    import orjson
except (ModuleNotFoundError, ValueError):
    pass
try:
    import required_anyway
except KeyError:
    pass
def later():
    import httpx
"""


def test_scan_finds_every_static_import() -> None:
    found = {s.module: s for s in scan_imports(SOURCE)}
    assert set(found) == {
        "os",
        "sys",
        "numpy",
        "google.cloud.storage",
        "yaml",
        "importlib",
        "requests",
        "toml",
        "typing",
        "polars",
        "ujson",
        "json",
        "orjson",
        "required_anyway",
        "httpx",
    }
    assert found["google.cloud.storage"].top == "google"
    assert found["requests"].dynamic
    assert found["toml"].dynamic
    assert found["ujson"].optional
    assert found["orjson"].optional
    assert not found["json"].optional  # the fallback in the handler is what runs
    assert not found["required_anyway"].optional
    assert not found["numpy"].optional
    assert found["yaml"].names == ("safe_load",)
    assert found["numpy"].line == 3


def test_type_checking_attribute_form() -> None:
    source = "import typing\nif typing.TYPE_CHECKING:\n    import mypy_only\n"
    assert [s.module for s in scan_imports(source)] == ["typing"]


def test_nothing_is_executed(tmp_path: object) -> None:
    # A top-level side effect would raise if the scan ran the code.
    assert [s.module for s in scan_imports("raise SystemExit(9)\nimport zlib\n")] == ["zlib"]


def test_a_long_chain_the_parser_accepts_is_scanned() -> None:
    # Valid Python that nests 1,500 deep: a recursive visitor exhausted the host's stack.
    source = (
        "import os\nx = 1"
        + " + 1" * 1500
        + "\ntry:\n    import yaml\nexcept ImportError:\n    pass\n"
    )
    sites = scan_imports(source)
    assert [(s.module, s.optional) for s in sites] == [("os", False), ("yaml", True)]
