"""jhansi.supply.provenance with a pinned clock and an index on loopback (a real HTTP server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jhansi.deps.pylock import LockedPackage, LockedWheel, canonical_name
from jhansi.supply.provenance import (
    ProvenanceFinding,
    ProvenanceUnavailable,
    check_provenance,
    first_release,
    popular_projects,
)
from tests.unit.supply.index_server import SIMPLE_JSON, Index, serve, unreachable

FIRST = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)


def package(name: str, version: str = "1.0") -> LockedPackage:
    filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return LockedPackage(
        name, version, (LockedWheel(filename, f"https://files.invalid/{filename}", ("sha256:00",)),)
    )


def files(*times: str | None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for n, moment in enumerate(times):
        entry: dict[str, object] = {
            "filename": f"fresh-0.{n}-py3-none-any.whl",
            "url": f"https://files.invalid/fresh-0.{n}-py3-none-any.whl",
            "hashes": {"sha256": "00"},
        }
        if moment is not None:
            entry["upload-time"] = moment
        out.append(entry)
    return out


@pytest.fixture
def index() -> Iterator[Index]:
    yield from serve()


def publish(index: Index, name: str, upload_times: list[str | None]) -> None:
    index.add(
        f"/simple/{name}/",
        {
            "meta": {"api-version": "1.1"},
            "name": name,
            "versions": [],
            "files": files(*upload_times),
        },
        content_type=SIMPLE_JSON,
    )


def test_first_release_is_the_earliest_upload_and_is_cached_forever(
    index: Index, tmp_path: Path
) -> None:
    publish(
        index, "fresh", ["2026-11-25T00:00:00Z", "2026-11-20T08:30:00.123Z", "2026-11-21T00:00:00Z"]
    )
    cache = tmp_path / "cache"
    found = first_release("Fresh", cache_dir=cache, index_url=index.simple)
    assert found == FIRST + timedelta(milliseconds=123)
    assert first_release("fresh", cache_dir=cache, index_url=unreachable()) == found
    assert index.requests == ["/simple/fresh/"]


def test_without_upload_times_the_json_api_answers(index: Index, tmp_path: Path) -> None:
    publish(index, "fresh", [None])
    index.add(
        "/pypi/fresh/json",
        {
            "releases": {
                "0.2": [{"upload_time_iso_8601": "2026-11-22T00:00:00.000000Z"}],
                "0.1": [{"upload_time_iso_8601": "2026-11-20T08:30:00.000000Z"}],
                "0.0": [],
            }
        },
        content_type="application/json",
    )
    assert first_release("fresh", cache_dir=tmp_path, index_url=index.simple) == FIRST


def test_not_found_is_cached_for_a_day(index: Index, tmp_path: Path) -> None:
    assert first_release("ghost", cache_dir=tmp_path, index_url=index.simple) is None
    assert first_release("ghost", cache_dir=tmp_path, index_url=unreachable()) is None
    assert index.requests == ["/simple/ghost/"]
    entry = tmp_path / "provenance" / "ghost.json"
    data = json.loads(entry.read_text())
    data["checked"] -= 86400 + 1
    entry.write_text(json.dumps(data))
    with pytest.raises(ProvenanceUnavailable):
        first_release("ghost", cache_dir=tmp_path, index_url=unreachable(), timeout=5)


def test_a_young_package_is_flagged_with_the_evidence(index: Index, tmp_path: Path) -> None:
    publish(index, "fresh", ["2026-11-20T08:30:00Z"])
    publish(index, "requests", ["2011-02-14T00:00:00Z"])
    now = FIRST + timedelta(days=6, hours=2)
    findings = check_provenance(
        [package("requests", "2.32.3"), package("fresh", "0.1")],
        min_age_days=30,
        allow=(),
        now=now,
        cache_dir=tmp_path,
        index_url=index.simple,
    )
    assert findings == (
        ProvenanceFinding(
            "fresh",
            "0.1",
            "package-age",
            "first released 2026-11-20 (6 days ago; policy minimum 30)",
        ),
        ProvenanceFinding(
            "fresh",
            "0.1",
            "not-popular",
            f"not among the {len(popular_projects()):,} most downloaded PyPI projects",
        ),
    )
    assert "15,000" in findings[1].evidence
    # Old enough a month later; still not popular.
    later = check_provenance(
        [package("fresh", "0.1")],
        min_age_days=30,
        allow=(),
        now=FIRST + timedelta(days=31),
        cache_dir=tmp_path,
        index_url=index.simple,
    )
    assert [f.rule for f in later] == ["not-popular"]


def test_allowed_names_produce_no_finding(index: Index, tmp_path: Path) -> None:
    publish(index, "fresh", ["2026-11-20T08:30:00Z"])
    assert (
        check_provenance(
            [package("fresh", "0.1")],
            min_age_days=30,
            allow=("Fresh",),
            now=FIRST,
            cache_dir=tmp_path,
            index_url=index.simple,
        )
        == ()
    )
    assert index.requests == []


def test_an_unreachable_index_is_a_finding_not_an_error(tmp_path: Path) -> None:
    findings = check_provenance(
        [package("requests")],
        min_age_days=30,
        allow=(),
        now=FIRST,
        cache_dir=tmp_path,
        index_url=unreachable(),
        timeout=5,
    )
    assert [(f.package, f.rule) for f in findings] == [("requests", "provenance-unavailable")]
    assert "cannot read requests's release history" in findings[0].evidence


def test_a_package_the_index_does_not_know_is_reported(index: Index, tmp_path: Path) -> None:
    findings = check_provenance(
        [package("requests")],
        min_age_days=30,
        allow=(),
        now=FIRST,
        cache_dir=tmp_path,
        index_url=index.simple,
    )
    assert [f.rule for f in findings] == ["provenance-unavailable"]
    assert "no upload date" in findings[0].evidence


def test_the_age_rule_off_asks_no_index(tmp_path: Path) -> None:
    findings = check_provenance(
        [package("requests"), package("surely-not-a-popular-project")],
        min_age_days=0,
        allow=(),
        now=FIRST,
        cache_dir=tmp_path,
        index_url=unreachable(),
    )
    assert [(f.package, f.rule) for f in findings] == [
        ("surely-not-a-popular-project", "not-popular")
    ]
    assert (
        check_provenance(
            [package("surely-not-a-popular-project")],
            min_age_days=0,
            allow=(),
            now=FIRST,
            cache_dir=tmp_path,
            require_popular=False,
        )
        == ()
    )


def test_the_generator_normalizes_and_keeps_download_order(tmp_path: Path) -> None:
    """scripts/gen-top-packages.py, run as a real subprocess on a CSV of the same shape."""
    source = tmp_path / "top.csv"
    source.write_text(
        'download_count,project\n9,"boto3"\n8,"Typing_Extensions"\n7,"zope.interface"\n'
        '6,"typing-extensions"\n'
    )
    output = tmp_path / "top.txt"
    script = Path(__file__).resolve().parents[3] / "scripts" / "gen-top-packages.py"
    subprocess.run(
        [sys.executable, str(script), str(source), "--output", str(output)],
        check=True,
        capture_output=True,
    )
    lines = [line for line in output.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["boto3", "typing-extensions", "zope-interface"]


def test_the_bundled_list_is_normalized() -> None:
    popular = popular_projects()
    assert all(name == canonical_name(name) for name in popular)
    assert len(popular) == 15_000
    assert os.sep not in "".join(popular)
