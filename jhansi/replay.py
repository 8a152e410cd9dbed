"""``jhansi replay RUN_ID``: run a recorded run again, from the ledger alone, and compare.

What a run's records hold is what the replay restores: the code (its blob), the
lock (its blob: the same wheels, by hash, from the environment cache or installed
again from the index), the backend with its limits, the image (by its id) or the
interpreter, the arguments, the variables the user passed (their values are
recorded from this version on: :func:`jhansi.records.env_fields`), and the hosts
and secrets the egress proxy allowed. The replay is an ordinary run
(:class:`~jhansi.runner.Runner`, a :class:`~jhansi.request.RunRequest` built here)
in a fresh ephemeral sandbox, recorded in the ledger like any run, with
``replay_of`` naming the original.

Then the outcome is compared with the recorded one: the exit status, the BLAKE3 of
stdout and stderr (what was kept of each), the files changed (names and hashes), and
what the run ran on (code, lock, environment, image or interpreter). A refused run
(``exec.denied``) replays to a refusal: the recorded lock is checked against the
policy again, and the refusals are compared.

What a replay does not restore (:data:`NOT_RESTORED`): the project's other files at
/work (the ledger keeps the code, not the project), the named sandbox's home (the
replay's is empty), the configuration files (only their hashes are recorded), the
values of variables that look like credentials (by name or by value), and whatever the
network answered.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

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
from jhansi.request import RunRequest, SettingsOverrides

if TYPE_CHECKING:
    from jhansi.config import Settings
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.record import Record
    from jhansi.paths import Paths
    from jhansi.report import Reporter
    from jhansi.result import RunResult
    from jhansi.runner import Runner

__all__ = ["Check", "ReplayReport", "replay"]

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


# -- the recorded run ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Original:
    """The records of the run to replay."""

    run_id: str
    start: Record | None
    end: Record | None
    denied: Record | None
    foreign: bool = False
    """Signed by a key other than this machine's (``--key``): recorded by someone else."""
    signers: tuple[str, ...] = ()

    @property
    def first(self) -> Record:
        """``exec.start`` or ``exec.denied``: where the inputs are."""
        found = self.start or self.denied
        assert found is not None  # noqa: S101 - load() returns none without one
        return found


def load(
    directory: Path, run_id: str, *, trusted_keys: Collection[str] | None, own_key: str | None
) -> Original:
    """The records of ``run_id`` (a unique prefix will do) in the ledger at ``directory``,
    once the ledger verifies against ``trusted_keys`` (hex) and a signature of one of them
    covers every record of the run: a replay runs only what jhansi recorded, never
    records someone appended without the key (they verify, with a warning, until the
    next run's checkpoint leaves them out) nor a ledger re-signed with another key.
    ``own_key``: this machine's key; a run signed by any other key is :attr:`Original.foreign`.
    """
    from jhansi.ledger.read import exists, run_records, verified_records
    from jhansi.ledger.record import EXEC_DENIED, EXEC_END, EXEC_START
    from jhansi.ledger.verify import verify_ledger

    if not exists(directory):
        raise LedgerError(
            f"no ledger at {directory}",
            hint="Name the ledger the run is in with --ledger DIR (or JHANSI_LEDGER).",
        )
    if trusted_keys is None:
        raise LedgerError(
            f"cannot tell who wrote the ledger at {directory}: this machine has no signing "
            "key and no --key was given, and a replay runs only what a trusted key signed",
            hint="Pass --key with the public key of the machine that recorded the run "
            "(`jhansi ledger key` prints it there).",
        )
    report = verify_ledger(directory, trusted_keys=trusted_keys, check_blobs=False)
    if not report.ok:
        first = report.first_error
        raise LedgerError(
            f"the ledger at {directory} does not verify: "
            f"{first.describe() if first else 'unknown error'}",
            hint="`jhansi ledger verify` lists every problem; a replay needs intact records "
            "(restore the ledger from a backup).",
        )
    full, records = run_records(directory, run_id, verified_records(directory, report))
    unsigned = [record.seq for record in records if not report.signed(record.seq)]
    if unsigned:
        raise LedgerError(
            f"run {full}: no signature of a trusted key covers its record(s) at seq "
            f"{', '.join(map(str, unsigned))}: they were appended by someone without the "
            "signing key, or the run crashed before its checkpoint; not replaying them",
            hint="`jhansi ledger verify` names the records no signature covers.",
        )
    by_kind = {record.kind: record for record in records}
    start, end, denied = by_kind.get(EXEC_START), by_kind.get(EXEC_END), by_kind.get(EXEC_DENIED)
    if start is None and denied is None:
        raise ReplayError(
            f"run {full} has no exec.start or exec.denied record: nothing says what it ran",
            hint="`jhansi ledger show` shows what the ledger holds of it.",
        )
    if start is not None and end is None:
        raise ReplayError(
            f"run {full} has no end record (it crashed, or is still running): there is "
            "nothing to compare a replay with",
            hint="Replay a run that ended; `jhansi ledger log` lists them with their status.",
        )
    signers = set(report.keys)
    foreign = own_key is None or not signers <= {own_key.lower()}
    return Original(full, start, end, denied, foreign=foreign, signers=tuple(sorted(signers)))


