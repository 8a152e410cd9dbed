"""``jhansi ledger``: verify, read, export, report on the execution ledger; its head and key."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from jhansi.cli._options import JsonFlag
from jhansi.cli._state import CliState

if TYPE_CHECKING:
    from jhansi.ledger.findings import VerifyReport

app = typer.Typer(
    help="Verify, read, export and report on the execution ledger.",
    no_args_is_help=True,
)

LedgerOption = Annotated[
    Path | None,
    typer.Option(
        "--ledger",
        metavar="DIR",
        help="The ledger directory (default: JHANSI_LEDGER, the ledger.path setting, "
        "else <data dir>/ledger).",
    ),
]


class ExportFormat(StrEnum):
    """What ``jhansi ledger export`` writes."""

    JSONL = "jsonl"
    RECORDS = "records"
    CSV = "csv"


def _directory(option: Path | None) -> Path:
    from jhansi.config import load_settings
    from jhansi.ledger.layout import resolve_directory
    from jhansi.paths import Paths

    paths = Paths.from_environment()
    if option is not None:
        return resolve_directory(None, paths, option)
    return resolve_directory(load_settings(paths=paths), paths)


def _require(directory: Path) -> None:
    from jhansi.errors import LedgerError
    from jhansi.ledger.read import exists

    if not exists(directory):
        raise LedgerError(
            f"no ledger at {directory}",
            hint="Check the path (--ledger DIR, JHANSI_LEDGER, [ledger] path); "
            "the first `jhansi run` creates the ledger.",
        )


def _trusted_keys(values: list[str]) -> frozenset[str] | None:
    """``--key`` values (hex, PEM, or files of either); else this machine's key, if any."""
    from jhansi.errors import UsageError
    from jhansi.ledger.checkpoint import key_path, parse_public_keys, read_public_key
    from jhansi.paths import Paths

    if not values:
        local = read_public_key(key_path(Paths.from_environment()))
        return frozenset({local.hex()}) if local is not None else None
    keys: set[str] = set()
    for value in values:
        candidate = Path(value).expanduser()
        try:
            text = candidate.read_text() if candidate.is_file() else value
            keys.update(parse_public_keys(text))
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"--key {value}: {exc}",
                hint="Give the hex public key `jhansi ledger key` prints, a PEM public key, "
                "or a file holding them.",
            ) from None
    return frozenset(keys)


def _anchors(values: list[str]) -> list[tuple[int, str]]:
    """``--anchor SEQ:HASH`` values, parsed."""
    from jhansi.errors import UsageError
    from jhansi.ledger.verify import parse_anchor

    anchors = []
    for text in values:
        try:
            anchors.append(parse_anchor(text))
        except ValueError as exc:
            raise UsageError(
                f"--anchor: {exc}", hint="Use SEQ:HASH as `jhansi ledger head` prints it."
            ) from None
    return anchors


def _safe(text: str) -> str:
    """Recorded text, made inert for a terminal (and for Rich markup)."""
    from rich.markup import escape

    from jhansi.ledger.read import terminal_safe

    return escape(terminal_safe(text))


def _render_report(report: VerifyReport) -> None:
    from jhansi.cli._output import stdout_console

    escape = _safe

    console = stdout_console()
    runs = f"{report.runs} run(s)"
    if report.crashed_runs:
        runs += f" ({len(report.crashed_runs)} without an end)"
    head = f"head at seq {report.head['seq']}" if report.head else "no signed head"
    summary = (
        f"{report.records} record(s), last seq {report.last_seq}, {runs}, "
        f"{report.denied} denied, {report.checkpoints} checkpoint(s), {head}, "
        f"{report.blobs_checked} blob(s) checked, {report.seconds:.2f} s"
    )
    if report.ok:
        console.print(f"[bold green]ledger verifies[/]: {escape(report.path)}", soft_wrap=True)
        # A mismatched or missing anchor is an error: in a report without one, each matched.
        for anchor in report.anchors:
            console.print(
                f"[bold green]anchor matches[/]: {escape(anchor)} (the ledger still holds "
                "that record, unchanged)",
                soft_wrap=True,
            )
    else:
        first = report.first_error
        console.print(f"[bold red]ledger does NOT verify[/]: {escape(report.path)}", soft_wrap=True)
        if first is not None:
            console.print(f"first failure: {escape(first.describe())}", soft_wrap=True)
        for problem in report.errors[1:20]:
            console.print(f"  error: {escape(problem.describe())}", soft_wrap=True)
        if len(report.errors) > 20 or report.truncated_report:
            console.print("  (more errors: use --json for the full list)")
    console.print(escape(summary), soft_wrap=True)
    for problem in report.warnings[:20]:
        console.print(f"[yellow]warning[/]: {escape(problem.describe())}", soft_wrap=True)
    if len(report.warnings) > 20:
        console.print(f"  ({len(report.warnings) - 20} more warnings: use --json)")


