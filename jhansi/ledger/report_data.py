"""What ``jhansi ledger report`` shows, read from the ledger: each run, with its blobs.

The HTML is written by :mod:`jhansi.ledger.report_html`; this module only reads. It
reuses the readers of ``ledger log`` and ``show`` (:mod:`jhansi.ledger.read`): a run
is the records that share its ``run_id`` (``exec.start`` and ``exec.end``, or one
``exec.denied``), and its texts (prompt, code, stdout, stderr) come from their blobs,
each checked against its hash as it is read. A blob that is missing, altered or not
UTF-8 is shown as such, never guessed at.

Sizes: the code and the prompt are shown up to :data:`TEXT_LIMIT` characters, each
output stream up to :data:`OUTPUT_LIMIT`; past that the report keeps the start and
says how much it left out (the ledger keeps it all: ``jhansi ledger show``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from jhansi.errors import LedgerError, UsageError
from jhansi.ledger.blobs import BlobStore
from jhansi.ledger.findings import VerifyReport
from jhansi.ledger.layout import LedgerLayout
from jhansi.ledger.read import (
    RunSummary,
    iter_records,
    run_texts,
    summarize_runs,
    verified_records,
)
from jhansi.ledger.record import EXEC_DENIED, EXEC_END, EXEC_START, HEX64, Record

#: Characters of a script's stdout (and of its stderr) a report shows at most.
OUTPUT_LIMIT: Final = 64 * 1024
#: Characters of a script's code (and of its prompt) a report shows at most.
TEXT_LIMIT: Final = 512 * 1024


@dataclass(frozen=True, slots=True)
class Text:
    """A recorded text as the report shows it: its start, and what was left out."""

    label: str
    digest: str
    text: str | None
    """``None`` when the blob cannot be shown (:attr:`problem` says why) or was left out."""
    size: int | None
    """The blob's length in bytes, when it could be read."""
    shown_chars: int = 0
    omitted_chars: int = 0
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class SbomSummary:
    """The packages, licences and vulnerabilities a run's CycloneDX SBOM lists."""

    digest: str
    packages: tuple[tuple[str, str, str], ...] = ()
    """(name, version, licences) of each library component."""
    platform: tuple[str, ...] = ()
    """What it ran on: the interpreter or the image (name and version)."""
    vulnerabilities: tuple[tuple[str, str, str], ...] = ()
    """(id, affected package reference, recommendation or description)."""
    problem: str | None = None


@dataclass(slots=True)
class RunView:
    """One run (or refusal) with everything the report shows of it."""

    index: int
    summary: RunSummary
    records: list[Record]
    start: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] = field(default_factory=dict)
    denied: dict[str, Any] = field(default_factory=dict)
    texts: list[Text] = field(default_factory=list)
    sbom: SbomSummary | None = None
    files_changed: list[Any] = field(default_factory=list)
    egress: list[Any] = field(default_factory=list)
    list_problems: list[str] = field(default_factory=list)
    unsigned: tuple[int, ...] = ()
    """The seqs of its records no valid signature covers (appended by someone without the
    key, or a run that crashed before its checkpoint): not to be relied on."""

    @property
    def main(self) -> dict[str, Any]:
        """The body that says what ran: ``exec.start``, else ``exec.denied``."""
        return self.start or self.denied

    @property
    def backend(self) -> str:
        """The sandbox backend it ran on (``""`` for a refusal before a sandbox)."""
        sandbox = self.start.get("sandbox")
        if isinstance(sandbox, dict) and isinstance(sandbox.get("backend"), str):
            return str(sandbox["backend"])
        return ""

    @property
    def actor(self) -> str:
        """Who ran it, on one line."""
        return actor_text(self.main.get("actor"))

    @property
    def refusals(self) -> int:
        """Connections the egress proxy refused (or failed) during the run."""
        return sum(
            1
            for event in self.egress
            if isinstance(event, dict) and event.get("decision") in ("refused", "failed")
        )


@dataclass(frozen=True, slots=True)
class ReportData:
    """The whole report: the verification, then the runs selected."""

    directory: Path
    verification: VerifyReport
    trusted_keys: tuple[str, ...] | None
    """The keys verification was pinned to (``None``: any valid signature was accepted)."""
    key_source: str
    """Where :attr:`trusted_keys` came from (``--key``, this machine's key), or ``""``."""
    runs: list[RunView]
    include_output: bool
    filters: dict[str, Any]
    generated: str
    jhansi_version: str