# -- what to run --------------------------------------------------------------------------


@dataclass
class Plan:
    """The request a replay makes, and what it says about it."""

    request: RunRequest
    notes: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    not_restored: list[str] = field(default_factory=list)
    image: tuple[str, str] | None = None
    """(name, id) of the recorded image (docker)."""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _blob(blobs: BlobStore, ref: Any, what: str) -> bytes | None:
    digest = _dict(ref).get("blob")
    if not isinstance(digest, str):
        return None
    try:
        return blobs.get(digest)
    except LedgerError as exc:
        raise LedgerError(f"{what}: {exc.message}", hint=exc.hint) from None
    except ValueError:
        raise LedgerError(
            f"{what}: the record names no valid blob ({digest[:80]!r})",
            hint="`jhansi ledger verify` checks the ledger; restore it from a backup.",
        ) from None


def _script_name(path: Any) -> str:
    """The file name the code is written to: the recorded one, when it is a plain name."""
    name = Path(path).name if isinstance(path, str) else ""
    if path == "<stdin>" or not name or name.startswith(".") or not name.isprintable():
        return "stdin.py" if path == "<stdin>" else "script.py"
    return name


def _jhansi_env_names(secrets: list[str]) -> set[str]:
    """The variables jhansi itself sets in a sandbox (not the user's ``--env``)."""
    from jhansi.egress.sandboxside import RESERVED
    from jhansi.runner.spec import sandbox_env

    return set(sandbox_env(())) | set(RESERVED) | set(secrets)


def restore_environment(
    body: dict[str, Any], blobs: BlobStore, given: dict[str, str], secrets: list[str]
) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """The variables a replay passes (the recorded values, ``given`` over them), and
    notes. A variable the user passed whose value is not recorded (a run recorded
    before values were, or a name that looks like a credential) must be ``given``:
    otherwise :class:`ReplayError` names each one."""
    recorded: dict[str, str] = {}
    data = _blob(blobs, body.get("env_values"), "the recorded --env values")
    if data is not None:
        loaded = json.loads(data)
        recorded = {str(k): str(v) for k, v in _dict(loaded).items()}
    names = [n for n in _dict(body.get("sandbox")).get("env_names") or [] if isinstance(n, str)]
    passed = set(names) - _jhansi_env_names(secrets)
    if "env_values" in body or "env_withheld" in body:
        passed = set(recorded) | {str(n) for n in body.get("env_withheld") or []}
    missing = sorted(passed - set(recorded) - set(given))
    if missing:
        old = "env_values" not in body and "env_withheld" not in body
        why = (
            "the ledger keeps only their names for this run (recorded before values were)"
            if old
            else "they look like credentials (their names or values), so their values were "
            "not recorded"
        )
        raise ReplayError(
            f"cannot restore the value of {', '.join(missing)}: {why}",
            hint="Pass each one: "
            + " ".join(f"--env {name}=VALUE" for name in missing)
            + " (replay with the values the run had, or what you mean to compare with).",
        )
    notes = [f"{name} is the value given with --env" for name in sorted(given)]
    return tuple(sorted({**recorded, **given}.items())), notes