@app.command()
def verify(
    ctx: typer.Context,
    ledger: LedgerOption = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            metavar="SEQ:HASH",
            help="A head kept elsewhere (from `jhansi ledger head`): the ledger must still "
            "contain that record. Repeatable.",
        ),
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            metavar="KEY",
            help="Trusted signing key: hex, PEM, or a file of them (default: this machine's "
            "key, if it has one). Repeatable.",
        ),
    ] = None,
    skip_blobs: Annotated[
        bool, typer.Option("--skip-blobs", help="Do not re-hash the referenced blobs.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Records at the end that no signature covers yet (a run in progress, a "
            "crashed one, or appended without the key) are an error, not a warning.",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Check the whole ledger: chain, hashes, signatures, head, blobs. Exit 5 if tampered."""
    from jhansi.cli._output import print_json
    from jhansi.errors import ExitCode
    from jhansi.ledger.verify import verify_ledger

    ctx.ensure_object(CliState).json = json_output
    directory = _directory(ledger)
    report = verify_ledger(
        directory,
        anchors=_anchors(anchor or []),
        trusted_keys=_trusted_keys(key or []),
        check_blobs=not skip_blobs,
        strict=strict,
    )
    if json_output:
        print_json({"status": "ok" if report.ok else "invalid", **report.as_dict()})
    else:
        _render_report(report)
    if not report.ok:
        raise typer.Exit(int(ExitCode.LEDGER))


def _duration(ms: int | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms // 60_000} min {ms % 60_000 // 1000} s"


@app.command()
def log(
    ctx: typer.Context,
    ledger: LedgerOption = None,
    sandbox: Annotated[
        str | None, typer.Option("--sandbox", metavar="NAME", help="Only runs in this sandbox.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="DATE",
            help="Only runs from then on: 2025-01-31, 2025-01-31T12:00Z, or an age (7d, 12h).",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """List the recorded runs: time, run id, sandbox, script, status, exit, duration."""
    from jhansi.cli._output import print_json, stdout_console
    from jhansi.ledger.read import exists, filter_runs, iter_records, parse_since, summarize_runs

    ctx.ensure_object(CliState).json = json_output
    directory = _directory(ledger)
    bound = parse_since(since) if since else None
    runs = (
        filter_runs(summarize_runs(iter_records(directory)), sandbox=sandbox, since=bound)
        if exists(directory)
        else []
    )
    if json_output:
        print_json(
            {"status": "ok", "ledger": str(directory), "runs": [run.as_dict() for run in runs]}
        )
        return
    if not runs:
        typer.echo(
            "no runs recorded" + ("" if exists(directory) else f" (no ledger at {directory})")
        )
        return
    from rich.table import Table

    escape = _safe
    console = stdout_console()
    narrow = console.width < 110
    table = Table(
        title=f"runs in {escape(str(directory))} (times in UTC)",
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    table.add_column("time", no_wrap=True)
    # A unique prefix of a run id is enough for `jhansi ledger show`: on a narrow
    # terminal, shorten it (and the date) rather than wrap them.
    table.add_column("run id", no_wrap=True, overflow="ellipsis", max_width=20 if narrow else None)
    table.add_column("sandbox", overflow="fold", min_width=7)
    table.add_column("script", overflow="fold", min_width=8)
    table.add_column("status", no_wrap=True)
    table.add_column("exit", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    for run in runs:
        table.add_row(
            run.time[5 if narrow else 0 : 16].replace("T", " "),
            escape(run.run_id),
            escape(run.sandbox or ""),
            escape(run.script or ""),
            escape(run.status),
            "" if run.exit_code is None else str(run.exit_code),
            _duration(run.duration_ms),
        )
    console.print(table)


@app.command()
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run (a unique prefix will do).")],
    ledger: LedgerOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Everything recorded about one run, with its prompt, code and output from the blobs."""
    import json

    from jhansi.cli._output import print_json, stdout_console
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.layout import LedgerLayout
    from jhansi.ledger.read import run_records, run_texts

    ctx.ensure_object(CliState).json = json_output
    directory = _directory(ledger)
    _require(directory)
    full_id, records = run_records(directory, run_id)
    blobs = BlobStore(LedgerLayout(directory).blobs_dir)
    texts = run_texts(records, blobs)
    lists = _full_lists(records, blobs)
    replay_of = next(
        (r.body["replay_of"] for r in records if isinstance(r.body.get("replay_of"), str)), None
    )
    if json_output:
        print_json(
            {
                "status": "ok",
                "run_id": full_id,
                "replay_of": replay_of,
                "records": [
                    {
                        "seq": r.seq,
                        "time": r.time,
                        "kind": r.kind,
                        "hash": r.hash,
                        "body": r.body,
                    }
                    for r in records
                ],
                "blobs": [text.as_dict() for text in texts],
                "lists": lists,
            }
        )
        return
    escape = _safe
    console = stdout_console()
    console.print(f"[bold]run {escape(full_id)}[/]", soft_wrap=True)
    if replay_of is not None:
        console.print(f"a replay of run {escape(replay_of)} (`jhansi replay`)", soft_wrap=True)
    for record in records:
        console.print(
            f"\n[bold]{escape(record.kind)}[/]  seq {record.seq}  {record.time}  "
            f"hash {record.hash[:16]}…",
            soft_wrap=True,
        )
        console.print(
            escape(json.dumps(record.body, indent=2, ensure_ascii=False, sort_keys=True)),
            soft_wrap=True,
        )
    for text in texts:
        console.print(
            f"\n[bold]── {escape(text.label)}[/] (blob {escape(text.digest[:16])}…)",
            soft_wrap=True,
        )
        if text.text is not None:
            from jhansi.ledger.read import terminal_safe

            console.print(terminal_safe(text.text), soft_wrap=True, markup=False, highlight=False)
        else:
            console.print(f"[yellow]({escape(text.problem or 'unreadable')})[/]")
    for found in lists:
        console.print(
            f"\n[bold]── {escape(found['label'])}[/]: {found['count']} item(s) "
            f"(blob {escape(found['blob'][:16])}…)",
            soft_wrap=True,
        )
        if found["problem"]:
            console.print(f"[yellow]({escape(found['problem'])})[/]")
        for item in found["items"]:
            console.print(
                escape(json.dumps(item, ensure_ascii=False, sort_keys=True)), soft_wrap=True
            )


def _full_lists(records: list[Any], blobs: Any) -> list[dict[str, Any]]:
    """The whole of each list an ``exec.end`` keeps only the head of (``NAME_full``:
    a JSON Lines blob, :func:`jhansi.records.bounded_list`), read and checked."""
    import json

    from jhansi.errors import LedgerError

    found: list[dict[str, Any]] = []

    def visit(body: dict[str, Any], where: str) -> None:
        for key, value in body.items():
            if isinstance(value, dict) and key.endswith("_full") and "blob" in value:
                label = f"{where}{key[: -len('_full')]}"
                entry: dict[str, Any] = {
                    "label": label,
                    "blob": str(value["blob"]),
                    "count": body.get(f"{key[: -len('_full')]}_count"),
                    "items": [],
                    "problem": None,
                }
                try:
                    data = blobs.get(str(value["blob"]))
                    entry["items"] = [json.loads(line) for line in data.splitlines() if line]
                except LedgerError as exc:
                    entry["problem"] = exc.message
                except ValueError:
                    entry["problem"] = "not a JSON Lines list"
                found.append(entry)
            elif isinstance(value, dict):
                visit(value, f"{where}{key}.")

    for record in records:
        if record.kind == "exec.end" and isinstance(record.body, dict):
            visit(record.body, "")
    return found


@app.command()
def export(
    ctx: typer.Context,
    ledger: LedgerOption = None,
    format_: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="jsonl: one event per record for a SIEM, with the verification state "
            "(schemas/jhansi-ledger-event-1.schema.json); records: the records as stored "
            "(canonical bytes); csv: a table.",
        ),
    ] = ExportFormat.JSONL,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="FILE", help="Write here (mode 0600), not stdout."),
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            metavar="KEY",
            help="jsonl: the trusted signing key, as for `ledger verify` (default: this "
            "machine's key, if it has one). Repeatable.",
        ),
    ] = None,
) -> None:
    """Write every record: as SIEM events (JSON Lines), as stored, or as CSV."""
    import io
    import os
    import sys

    from jhansi.errors import UsageError
    from jhansi.ledger.read import export_csv, export_jsonl, iter_records

    ctx.ensure_object(CliState)
    directory = _directory(ledger)
    _require(directory)

    def write(out: IO[bytes]) -> int:
        if format_ is ExportFormat.JSONL:
            return _export_events(directory, key or [], out)
        if format_ is ExportFormat.RECORDS:
            return export_jsonl(iter_records(directory), out)
        text = io.TextIOWrapper(out, encoding="utf-8", newline="")
        count = export_csv(iter_records(directory), text)
        text.flush()
        text.detach()
        return count

    if output is None and sys.stdout.isatty():
        # For a person's terminal: recorded text must not drive it (the JSON stays the
        # same value; export to a file, or through a pipe, for the exact bytes).
        from jhansi.ledger.read import json_terminal_safe, terminal_safe

        raw = io.BytesIO()
        write(raw)
        shown = raw.getvalue().decode("utf-8")
        if format_ is ExportFormat.CSV:
            sys.stdout.write(terminal_safe(shown.replace("\r\n", "\n")))
        else:
            sys.stdout.write(json_terminal_safe(shown))
        sys.stdout.flush()
        return
    if output is None:
        sys.stdout.flush()
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(
            f"cannot write {output}: {exc.strerror or exc}", hint="Choose another --output."
        ) from None
    with os.fdopen(fd, "wb") as handle:
        count = write(handle)
    noun = "event" if format_ is ExportFormat.JSONL else "record"
    typer.echo(f"exported {count} {noun}(s) to {output}", err=True)


