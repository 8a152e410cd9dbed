"""Running a replay: the planned request as an ordinary run, in a fresh ephemeral sandbox.

:func:`replay` loads the run (:func:`~jhansi.replay.plan.load`), writes its code
and lock to a private working directory, plans the request
(:func:`~jhansi.replay.plan.plan_replay`), runs it with a
:class:`~jhansi.runner.Runner` like any run (recorded in the ledger the settings
name, with ``replay_of`` naming the original) and compares the outcome
(:mod:`jhansi.replay.compare`). A docker replay runs the recorded image by its id
when its name now names another (:func:`_choose_image`). A run that cannot be had
as recorded (its image gone, its dependencies no longer installable) is a
:class:`~jhansi.errors.ReplayError`; a refusal is compared, when the recorded run
was refused too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from jhansi.errors import (
    ConfigError,
    DependencyError,
    JhansiError,
    LedgerError,
    PolicyError,
    ReplayError,
    SandboxError,
    UsageError,
)
from jhansi.replay.compare import _compare
from jhansi.replay.plan import load, plan_replay

if TYPE_CHECKING:
    from jhansi.paths import Paths
    from jhansi.replay.compare import ReplayReport
    from jhansi.replay.plan import Plan
    from jhansi.report import Reporter
    from jhansi.request import RunRequest
    from jhansi.result import RunResult
    from jhansi.runner import Runner


def _choose_image(runner: Runner, plan: Plan, allow_different_image: bool) -> str | None:
    """The image to run for a docker replay: the recorded one, by its id when its name
    now names another; ``None`` to keep the name. Refuses when it is gone, unless allowed."""
    if plan.image is None:
        return None
    name, digest = plan.image
    client = getattr(runner.backend, "client", None)
    inspect = getattr(client, "image_inspect", None)
    if inspect is None or not digest:
        return None
    if inspect(digest) is not None:
        current = inspect(name)
        if current is not None and current.get("Id") == digest:
            return None
        plan.notes.append(f"{name} now names another image: ran the recorded one by its id")
        return digest
    if allow_different_image:
        current = inspect(name)
        now = str(current.get("Id")) if current else "pulled now"
        plan.allowed.append(f"image: the recorded {name} ({digest}) is gone; ran {name} ({now})")
        return None
    raise ReplayError(
        f"the image the run used, {name} ({digest}), is no longer in the engine",
        hint=f"Load that image again, or pass --allow-different-image to replay on {name} "
        "as it is now (the replay records that it did).",
    )


def _runner(request: RunRequest, paths: Paths, reporter: Reporter) -> Runner:
    from jhansi.overrides import settings_for
    from jhansi.runner import Runner

    settings = settings_for(request, paths=paths)
    return Runner.from_settings(settings, paths=paths, reporter=reporter)


def _last_seq(directory: Path) -> int:
    from jhansi.ledger.read import exists, iter_records

    if not exists(directory):
        return -1
    last = -1
    for record in iter_records(directory):
        last = record.seq
    return last


def replay(
    run_id: str,
    *,
    source: Path,
    paths: Paths,
    reporter: Reporter,
    env: dict[str, str] | None = None,
    allow_different_image: bool = False,
    advisory_db: Path | None = None,
    keys: Collection[str] | None = None,
    allow_hosts: Collection[str] = (),
) -> ReplayReport:
    """Replay run ``run_id`` of the ledger at ``source`` and compare it with the record.

    The replay is recorded in the ledger the settings name (``source`` itself unless
    another ledger is read). Raises :class:`ReplayError` (exit 9) when the run cannot
    be reproduced as recorded, :class:`LedgerError` when the ledger is not intact or no
    signature of a trusted key covers the run: ``keys`` (hex), else this machine's key.
    """
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.layout import LedgerLayout
    from jhansi.paths import ensure_private_dir

    own = own_key(paths)
    trusted: frozenset[str] | None = None
    if keys:
        trusted = frozenset(k.lower() for k in keys)
    elif own is not None:
        trusted = frozenset({own})
    original = load(source, run_id, trusted_keys=trusted, own_key=own)
    blobs = BlobStore(LedgerLayout(source).blobs_dir)
    base = ensure_private_dir(paths.runtime)
    workdir = Path(tempfile.mkdtemp(prefix=f"replay-{original.run_id[:13]}-", dir=base))
    try:
        workdir.chmod(0o755)  # read by the sandbox's own uid, like code from stdin
        plan = plan_replay(
            original,
            blobs,
            workdir,
            paths=paths,
            env=env or {},
            allow_different_image=allow_different_image,
            advisory_db=advisory_db,
            granted_hosts=allow_hosts,
        )
        runner = _runner(plan.request, paths, reporter)
        if original.start is not None:
            try:
                image = _choose_image(runner, plan, allow_different_image)
            except SandboxError as exc:
                raise _irreproducible(original.run_id, exc) from None
            if image is not None:
                overrides = replace(plan.request.overrides, image=image)
                plan.request = replace(plan.request, overrides=overrides)
                runner = _runner(plan.request, paths, reporter)
        plan.request = replace(plan.request, replay_notes=tuple(plan.allowed))
        recording = runner.ledger.directory
        before = _last_seq(recording)
        reporter.step("replay", f"run {original.run_id} as a new run, in an ephemeral sandbox")
        result: RunResult | None = None
        refusal: JhansiError | None = None
        try:
            result = runner.run(plan.request)
        except (LedgerError, UsageError, ConfigError):
            raise  # the ledger, or what the user gave (--env): not the run's doing
        except JhansiError as exc:
            if original.denied is None and not isinstance(exc, PolicyError):
                raise _irreproducible(original.run_id, exc) from None
            refusal = exc
        return _compare(original, blobs, plan, runner, result, refusal, source, before)
    finally:
        from jhansi.deps.install import remove_tree

        remove_tree(workdir)


def own_key(paths: Paths) -> str | None:
    """This machine's ledger signing key (hex), if it has one."""
    from jhansi.ledger.checkpoint import key_path, read_public_key

    raw = read_public_key(key_path(paths))
    return raw.hex() if raw is not None else None


def _irreproducible(run_id: str, exc: JhansiError) -> ReplayError:
    what = (
        "its dependencies cannot be installed as locked"
        if isinstance(exc, DependencyError)
        else "its sandbox cannot be had as recorded"
        if isinstance(exc, SandboxError)
        else "it was refused"
    )
    return ReplayError(
        f"run {run_id} cannot be reproduced: {what}: {exc.message}",
        hint=exc.hint or "`jhansi ledger show` shows what the run was given.",
    )


def default_source(paths: Paths) -> Path:
    """The ledger a replay reads by default: the one the settings name."""
    from jhansi.config import load_settings
    from jhansi.ledger.layout import resolve_directory

    return resolve_directory(load_settings(paths=paths), paths)


def parse_env_flags(pairs: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` values."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(
                f"--env {pair!r} is not NAME=VALUE",
                hint="Write it as --env NAME=value (a variable the recorded run was given).",
            )
        out[name] = value
    return out
