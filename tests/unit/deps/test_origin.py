"""jhansi.deps.origin: a lock installs only files the user's package index serves.

The index is a real HTTP server on loopback (tests/unit/supply/index_server.py)
for the cases the public index cannot be made to show: an invented project, a
file listed with another digest, files on a second index, an index that goes
away. Its file URLs point at hosts that do not exist (``.invalid``): the check
never fetches a lock's files, only the index's pages. One ``network`` test runs
the check against the real index for a real lock made by uv.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jhansi.deps import lock as lock_module
from jhansi.deps.lock import inputs_digest, lock
from jhansi.deps.origin import check_origin, configured_index_urls, upgrade_command
from jhansi.errors import DependencyError, ExitCode
from jhansi.report import NullReporter
from jhansi.supply.provenance import first_release
from tests.unit.supply.index_server import SIMPLE_JSON, Index, serve, unreachable

SHA = "a" * 64
OTHER_SHA = "b" * 64
FILE = "tiny_pkg-1.2.0-py3-none-any.whl"
FILES_URL = f"https://files.invalid/packages/ab/{FILE}"


def _serve() -> Iterator[Index]:
    yield from serve()


@pytest.fixture
def index() -> Iterator[Index]:
    yield from _serve()


def publish(
    index: Index, name: str = "tiny-pkg", files: list[dict[str, Any]] | None = None
) -> None:
    """A PEP 691 page whose files live on another host than the simple API (as is usual)."""
    listed = files or [
        {
            "filename": FILE,
            "url": FILES_URL,
            "hashes": {"sha256": SHA},
            "upload-time": "2020-01-02T03:04:05Z",
        }
    ]
    index.add(
        f"/simple/{name}/",
        {"meta": {"api-version": "1.1"}, "name": name, "versions": [], "files": listed},
        content_type=SIMPLE_JSON,
    )


def document(**package: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "tiny-pkg",
        "version": "1.2.0",
        "wheels": [{"url": FILES_URL, "hashes": {"sha256": SHA}}],
    }
    entry.update(package)
    return {"lock-version": "1.0", "packages": [{k: v for k, v in entry.items() if v is not None}]}


def check(doc: dict[str, Any], cache: Path, *indexes: str) -> None:
    check_origin(
        doc,
        Path("/p/pylock.s.toml"),
        cache_dir=cache,
        fix_command="jhansi lock s.py",
        index_urls=indexes,
        timeout=5,
    )


# -- accepted -------------------------------------------------------------------------------


def test_the_indexs_own_file_is_accepted_once_then_from_the_cache(
    index: Index, tmp_path: Path
) -> None:
    publish(index)
    check(document(), tmp_path, index.simple)
    assert index.requests == ["/simple/tiny-pkg/"]
    check(document(), tmp_path, index.simple)
    assert index.requests == ["/simple/tiny-pkg/"]  # verified once: no second request
    # The page also answered the provenance check's question: it asks nothing more.
    assert first_release("tiny-pkg", cache_dir=tmp_path, index_url=unreachable()) is not None


def test_a_verified_lock_is_used_offline_and_an_unverified_one_is_not(tmp_path: Path) -> None:
    server = _serve()
    index = next(server)
    publish(index)
    simple = index.simple
    check(document(), tmp_path, simple)
    server.close()  # the index is gone: connections to it are refused
    check(document(), tmp_path, simple)
    other = document(wheels=[{"url": FILES_URL, "hashes": {"sha256": OTHER_SHA}}])
    with pytest.raises(DependencyError) as caught:
        check(other, tmp_path, simple)
    assert caught.value.exit_code == ExitCode.DEPENDENCIES
    assert "cannot check" in caught.value.message
    assert "needs no network" in caught.value.hint


def test_a_file_on_the_users_second_index_is_accepted(index: Index, tmp_path: Path) -> None:
    publish(index, "something-else")
    server = _serve()
    second = next(server)
    try:
        publish(second)
        check(document(), tmp_path, index.simple, second.simple)
        assert second.requests == ["/simple/tiny-pkg/"]
    finally:
        server.close()


# -- refused: what the index does not serve -------------------------------------------------


@pytest.mark.parametrize(
    ("wheel", "why"),
    [
        (
            {"url": f"https://elsewhere.invalid/{FILE}", "hashes": {"sha256": SHA}},
            "from another URL",
        ),
        ({"url": FILES_URL, "hashes": {"sha256": OTHER_SHA}}, "with another sha256"),
        (
            {
                "url": "https://files.invalid/tiny_pkg-1.2.0-py2.py3-none-any.whl",
                "hashes": {"sha256": SHA},
            },
            "serves no file",
        ),
    ],
    ids=["same-file-other-url", "other-digest", "unlisted-file"],
)
def test_a_file_the_index_does_not_serve_is_refused(
    index: Index, tmp_path: Path, wheel: dict[str, Any], why: str
) -> None:
    publish(index)
    with pytest.raises(DependencyError) as caught:
        check(document(wheels=[wheel]), tmp_path, index.simple)
    error = caught.value
    assert error.exit_code == ExitCode.DEPENDENCIES
    assert why in error.message
    assert wheel["url"] in error.message
    assert "tiny-pkg" in error.message
    assert "jhansi lock --upgrade s.py" in error.hint
    assert "pylock.s.toml" in error.hint
    assert not (tmp_path / "origin").exists() or not any((tmp_path / "origin").rglob("*.json"))


def test_a_page_cached_before_the_release_is_asked_again_past_the_cache(
    index: Index, tmp_path: Path
) -> None:
    """uv saw the release; a cache in front of the index still has the page from before it."""
    older = "tiny_pkg-1.1.0-py3-none-any.whl"
    publish(
        index,
        files=[
            {
                "filename": older,
                "url": FILES_URL.replace(FILE, older),
                "hashes": {"sha256": OTHER_SHA},
            }
        ],
    )
    index.stale = dict(index.routes)
    publish(index)
    check(document(), tmp_path, index.simple)
    assert index.requests == ["/simple/tiny-pkg/", "/simple/tiny-pkg/"]
    assert index.cache_control == [None, "no-cache"]


def test_an_unknown_project_is_refused(index: Index, tmp_path: Path) -> None:
    with pytest.raises(DependencyError, match="serves no file"):
        check(document(), tmp_path, index.simple)


# -- refused without asking anyone: not an index source -------------------------------------


WHEEL = {"url": FILES_URL, "hashes": {"sha256": SHA}}


@pytest.mark.parametrize(
    ("package", "why"),
    [
        ({"wheels": [{"path": "/etc/x/tiny_pkg-1.2.0-py3-none-any.whl"}]}, "local path"),
        ({"wheels": [{"path": "x.whl", "url": FILES_URL, "hashes": {"sha256": SHA}}]}, "local"),
        ({"wheels": None, "directory": {"path": "/srv/src"}}, "directory source"),
        ({"wheels": None, "vcs": {"type": "git", "url": "https://x.invalid/r"}}, "vcs source"),
        ({"wheels": None, "archive": {"url": "http://127.0.0.1/a.zip"}}, "archive source"),
        ({"sdist": {"url": "http://127.0.0.1/t-1.2.0.tar.gz"}}, "sdist source"),
        ({"wheels": [{**WHEEL, "url": f"http://127.0.0.1:8765/{FILE}"}]}, "not an https URL"),
        ({"wheels": [{**WHEEL, "url": f"file:///tmp/{FILE}"}]}, "not an https URL"),
        ({"wheels": [{**WHEEL, "url": f"https://u:p@files.invalid/{FILE}"}]}, "credentials"),
        ({"wheels": [{**WHEEL, "name": "other-1.0-py3-none-any.whl"}]}, "not the URL's"),
        ({"wheels": [{"url": FILES_URL}]}, "no sha256"),
        ({"wheels": [{"hashes": {"sha256": SHA}}]}, "no url"),
        ({"wheels": []}, "no wheels"),
        ({"version": None}, "no version"),
        ({"version": "1.3.0"}, "not tiny-pkg 1.3.0"),
        ({"name": "six"}, "not six 1.2.0"),
        ({"index": "http://127.0.0.1:9/simple"}, "not one of your configured"),
        (
            {"wheels": [{**WHEEL, "url": "https://files.invalid/tiny_pkg-1.2.0.tar.gz"}]},
            "not a wheel file name",
        ),
    ],
    ids=[
        "path",
        "path-and-url",
        "directory",
        "vcs",
        "archive",
        "sdist",
        "http",
        "file-url",
        "credentials",
        "name-mismatch",
        "no-hash",
        "no-url",
        "no-wheels",
        "no-version",
        "other-version",
        "other-project",
        "foreign-index",
        "not-a-wheel",
    ],
)
def test_a_source_that_is_not_the_index_is_refused_without_a_request(
    index: Index, tmp_path: Path, package: dict[str, Any], why: str
) -> None:
    publish(index)
    with pytest.raises(DependencyError) as caught:
        check(document(**package), tmp_path, index.simple)
    assert why in caught.value.message
    assert caught.value.exit_code == ExitCode.DEPENDENCIES
    assert index.requests == []


# -- through lock() -------------------------------------------------------------------------


def test_lock_refuses_a_reused_lock_and_keeps_no_pins_of_it(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock with the right inputs digest (anyone can compute it) is still checked."""
    from tests.unit.deps.test_lock import TARGET, FakeUv

    monkeypatch.setenv("UV_DEFAULT_INDEX", index.simple)
    path = tmp_path / "pylock.s.toml"
    forged = (
        'lock-version = "1.0"\n\n[[packages]]\nname = "tiny-pkg"\nversion = "1.2.0"\n'
        f'wheels = [{{ url = "http://127.0.0.1:8765/{FILE}", hashes = {{ sha256 = "{SHA}" }} }}]\n'
        f'\n[tool.jhansi]\ninputs = "{inputs_digest(["tiny-pkg"], TARGET)}"\n'
    )
    path.write_text(forged)
    fake = FakeUv()
    monkeypatch.setattr(lock_module, "run_uv", fake)
    with pytest.raises(DependencyError) as caught:
        lock(["tiny-pkg"], TARGET, lock_file=path, reporter=NullReporter(), cache_dir=tmp_path)
    assert "does not come from the package index" in caught.value.message
    assert fake.calls == []
    assert path.read_text() == forged

    # Other requirements: relocked, without showing uv the forged lock as preferences.
    # (uv's canned output names files the fake index does not serve: refused, not written.)
    with pytest.raises(DependencyError):
        lock(
            ["tiny-pkg", "six"], TARGET, lock_file=path, reporter=NullReporter(), cache_dir=tmp_path
        )
    assert fake.preferences == [None]
    assert path.read_text() == forged


