"""What a replay loads of a recorded run, what it restores of it, and what it trusts.

:func:`load` reads the run's records from a ledger only once the ledger verifies
against the trusted keys and a signature of one of them covers every record of the
run: a replay runs only what jhansi recorded. A run signed by a key other than this
machine's (:attr:`Original.foreign`) is someone else's word: it gets none of this
machine's secrets (:func:`_refuse_foreign_secrets`), none of its recorded hosts the
user does not grant (:func:`restore_egress`), no limit looser than today's settings
(:func:`_no_looser`), nor the recorded advisory data. Whatever the replay's run does
on the host outside the sandbox is never taken from the record, whoever signed it:
the interpreter jhansi probes is today's (:func:`_backend_overrides`), and so is the
engine.

:func:`plan_replay` turns what is restored (the code, the lock, the arguments, the
``--env`` values, the egress, the backend with its limits, the image or
interpreter) into the :class:`~jhansi.request.RunRequest` of a :class:`Plan`, with
notes on what it restored differently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from jhansi.errors import LedgerError, ReplayError
from jhansi.request import RunRequest, SettingsOverrides

if TYPE_CHECKING:
    from jhansi.config import Settings
    from jhansi.ledger.blobs import BlobStore
    from jhansi.ledger.record import Record
    from jhansi.paths import Paths


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
