"""Comparing a replay with the recorded run: one :class:`Check` per thing, in a
:class:`ReplayReport`.

What is compared: the exit status, the BLAKE3 of stdout and stderr (what was kept
of each; where they differ, the first differing line of the kept tails), the files
changed (names and hashes), and what the run ran on (code, lock, backend, image or
interpreter). A refused run (``exec.denied``) replays to a refusal: the refusals
and their policy findings are compared. A difference the user allowed
(``--allow-different-image``) is marked ``allowed``, not ``differs``. Every report
says what a replay never restores (:data:`NOT_RESTORED`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from jhansi.errors import DependencyError, JhansiError, LedgerError
from jhansi.replay.plan import _blob, _dict

if TYPE_CHECKING:
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.record import Record
    from jhansi.replay.plan import Original, Plan
    from jhansi.result import RunResult
    from jhansi.runner import Runner


#: What a replay never restores, said in every report.
NOT_RESTORED: Final = (
    "the project at /work: only the script is there (the ledger keeps the code, not the "
    "project's other files)",
    "the sandbox's home: the replay's is empty and thrown away",
    "the configuration files the run used (the ledger keeps their hashes): today's "
    "settings apply, except the recorded backend, image or interpreter and limits",
)
#: Longest line shown of a differing output.
SHOWN_LINE = 200

CheckStatus = Literal["same", "differs", "allowed"]


@dataclass(frozen=True, slots=True)
class Check:
    """One thing compared: what, whether it is the same, both values, and a detail."""

    what: str
    status: CheckStatus
    recorded: Any
    replayed: Any
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "what": self.what,
            "status": self.status,
            "recorded": self.recorded,
            "replayed": self.replayed,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """The replay of one recorded run, compared with it."""

    run_id: str
    replay_id: str | None
    kind: Literal["run", "refusal"]
    source: str
    ledger: str
    checks: tuple[Check, ...]
    not_restored: tuple[str, ...]
    notes: tuple[str, ...] = ()
    dependencies: dict[str, Any] | None = None

    @property
    def same(self) -> bool:
        """Nothing differs (differences the user allowed do not count)."""
        return all(check.status != "differs" for check in self.checks)

    @property
    def differing(self) -> list[str]:
        """The names of what differs."""
        return [check.what for check in self.checks if check.status == "differs"]

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "status": "same" if self.same else "differs",
            "run_id": self.run_id,
            "replay_id": self.replay_id,
            "kind": self.kind,
            "source_ledger": self.source,
            "ledger": self.ledger,
            "differs": self.differing,
            "checks": [check.as_dict() for check in self.checks],
            "dependencies": self.dependencies,
            "notes": list(self.notes),
            "not_restored": list(self.not_restored),
        }


def _replay_denial(directory: Path, run_id: str, after: int) -> Record | None:
    """The ``exec.denied`` the runner wrote for the replay of ``run_id`` after seq ``after``."""
    from jhansi.ledger.read import iter_records
    from jhansi.ledger.record import EXEC_DENIED

    found = None
    for record in iter_records(directory):
        if (
            record.seq > after
            and record.kind == EXEC_DENIED
            and record.body.get("replay_of") == run_id
        ):
            found = record
    return found


def _compare(
    original: Original,
    blobs: BlobStore,
    plan: Plan,
    runner: Runner,
    result: RunResult | None,
    refusal: JhansiError | None,
    source: Path,
    before: int,
) -> ReplayReport:
    from jhansi.ledger.read import run_records
    from jhansi.ledger.record import EXEC_END, EXEC_START

    recording = runner.ledger.directory
    replay_id: str | None = None
    start: dict[str, Any] = {}
    end: dict[str, Any] = {}
    denied: dict[str, Any] = {}
    if result is not None:
        replay_id = result.run_id
        _, records = run_records(recording, result.run_id)
        for record in records:
            if record.kind == EXEC_START:
                start = dict(record.body)
            elif record.kind == EXEC_END:
                end = dict(record.body)
    else:
        found = _replay_denial(recording, original.run_id, before)
        if found is not None:
            denied = dict(found.body)
            replay_id = str(found.body.get("run_id"))
    checks: list[Check] = []
    first = dict(original.first.body)
    replayed_first = start or denied
    checks.append(_same_blob("code", first.get("script"), replayed_first.get("script")))
    if original.denied is not None:
        checks += _refusal_checks(dict(original.denied.body), result, refusal, denied)
    elif result is None:
        checks.append(
            Check(
                "outcome",
                "differs",
                "ran",
                f"refused: {type(refusal).__name__}",
                refusal.message if refusal is not None else "",
            )
        )
    else:
        recorded_end = dict(original.end.body) if original.end is not None else {}
        checks.append(_status(recorded_end, end))
        for stream in ("stdout", "stderr"):
            data = getattr(result, stream).data
            checks.append(_output(stream, recorded_end, end, blobs, data))
        checks.append(_files(recorded_end, end, blobs, runner))
        checks += _ran_on(first, start, plan)
    deps = _dict(first.get("dependencies"))
    if deps.get("lock") and replayed_first:
        replayed_deps = _dict(replayed_first.get("dependencies"))
        checks.append(_same_blob("lock", deps.get("lock"), replayed_deps.get("lock")))
    return ReplayReport(
        run_id=original.run_id,
        replay_id=replay_id,
        kind="refusal" if original.denied is not None else "run",
        source=str(source),
        ledger=str(recording),
        checks=tuple(checks),
        not_restored=(*NOT_RESTORED, *plan.not_restored),
        notes=(*plan.notes, *plan.allowed),
        dependencies=_dependencies(first, replayed_first, result, blobs),
    )


def _same_blob(what: str, recorded: Any, replayed: Any) -> Check:
    a = _dict(recorded).get("blob")
    b = _dict(replayed).get("blob")
    return Check(what, "same" if a == b else "differs", a, b)


def _status(recorded: dict[str, Any], replayed: dict[str, Any]) -> Check:
    def outcome(body: dict[str, Any]) -> dict[str, Any]:
        result = _dict(body.get("result"))
        return {k: result.get(k) for k in ("status", "exit_code", "signal")}

    a, b = outcome(recorded), outcome(replayed)
    return Check("exit status", "same" if a == b else "differs", a, b)


def first_difference(a: bytes, b: bytes) -> tuple[int, str | None, str | None] | None:
    """(line number, recorded line, replayed line) of the first line that differs."""
    left = a.decode("utf-8", "replace").splitlines()
    right = b.decode("utf-8", "replace").splitlines()
    for number in range(max(len(left), len(right))):
        x = left[number] if number < len(left) else None
        y = right[number] if number < len(right) else None
        if x != y:
            return number + 1, _cut(x), _cut(y)
    return None


def _cut(line: str | None) -> str | None:
    if line is None or len(line) <= SHOWN_LINE:
        return line
    return line[: SHOWN_LINE - 1] + "…"


def _output(
    stream: str, recorded: dict[str, Any], replayed: dict[str, Any], blobs: BlobStore, data: bytes
) -> Check:
    a, b = _dict(recorded.get(stream)), _dict(replayed.get(stream))
    left = {"bytes": a.get("bytes"), "blake3": a.get("blake3")}
    right = {"bytes": b.get("bytes"), "blake3": b.get("blake3")}
    if left == right:
        return Check(stream, "same", left, right)
    detail = ""
    try:
        kept = _blob(blobs, a, f"the recorded {stream}")
    except LedgerError as exc:
        kept, detail = None, f"the recorded {stream} is not available: {exc.message}"
    if kept is not None:
        found = first_difference(kept, data)
        tail = " (of the kept tails)" if a.get("truncated") or b.get("truncated") else ""
        if found is not None:
            number, x, y = found
            detail = (
                f"first difference at line {number}{tail}: recorded "
                f"{json.dumps(x, ensure_ascii=False)}, replay {json.dumps(y, ensure_ascii=False)}"
            )
        else:
            detail = "the same lines, but not the same bytes (line endings, a final newline)"
    return Check(stream, "differs", left, right, detail)


def _file_list(body: dict[str, Any], blobs: BlobStore) -> list[dict[str, Any]]:
    items = [_dict(item) for item in body.get("files_changed") or []]
    if "files_changed_count" in body:
        data = _blob(blobs, body.get("files_changed_full"), "the recorded list of files")
        if data is not None:
            items = [_dict(json.loads(line)) for line in data.splitlines() if line.strip()]
    return items


def _file_map(items: list[dict[str, Any]]) -> dict[str, str]:
    """``area/path`` → its BLAKE3, or ``deleted`` (added and modified are alike: the
    replay starts from an empty home and the bare project)."""
    out: dict[str, str] = {}
    for item in items:
        path = item.get("path_b64") or item.get("path")
        key = f"{item.get('area')}/{path}"
        if item.get("change") == "deleted":
            out[key] = "deleted"
        else:
            out[key] = str(item.get("blake3") or f"not hashed ({item.get('size')} bytes)")
    return out


def _files(
    recorded: dict[str, Any], replayed: dict[str, Any], blobs: BlobStore, runner: Runner
) -> Check:
    from jhansi.ledger.blobs import BlobStore as Store
    from jhansi.ledger.layout import LedgerLayout

    a = _file_map(_file_list(recorded, blobs))
    b = _file_map(_file_list(replayed, Store(LedgerLayout(runner.ledger.directory).blobs_dir)))
    if a == b:
        return Check("files changed", "same", a, b)
    parts = []
    only_recorded = sorted(set(a) - set(b))
    only_replayed = sorted(set(b) - set(a))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    if changed:
        parts.append("not the same content: " + ", ".join(changed))
    if only_recorded:
        parts.append("only in the recorded run: " + ", ".join(only_recorded))
    if only_replayed:
        parts.append("only in the replay: " + ", ".join(only_replayed))
    return Check("files changed", "differs", a, b, "; ".join(parts))


def _ran_on(recorded: dict[str, Any], replayed: dict[str, Any], plan: Plan) -> list[Check]:
    """The backend, and the image (docker) or interpreter (bwrap) it ran on."""
    a, b = _dict(recorded.get("sandbox")), _dict(replayed.get("sandbox"))
    da, db = _dict(a.get("details")), _dict(b.get("details"))
    checks = [
        Check(
            "backend",
            "same" if a.get("backend") == b.get("backend") else "differs",
            a.get("backend"),
            b.get("backend"),
        )
    ]
    if a.get("backend") == "docker":
        keys = ("image", "image_digest")
        what, allowed = "image", any(note.startswith("image:") for note in plan.allowed)
    else:
        keys = ("python_implementation", "python_version")
        what, allowed = "interpreter", any(note.startswith("interpreter:") for note in plan.allowed)
    left = {k: da.get(k) for k in keys}
    right = {k: db.get(k) for k in keys}
    if what == "image":  # the name may be the id when its name moved on
        left.pop("image")
        right.pop("image")
    status: CheckStatus = "same" if left == right else "allowed" if allowed else "differs"
    checks.append(Check(what, status, left, right))
    return checks


def _deny_ids(body: dict[str, Any]) -> list[str]:
    findings = _dict(body.get("policy")).get("findings") or []
    return sorted(
        str(f.get("id"))
        for f in findings
        if isinstance(f, dict) and f.get("severity") == "deny" and not f.get("ignored")
    )


def _refusal_checks(
    recorded: dict[str, Any],
    result: RunResult | None,
    refusal: JhansiError | None,
    replayed: dict[str, Any],
) -> list[Check]:
    reason = _dict(recorded.get("reason"))
    a = {"kind": reason.get("kind"), "exit_code": reason.get("exit_code")}
    if result is not None:
        b: dict[str, Any] = {"ran": result.status, "exit_code": result.exit_code}
        return [Check("refusal", "differs", a, b, "the replay was not refused: it ran")]
    got = _dict(replayed.get("reason"))
    b = {"kind": got.get("kind"), "exit_code": got.get("exit_code")}
    if not got and refusal is not None:
        b = {"kind": type(refusal).__name__, "exit_code": int(refusal.exit_code)}
    detail = "" if a == b else str(got.get("message") or (refusal.message if refusal else ""))
    checks = [Check("refusal", "same" if a == b else "differs", a, b, detail)]
    if recorded.get("policy") or replayed.get("policy"):
        x, y = _deny_ids(recorded), _deny_ids(replayed)
        checks.append(Check("policy findings", "same" if x == y else "differs", x, y))
    return checks


def _dependencies(
    recorded: dict[str, Any],
    replayed: dict[str, Any],
    result: RunResult | None,
    blobs: BlobStore,
) -> dict[str, Any] | None:
    """The lock's packages with their hashes, and where the environment came from."""
    deps = _dict(recorded.get("dependencies"))
    lock = _blob(blobs, deps.get("lock"), "the recorded lock")
    if lock is None:
        return None
    from jhansi.deps.pylock import packages_of, parse_lock

    try:
        document = parse_lock(lock, Path("pylock.toml"))
    except DependencyError:
        return None
    environment = result.dependencies.environment if result and result.dependencies else None
    return {
        "lock": _dict(deps.get("lock")).get("blob"),
        "packages": [
            {"name": p.name, "version": p.version, "hashes": list(p.hashes)}
            for p in packages_of(document)
        ],
        "environment": {
            "recorded": deps.get("environment"),
            "replayed": _dict(replayed.get("dependencies")).get("environment"),
            "installed": (not environment.reused) if environment is not None else None,
        },
    }