def restore_egress(
    body: dict[str, Any],
    paths: Paths,
    *,
    foreign: bool = False,
    granted: Collection[str] = (),
) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """The ``--secret`` and ``--allow-host`` flags that give the replay the recorded
    egress, and notes; secrets no longer stored make the run irreproducible.

    A ``foreign`` run (signed by another key) gets only the recorded hosts the user
    ``granted`` (``jhansi replay --allow-host``): a ledger from elsewhere must not open
    this machine's network (an internal service, a metadata address) to its code."""
    secrets = [_dict(s) for s in body.get("secrets") or []]
    egress = _dict(body.get("egress"))
    secret_hosts = {h for s in secrets for h in s.get("hosts") or []}
    flags: list[str] = []
    missing: list[str] = []
    if secrets:
        from jhansi.egress.secrets import SecretStore

        store = SecretStore.from_paths(paths)
        for secret in secrets:
            name = str(secret.get("name"))
            if store.origin(name) == "missing":
                missing.append(name)
            flags.append(f"{name}@{','.join(str(h) for h in secret.get('hosts') or [])}")
    if missing:
        raise ReplayError(
            f"the run used the secret(s) {', '.join(missing)}, which are no longer stored "
            "here (the ledger never keeps a secret's value)",
            hint="Store each again (`jhansi secret set NAME`), then replay.",
        )
    allow = [str(h) for h in egress.get("allow") or [] if str(h) not in secret_hosts]
    allow += [f"http://{h}" for h in egress.get("allow_http") or []]
    notes: list[str] = []
    if foreign:

        def bare(host: str) -> str:
            return host.strip().lower().removeprefix("http://")

        wanted = {bare(g) for g in granted}
        withheld = [h for h in allow if bare(h) not in wanted]
        allow = [h for h in allow if bare(h) in wanted]
        if withheld:
            notes.append(
                "the run, signed by another key, was allowed to reach "
                + ", ".join(withheld)
                + "; the replay is not (grant a host with --allow-host HOST, as recorded)"
            )
        unknown = sorted(wanted - {bare(h) for h in allow})
        if unknown:
            notes.append(
                "--allow-host grants only hosts the run was allowed: "
                + ", ".join(unknown)
                + " ignored"
            )
    if secrets or allow:
        reached = sorted(
            {
                str(e.get("host"))
                for e in _dict(body.get("_end")).get("egress") or []
                if isinstance(e, dict) and e.get("decision") not in ("refused", "failed")
            }
        )
        notes.append(
            "the run could reach the network through the egress proxy ("
            + ", ".join(allow + [f.split("@")[0] + " (secret)" for f in flags])
            + "); the replay may reach it again, and what the other end answers is not in "
            "the ledger" + (f" (it reached {', '.join(reached)})" if reached else "")
        )
    if egress.get("allow_private") or egress.get("upstream_ca"):
        notes.append(
            "[network] allow_private and upstream_ca come from today's configuration, not "
            "the record"
        )
    return tuple(flags), tuple(allow), notes


def _requirements(deps: dict[str, Any]) -> tuple[tuple[str, ...], list[str]]:
    """``--with`` for the recorded requirements a PEP 723 block does not declare, or
    the lines of a requirements file (the recorded specs) for the other modes."""
    specs = [_dict(r) for r in deps.get("requirements") or []]
    if deps.get("mode") == "pep723":
        return tuple(str(r.get("spec")) for r in specs if r.get("source") == "with"), []
    return (), [str(r.get("spec")) for r in specs]