def actor_text(actor: Any) -> str:
    """``user@host`` (and the CI run) of an ``actor`` field, on one line."""
    if not isinstance(actor, dict):
        return ""
    user, host = actor.get("user"), actor.get("host")
    text = f"{user}@{host}" if user is not None and host is not None else str(user or host or "")
    ci = actor.get("ci")
    if isinstance(ci, dict):
        who = ci.get("actor")
        where = ci.get("repository")
        parts = [str(ci.get("provider") or "ci")]
        if where:
            parts.append(str(where))
        if who:
            parts.append(f"by {who}")
        text += f" ({' '.join(parts)})"
    return text


def _cut(label: str, digest: str, size: int | None, text: str, limit: int) -> Text:
    if len(text) <= limit:
        return Text(label, digest, text, size, shown_chars=len(text))
    return Text(
        label, digest, text[:limit], size, shown_chars=limit, omitted_chars=len(text) - limit
    )


def read_texts(records: Iterable[Record], blobs: BlobStore, *, include_output: bool) -> list[Text]:
    """The prompt, code and outputs of a run, cut to the report's sizes.

    Without ``include_output`` the outputs are not read at all: only their size and
    hash, from the record, are shown.
    """
    records = list(records)
    found: list[Text] = []
    for blob in run_texts(
        records if include_output else [r for r in records if r.kind != EXEC_END], blobs
    ):
        limit = OUTPUT_LIMIT if blob.label in ("stdout", "stderr") else TEXT_LIMIT
        if blob.text is None:
            found.append(Text(blob.label, blob.digest, None, blob.size, problem=blob.problem))
        else:
            found.append(_cut(blob.label, blob.digest, blob.size, blob.text, limit))
    if not include_output:
        for record in records:
            if record.kind != EXEC_END:
                continue
            for label in ("stdout", "stderr"):
                ref = record.body.get(label)
                if isinstance(ref, dict) and isinstance(ref.get("blob"), str):
                    size = ref.get("bytes", ref.get("size"))
                    found.append(
                        Text(
                            label,
                            str(ref["blob"]),
                            None,
                            size if isinstance(size, int) else None,
                            problem="left out of this report (--no-output)",
                        )
                    )
    return found


def _list(value: Any) -> list[Any]:
    """A recorded list, or none: an SBOM is read as untrusted data."""
    return value if isinstance(value, list) else []


def _licences(component: dict[str, Any]) -> str:
    names: list[str] = []
    for entry in _list(component.get("licenses")):
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("expression"), str):
            names.append(entry["expression"])
        licence = entry.get("license")
        if isinstance(licence, dict):
            name = licence.get("id") or licence.get("name")
            if isinstance(name, str):
                names.append(name)
    return ", ".join(names)


def sbom_summary(digest: str, blobs: BlobStore) -> SbomSummary:
    """What a CycloneDX SBOM blob lists (or why it cannot be read)."""
    try:
        document = json.loads(blobs.get(digest))
    except LedgerError as exc:
        return SbomSummary(digest, problem=exc.message)
    except ValueError:
        return SbomSummary(digest, problem="not a JSON document")
    if not isinstance(document, dict):
        return SbomSummary(digest, problem="not a CycloneDX document")
    packages: list[tuple[str, str, str]] = []
    platform: list[str] = []
    for component in _list(document.get("components")):
        if not isinstance(component, dict):
            continue
        name, version = str(component.get("name", "")), str(component.get("version", ""))
        if component.get("type") == "library":
            packages.append((name, version, _licences(component)))
        else:
            platform.append(f"{component.get('type', '')}: {name} {version}".strip())
    vulnerabilities: list[tuple[str, str, str]] = []
    for vuln in _list(document.get("vulnerabilities")):
        if not isinstance(vuln, dict):
            continue
        affects = ", ".join(
            str(a.get("ref", "")) for a in _list(vuln.get("affects")) if isinstance(a, dict)
        )
        said = vuln.get("recommendation") or vuln.get("description") or ""
        vulnerabilities.append((str(vuln.get("id", "")), affects, str(said)))
    return SbomSummary(digest, tuple(packages), tuple(platform), tuple(vulnerabilities))


def full_list(body: dict[str, Any], name: str, blobs: BlobStore) -> tuple[list[Any], str | None]:
    """A list of an ``exec.end`` body, whole: read from its ``NAME_full`` blob when the
    record kept only the head (:func:`jhansi.records.bounded_list`)."""
    head = body.get(name)
    items = list(head) if isinstance(head, list) else []
    ref = body.get(f"{name}_full")
    if not isinstance(ref, dict) or not isinstance(ref.get("blob"), str):
        return items, None
    try:
        data = blobs.get(str(ref["blob"]))
        return [json.loads(line) for line in data.splitlines() if line], None
    except LedgerError as exc:
        return items, f"{name}: only the first {len(items)} shown ({exc.message})"
    except ValueError:
        return items, f"{name}: only the first {len(items)} shown (the full list is not JSON Lines)"