def _export_events(directory: Path, keys: list[str], out: IO[bytes]) -> int:
    """``--format jsonl``: verify the ledger once, then write one event per record.

    A ledger that does not verify is still exported (each event says so); a warning on
    stderr says it too.
    """
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.events import Verification, ledger_events, write_events
    from jhansi.ledger.layout import LedgerLayout
    from jhansi.ledger.read import one_line
    from jhansi.ledger.verify import verify_ledger

    report = verify_ledger(directory, trusted_keys=_trusted_keys(keys))
    verification = Verification.from_report(report)
    if not report.ok:
        typer.echo(
            f"warning: the ledger does NOT verify ({one_line(verification.error or '')}); "
            "every event says from which record on.",
            err=True,
        )
    blobs = BlobStore(LedgerLayout(directory).blobs_dir)
    return write_events(ledger_events(directory, verification, blobs), out)


@app.command()
def head(ctx: typer.Context, ledger: LedgerOption = None, json_output: JsonFlag = False) -> None:
    """Print the latest signed head, to keep elsewhere and check with `verify --anchor`."""
    from jhansi.cli._output import print_json
    from jhansi.ledger.checkpoint import load_head
    from jhansi.ledger.layout import LedgerLayout

    ctx.ensure_object(CliState).json = json_output
    directory = _directory(ledger)
    _require(directory)
    signed = load_head(LedgerLayout(directory).head_file)
    if json_output:
        print_json({"status": "ok", "anchor": signed.anchor, **signed.as_dict()})
        return
    from jhansi.ledger.read import terminal_safe

    typer.echo(f"ledger  {terminal_safe(signed.ledger_id)}")
    typer.echo(f"key     {terminal_safe(signed.key)}")
    typer.echo(f"anchor  {terminal_safe(signed.anchor)}")