def _exclude_newer(lock: bytes) -> str | None:
    import tomllib

    try:
        document = tomllib.loads(lock.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = _dict(_dict(document.get("tool")).get("jhansi")).get("exclude-newer")
    return value if isinstance(value, str) else None


def _limits(sandbox: dict[str, Any]) -> dict[str, Any]:
    limits = _dict(sandbox.get("limits"))

    def number(key: str) -> int | None:
        value = limits.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    out: dict[str, Any] = {
        "memory": number("memory_bytes"),
        "pids": number("pids"),
        "tmp_size": number("tmp_bytes"),
        "output_limit": number("output_limit_bytes"),
    }
    millicpus, timeout_ms = number("millicpus"), number("timeout_ms")
    out["cpus"] = millicpus / 1000 if millicpus is not None else None
    out["timeout"] = timeout_ms / 1000 if timeout_ms is not None else None
    return out


def _todays_python(today: Settings, paths: Paths) -> str:
    """The real path of the interpreter today's settings run a bwrap sandbox with."""
    from jhansi.sandbox.bwrap.interpreter import default_python, resolve_python

    return resolve_python(today.sandbox.python or default_python(), paths.cache)


def _backend_overrides(
    sandbox: dict[str, Any],
    allow_different_image: bool,
    plan: Plan,
    today: Settings,
    paths: Paths,
) -> dict[str, Any]:
    """The recorded backend, its image or interpreter, as settings overrides.

    What runs on the host or reaches out of it is never taken from the record: the
    interpreter (jhansi runs it on the host to probe it before the sandbox starts) is
    the recorded one only when today's settings name it, and the engine is today's (the
    recorded image is run by its id, so a different engine cannot run another image
    unnoticed). A record naming another interpreter is refused, as a project file
    setting ``[sandbox] python`` without trust is: the user names it, or allows today's.
    """
    backend = sandbox.get("backend")
    details = {str(k): str(v) for k, v in _dict(sandbox.get("details")).items()}
    out: dict[str, Any] = {}
    if backend == "bwrap":
        out["backend"] = "bwrap"
        python = details.get("python")
        if not python:
            return out
        if not Path(python).is_file():
            if allow_different_image:
                plan.allowed.append(
                    f"interpreter: the recorded {python} is gone; ran on today's interpreter"
                )
                return out
            raise ReplayError(
                f"the interpreter the run used, {python} (Python "
                f"{details.get('python_version', '?')}), is no longer on this machine",
                hint="Install that interpreter again, or pass --allow-different-image to "
                "replay on today's interpreter (the replay records that it did).",
            )
        current = _todays_python(today, paths)
        if os.path.realpath(python) == current:
            return out  # today's settings run it: nothing taken from the record
        if allow_different_image:
            plan.allowed.append(
                f"interpreter: the recorded {python} is not the one your settings name "
                f"({current}); ran on {current}"
            )
            return out
        raise ReplayError(
            f"the run used the interpreter {python}, and your settings name {current}: "
            "a replay does not run an interpreter the ledger names on its own word (jhansi "
            "runs it on this machine, outside the sandbox, to probe it)",
            hint=f"To replay on it, name it yourself (JHANSI_SANDBOX_PYTHON={python}, or "
            "[sandbox] python in your configuration); or pass --allow-different-image to "
            "replay on today's interpreter.",
        )
    if backend == "docker":
        out["backend"] = "docker"
        recorded_url = details.get("url")
        if recorded_url and today.sandbox.engine_url and recorded_url != today.sandbox.engine_url:
            plan.notes.append(
                f"the run used the engine at {recorded_url}; the replay uses the one your "
                f"settings name ({today.sandbox.engine_url}), with the recorded image by its id"
            )
        runtime = details.get("runtime")
        if runtime and runtime not in ("runc", "crun"):
            out["runtime"] = runtime
        if details.get("image"):
            out["image"] = details["image"]
            plan.image = (details["image"], details.get("image_digest", ""))
    elif isinstance(backend, str):
        out["backend"] = backend
    return out


def _advisory_db(body: dict[str, Any], given: Path | None, plan: Plan) -> Path | None:
    """``--advisory-db``, else the recorded offline advisory data when it is still there."""
    if given is not None:
        return given
    audit = _dict(_dict(body.get("policy")).get("audit"))
    location = audit.get("location")
    if audit.get("source") == "offline-osv" and isinstance(location, str):
        if Path(location).exists():
            plan.notes.append(f"the policy reads the recorded advisory data again: {location}")
            return Path(location)
        plan.not_restored.append(
            f"the advisory data the run was checked with ({location}) is gone: today's "
            "policy settings apply (--advisory-db DIR names other data)"
        )
    return None


def _refuse_foreign_secrets(original: Original, body: dict[str, Any]) -> None:
    """A run signed by another key names secrets: binding this machine's secrets of
    those names to the hosts that ledger chose would send them there. Refused."""
    bound = [
        f"{_dict(s).get('name')}@{','.join(str(h) for h in _dict(s).get('hosts') or [])}"
        for s in body.get("secrets") or []
    ]
    if bound:
        raise ReplayError(
            f"run {original.run_id} was recorded with another key "
            f"({', '.join(original.signers) or 'none'}) and used the secret(s) "
            f"{', '.join(bound)}: a replay here would send this machine's secrets of those "
            "names to the hosts that ledger names",
            hint="Replay it on the machine that recorded it (`jhansi ledger key` there is "
            "the key), or run its code yourself with the --secret bindings you choose.",
        )


#: The ``[sandbox]`` limits a replay restores.
_LIMIT_KEYS: Final = ("memory", "cpus", "pids", "tmp_size", "timeout", "output_limit")


def _no_looser(limits: dict[str, Any], today: Settings, plan: Plan) -> dict[str, Any]:
    """The recorded limits of a run signed by another key, none looser than today's
    settings (a tighter one is kept): such a ledger is someone else's word, and may
    not widen this machine's limits, as an untrusted project file may not."""
    out = dict(limits)
    for key in _LIMIT_KEYS:
        recorded, current = out.get(key), getattr(today.sandbox, key)
        if recorded is not None and recorded > current:
            out[key] = None
            plan.notes.append(
                f"{key}: the record says {recorded:g}, looser than your settings' "
                f"{current:g}: ran with {current:g} (a ledger signed by another key does not "
                "widen this machine's limits)"
            )
    return out


def plan_replay(
    original: Original,
    blobs: BlobStore,
    workdir: Path,
    *,
    paths: Paths,
    env: dict[str, str],
    allow_different_image: bool,
    advisory_db: Path | None,
    granted_hosts: Collection[str] = (),
) -> Plan:
    """The request that runs ``original`` again, its code and lock written under ``workdir``
    (``granted_hosts``: what ``--allow-host`` grants a run signed by another key)."""
    from jhansi.config import load_settings

    body = dict(original.first.body)
    if original.end is not None:
        body["_end"] = original.end.body
    if body.get("interactive"):
        raise ReplayError(
            f"run {original.run_id} was an interactive shell: what was typed is not recorded",
            hint="Replay a run of a script.",
        )
    script = _dict(body.get("script"))
    code = _blob(blobs, script, "the recorded code")
    if code is None:
        raise ReplayError(
            f"run {original.run_id} was refused before its code was read "
            f"({_dict(body.get('reason')).get('message', 'no code recorded')})",
            hint="There is no code to replay; `jhansi ledger show` shows the refusal.",
        )
    work = workdir / "work"
    work.mkdir(mode=0o755)
    name = _script_name(script.get("path"))
    target = work / name
    target.write_bytes(code)
    target.chmod(0o644)
    deps = _dict(body.get("dependencies"))
    lock_bytes = _blob(blobs, deps.get("lock"), "the recorded lock")
    with_requirements, lines = _requirements(deps)
    requirements_file: Path | None = None
    if lines and lock_bytes is not None:
        requirements_file = workdir / "requirements.txt"
        requirements_file.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    lock_file = workdir / f"pylock.{Path(name).stem.replace('.', '-')}.toml"
    if lock_bytes is not None:
        lock_file.write_bytes(lock_bytes)
    secret_names = [str(_dict(s).get("name")) for s in body.get("secrets") or []]
    plan = Plan(request=RunRequest(script=target))
    variables, env_notes = restore_environment(body, blobs, env, secret_names)
    plan.notes += env_notes
    if original.foreign:
        _refuse_foreign_secrets(original, body)
    secrets, allow_hosts, egress_notes = restore_egress(
        body, paths, foreign=original.foreign, granted=granted_hosts
    )
    plan.notes += egress_notes
    sandbox = _dict(body.get("sandbox"))
    overrides: dict[str, Any] = {}
    today = load_settings(start=work, paths=paths)
    if sandbox:
        limits = _limits(sandbox)
        if original.foreign:
            limits = _no_looser(limits, today, plan)
        overrides.update(limits)
        overrides.update(_backend_overrides(sandbox, allow_different_image, plan, today, paths))
        if not sandbox.get("ephemeral", False) and sandbox.get("name"):
            plan.not_restored.append(
                f"the home of sandbox {sandbox['name']!r}, which the run used as it was then"
            )
    else:
        plan.notes.append(
            "the run was refused before a sandbox was chosen: the replay uses today's "
            "backend and limits"
        )
    if advisory_db is not None or not original.foreign:
        overrides["advisory_db"] = _advisory_db(body, advisory_db, plan)
    plan.request = RunRequest(
        script=target,
        args=tuple(str(a) for a in body.get("argv") or []),
        project=work,
        ephemeral=True,
        env=variables,
        with_requirements=with_requirements,
        requirements_file=requirements_file,
        lock_file=lock_file,
        frozen=lock_bytes is not None,
        exclude_newer=_exclude_newer(lock_bytes) if lock_bytes is not None else None,
        secrets=secrets,
        allow_hosts=allow_hosts,
        overrides=SettingsOverrides(**overrides),
        replay_of=original.run_id,
    )
    return plan


# -- running it ---------------------------------------------------------------------------


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


# -- comparing ----------------------------------------------------------------------------


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