def build_run(index: int, summary: RunSummary, records: list[Record], blobs: BlobStore, *,
              include_output: bool) -> RunView:  # fmt: skip
    """One :class:`RunView` from the records of that run."""
    view = RunView(index, summary, records)
    for record in records:
        if record.kind == EXEC_START:
            view.start = dict(record.body)
        elif record.kind == EXEC_END:
            view.end = dict(record.body)
        elif record.kind == EXEC_DENIED:
            view.denied = dict(record.body)
    view.texts = read_texts(records, blobs, include_output=include_output)
    sbom = view.start.get("sbom")
    if (
        isinstance(sbom, dict)
        and isinstance(sbom.get("blob"), str)
        and HEX64.fullmatch(sbom["blob"])
    ):
        view.sbom = sbom_summary(sbom["blob"], blobs)
    for name in ("files_changed", "egress"):
        items, problem = full_list(view.end, name, blobs)
        setattr(view, name, items)
        if problem:
            view.list_problems.append(problem)
    return view


def select_runs(
    runs: Sequence[RunSummary],
    *,
    run_ids: Sequence[str] = (),
    sandbox: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[RunSummary]:
    """The runs a report covers: each ``run_ids`` (a unique prefix each), in ``sandbox``,
    started at or after ``since`` and before ``until`` (record times)."""
    chosen = list(runs)
    if run_ids:
        wanted: set[str] = set()
        for prefix in run_ids:
            text = prefix.strip()
            matches = [r.run_id for r in runs if text and r.run_id.startswith(text)]
            if not matches:
                raise UsageError(
                    f"--run {prefix!r}: no such run in the ledger",
                    hint="`jhansi ledger log` lists the runs.",
                )
            if len(matches) > 1 and text not in matches:
                raise UsageError(
                    f"--run {prefix!r} matches {len(matches)} runs: " + ", ".join(matches[:5]),
                    hint="Give more of the run id.",
                )
            wanted.add(text if text in matches else matches[0])
        chosen = [r for r in chosen if r.run_id in wanted]
    return [
        r
        for r in chosen
        if (sandbox is None or r.sandbox == sandbox)
        and (since is None or r.time >= since)
        and (until is None or r.time < until)
    ]


def collect(
    directory: Path,
    verification: VerifyReport,
    *,
    trusted_keys: Iterable[str] | None,
    key_source: str = "",
    include_output: bool,
    run_ids: Sequence[str] = (),
    sandbox: str | None = None,
    since: str | None = None,
    until: str | None = None,
    now: str,
) -> ReportData:
    """Everything the report shows, read from the ledger in ``directory``."""
    from jhansi._version import __version__

    by_run: dict[str, list[Record]] = {}
    # A ledger that verifies is read as it was verified (a ledger changed since is an
    # error); one that does not is read as it is, under a red banner.
    records = (
        verified_records(directory, verification) if verification.ok else iter_records(directory)
    )
    for record in records:
        run_id = record.body.get("run_id")
        if isinstance(run_id, str) and record.kind in (EXEC_START, EXEC_END, EXEC_DENIED):
            by_run.setdefault(run_id, []).append(record)
    summaries = summarize_runs(r for records in by_run.values() for r in records)
    summaries.sort(key=lambda run: by_run[run.run_id][0].seq)
    chosen = select_runs(summaries, run_ids=run_ids, sandbox=sandbox, since=since, until=until)
    blobs = BlobStore(LedgerLayout(directory).blobs_dir)
    runs = [
        build_run(n, summary, by_run[summary.run_id], blobs, include_output=include_output)
        for n, summary in enumerate(chosen, 1)
    ]
    for run in runs:
        run.unsigned = tuple(r.seq for r in run.records if not verification.signed(r.seq))
    return ReportData(
        directory=directory,
        verification=verification,
        trusted_keys=tuple(sorted(trusted_keys)) if trusted_keys is not None else None,
        key_source=key_source,
        runs=runs,
        include_output=include_output,
        filters={
            "run": list(run_ids),
            "sandbox": sandbox,
            "since": since,
            "until": until,
        },
        generated=now,
        jhansi_version=__version__,
    )


__all__ = [
    "OUTPUT_LIMIT",
    "TEXT_LIMIT",
    "ReportData",
    "RunView",
    "SbomSummary",
    "Text",
    "actor_text",
    "build_run",
    "collect",
    "full_list",
    "read_texts",
    "sbom_summary",
    "select_runs",
]
