"""The budgets and encodings that keep ``exec.end`` recordable (jhansi.sandbox.changes,
jhansi.records): real files in a temporary directory, no mocks."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from jhansi.ledger.record import canonical
from jhansi.records import LIST_HEAD_BYTES, bounded_list, recordable
from jhansi.sandbox.changes import (
    Budget,
    budget_for,
    compare,
    name_fields,
    name_from_fields,
    snapshot,
)
from jhansi.sandbox.workspace import remove_tree


def test_names_that_are_not_utf8_are_recorded_reversibly() -> None:
    name = os.fsdecode(b"bad\xff\xfe")
    fields = name_fields("path", name)
    assert fields["path"] == "bad\\xff\\xfe"
    assert name_from_fields(dict(fields), "path") == b"bad\xff\xfe"
    assert name_fields("path", "ok\n\x1b") == {"path": "ok\n\x1b"}
    body = recordable({"argv": [name, "x"], "script": {"path": name}})
    canonical(body)  # would raise on a lone surrogate
    assert base64.b64decode(body["argv"][0]["text_b64"]) == b"bad\xff\xfe"
    assert base64.b64decode(body["script"]["path_b64"]) == b"bad\xff\xfe"


def test_long_lists_keep_a_bounded_head_and_the_whole_in_a_blob() -> None:
    stored: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        stored[str(len(stored))] = data
        return str(len(stored) - 1)

    items = [{"path": "n" * 4000 + str(i)} for i in range(5000)]
    out = bounded_list("files_changed", items, put)
    assert out["files_changed_count"] == 5000
    assert len(canonical(out["files_changed"])) <= LIST_HEAD_BYTES
    lines = stored[out["files_changed_full"]["blob"]].splitlines()
    assert [json.loads(line) for line in lines] == items
    assert bounded_list("x", [{"a": 1}], put) == {"x": [{"a": 1}]}


def test_budget_follows_the_timeout() -> None:
    now = 1000.0
    assert budget_for(300, now=now).deadline == now + 60
    assert budget_for(8, now=now).deadline == now + 5
    assert budget_for(100, now=now).deadline == now + 25


def test_sparse_file_fifo_and_deep_tree_within_budget(tmp_path: Path) -> None:
    before = snapshot(tmp_path, "/home/sandbox")
    with (tmp_path / "sparse").open("wb") as handle:
        handle.truncate(1 << 40)
    (tmp_path / "small").write_bytes(b"abc")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to("loop")
    deep = tmp_path / "deep"
    deep.mkdir()
    cwd = Path.cwd()
    os.chdir(deep)
    try:
        for _ in range(1500):
            os.mkdir("d")  # noqa: PTH102 - relative, past PATH_MAX
            os.chdir("d")
    finally:
        os.chdir(cwd)
    started = time.monotonic()
    budget = Budget(deadline=time.monotonic() + 10, hash_bytes=1 << 20, depth=64)
    after = snapshot(tmp_path, "/home/sandbox", budget=budget)
    found = compare(before, after, budget)
    assert time.monotonic() - started < 5
    by = {c.path: c for c in found.changes}
    assert by["sparse"].blake3 is None
    assert "budget" in by["sparse"].not_hashed
    assert by["small"].blake3
    assert by["fifo"].blake3 is None
    assert by["loop"].blake3 is None
    assert "not entered" in found.incomplete
    remove_tree(tmp_path / "deep")  # iterative: shutil.rmtree recurses and fails
    assert not (tmp_path / "deep").exists()


def test_entry_and_time_budgets_make_the_list_incomplete(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(b"")
    cut = snapshot(tmp_path, "/work", budget=Budget(deadline=time.monotonic() + 10, entries=10))
    assert len(cut.files) == 10
    assert "more than 10 entries" in cut.incomplete
    whole = snapshot(tmp_path, "/work")
    found = compare(whole, cut)
    # Entries only in a cut-short "after" snapshot may still exist: none is called deleted.
    assert [c for c in found.changes if c.change == "deleted"] == []
    assert "after the run: more than 10 entries" in found.incomplete
    # Entries only in a cut-short "before" snapshot may have been there: none is "added".
    backwards = compare(cut, whole)
    assert [c for c in backwards.changes if c.change == "added"] == []
    assert "before the run" in backwards.incomplete