@app.command()
def key(
    ctx: typer.Context,
    pem: Annotated[bool, typer.Option("--pem", help="Print it as a PEM public key.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Print the public key that signs this machine's checkpoints (created on first use)."""
    from jhansi.cli._output import print_json
    from jhansi.ledger.checkpoint import KeyFileSigner, public_key_pem
    from jhansi.paths import Paths

    ctx.ensure_object(CliState).json = json_output
    signer = KeyFileSigner.for_paths(Paths.from_environment())
    raw = signer.public_key()
    if json_output:
        print_json(
            {
                "status": "ok",
                "algorithm": "ed25519",
                "public_key": raw.hex(),
                "pem": public_key_pem(raw),
                "key_file": str(signer.path),
            }
        )
        return
    typer.echo(public_key_pem(raw).rstrip("\n") if pem else raw.hex())


def _report_file(output: Path) -> int:
    """``output`` opened for writing, mode 0600; never through a link or onto a device."""
    import os
    import stat

    from jhansi.errors import UsageError

    hint = "Choose another --output (a new file, or a regular file to replace)."
    try:
        found = os.lstat(output)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}", hint=hint) from None
    if found is not None and not stat.S_ISREG(found.st_mode):
        raise UsageError(f"{output} exists and is not a regular file: not replacing it", hint=hint)
    # O_NONBLOCK: a FIFO put there since cannot hold the open; fstat then refuses it.
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(output, flags, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}", hint=hint) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{output} is not a regular file: not replacing it", hint=hint)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        os.ftruncate(fd, 0)
    except OSError as exc:
        os.close(fd)
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}", hint=hint) from None
    except UsageError:
        os.close(fd)
        raise
    return fd