# -- the user's indexes ---------------------------------------------------------------------


def test_configured_indexes_are_the_users(tmp_path: Path) -> None:
    config = tmp_path / "uv.toml"
    config.write_text(
        'extra-index-url = ["https://extra.invalid/simple"]\n'
        '[[index]]\nname = "corp"\nurl = "https://corp.invalid/simple"\n'
    )
    env = {
        "PIP_INDEX_URL": "https://primary.invalid/simple",
        "UV_INDEX": "named=https://named.invalid/simple https://bare.invalid/simple",
        "PIP_EXTRA_INDEX_URL": "https://pip-extra.invalid/simple",
        "UV_CONFIG_FILE": str(config),
    }
    assert configured_index_urls(env) == (
        "https://primary.invalid/simple",
        "https://named.invalid/simple",
        "https://bare.invalid/simple",
        "https://corp.invalid/simple",
        "https://extra.invalid/simple",
    )
    # pip's extra index counts when no uv setting is made (uv_environment maps it).
    del env["UV_INDEX"]
    assert "https://pip-extra.invalid/simple" in configured_index_urls(env)


def test_upgrade_command() -> None:
    assert upgrade_command("jhansi lock s.py") == "jhansi lock --upgrade s.py"


# -- the real index -------------------------------------------------------------------------


@pytest.mark.network
def test_a_real_lock_checks_against_the_real_index(tmp_path: Path) -> None:
    from tests.integration.test_deps_uv import host_target

    path = tmp_path / "pylock.toml"
    made = lock(["six"], host_target(), lock_file=path, reporter=NullReporter(), cache_dir=tmp_path)
    doc = tomllib.loads(made.content.decode())
    check_origin(doc, path, cache_dir=tmp_path / "fresh")  # the user's index, asked
    assert list((tmp_path / "fresh" / "origin").rglob("six.json"))
    wheel = doc["packages"][0]["wheels"][0]
    moved = json.loads(json.dumps(doc, default=str))
    moved_url = "https://mirror.invalid/" + wheel["url"].split("/")[-1]
    moved["packages"][0]["wheels"][0]["url"] = moved_url
    with pytest.raises(DependencyError, match="from another URL"):
        check_origin(moved, path, cache_dir=tmp_path / "fresh")