@app.command()
def report(
    ctx: typer.Context,
    ledger: LedgerOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Write the HTML here (mode 0600); without it, to stdout if not a terminal.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="DATE", help="Only runs from then on: a date, a time or an age (7d)."
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", metavar="DATE", help="Only runs before then: a date, a time or an age."
        ),
    ] = None,
    run: Annotated[
        list[str] | None,
        typer.Option(
            "--run", metavar="RUN_ID", help="Only this run (a unique prefix). Repeatable."
        ),
    ] = None,
    sandbox: Annotated[
        str | None, typer.Option("--sandbox", metavar="NAME", help="Only runs in this sandbox.")
    ] = None,
    include_output: Annotated[
        bool,
        typer.Option(
            "--include-output/--no-output",
            help="Put the runs' stdout and stderr in the report (default: leave them out; "
            "outputs can hold sensitive data, the report is meant to be handed over).",
        ),
    ] = False,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            metavar="SEQ:HASH",
            help="A head kept elsewhere (from `jhansi ledger head`): the ledger must still "
            "contain that record. Repeatable.",
        ),
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            metavar="KEY",
            help="Trusted signing key: hex, PEM, or a file of them (default: this machine's "
            "key, if it has one). Repeatable.",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Unsigned records at the end are an error (as `verify`)."),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Write one self-contained HTML report: verification first, a timeline, each run.

    Exit 5 when the ledger does not verify (the report is written all the same, and
    says so at the top).
    """
    import datetime as _dt
    import os
    import sys

    from jhansi.cli._output import print_json
    from jhansi.errors import ExitCode, UsageError
    from jhansi.ledger.read import parse_since
    from jhansi.ledger.report_data import collect
    from jhansi.ledger.report_html import banner_state, render
    from jhansi.ledger.verify import verify_ledger

    ctx.ensure_object(CliState).json = json_output
    if output is None and sys.stdout.isatty():
        raise UsageError(
            "not writing an HTML report to a terminal",
            hint="Give -o report.html, or redirect stdout: jhansi ledger report > report.html",
        )
    if output is None and json_output:
        raise UsageError(
            "--json prints a summary on stdout: the report needs -o FILE then",
            hint="Add -o report.html.",
        )
    directory = _directory(ledger)
    _require(directory)
    anchors = _anchors(anchor or [])
    lower = parse_since(since) if since else None
    try:
        upper = parse_since(until) if until else None
    except UsageError as exc:
        raise UsageError(exc.message.replace("--since", "--until", 1), hint=exc.hint) from None
    trusted = _trusted_keys(key or [])
    source = "--key" if key else ("this machine's key" if trusted is not None else "")
    checked = verify_ledger(directory, anchors=anchors, trusted_keys=trusted, strict=strict)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = collect(
        directory,
        checked,
        trusted_keys=trusted,
        key_source=source,
        include_output=include_output,
        run_ids=run or [],
        sandbox=sandbox,
        since=lower,
        until=upper,
        now=now,
    )
    page = render(data).encode("utf-8")
    if output is None:
        sys.stdout.buffer.write(page)
        sys.stdout.buffer.flush()
    else:
        with os.fdopen(_report_file(output), "wb") as handle:
            handle.write(page)
    state = banner_state(data)
    if json_output:
        first = checked.first_error
        print_json(
            {
                "status": "ok" if checked.ok else "invalid",
                "path": str(output),
                "ledger": str(directory),
                "bytes": len(page),
                "runs": len(data.runs),
                "run_ids": [r.summary.run_id for r in data.runs],
                "include_output": include_output,
                "verification": {
                    "valid": checked.ok,
                    "state": state,
                    "first_error": first.as_dict() if first else None,
                    "errors": len(checked.errors),
                    "warnings": [p.as_dict() for p in checked.warnings],
                    "signed_by": list(checked.keys),
                    "pinned_keys": list(data.trusted_keys or ()),
                    "anchors": list(checked.anchors),
                },
            }
        )
    elif output is not None:
        from jhansi.ledger.read import one_line

        verdict = {"ok": "verifies", "warn": "verifies, with warnings", "fail": "does NOT verify"}
        typer.echo(
            f"wrote {one_line(str(output))}: {len(data.runs)} run(s); the ledger {verdict[state]}",
            err=True,
        )
    if not checked.ok:
        raise typer.Exit(int(ExitCode.LEDGER))
