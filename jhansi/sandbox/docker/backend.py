"""The docker backend: a :class:`SandboxSpec` carried out by a Docker Engine API endpoint.

The same code serves rootful Docker (runc or gVisor's runsc), rootless Docker
and rootless Podman's Docker-compatible socket. One run is one container:
created with every hardening setting of the spec (:mod:`.container`), as the
sandbox's own user (:mod:`.identity`), attached *before* it starts (so no output
is lost), waited for with the wall-clock timeout, inspected for an OOM kill and
told apart from the runtime's end (:mod:`.outcome`), and always removed — also on
Ctrl-C; what a crash leaves behind is pruned by its labels (:mod:`.labels`).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal

import jhansi.housekeeping as housekeeping
from jhansi.errors import SandboxError
from jhansi.sandbox.docker.container import (
    container_config,
    enforcement,
    engine_mounts,
    gvisor_connects_host_sockets,
    is_gvisor,
    mask_sources,
    overlay_options,
)
from jhansi.sandbox.docker.identity import (
    Identity,
    check_traversable,
    permits,
    sandbox_identity,
    username,
)
from jhansi.sandbox.docker.labels import (
    LABEL_RUN_ID,
    container_name,
    owner_labels,
    prune_containers,
)
from jhansi.sandbox.docker.outcome import (
    SIGKILL,
    EndMarkerFilter,
    interpret_exit,
    with_end_marker,
)
from jhansi.sandbox.docker.pulls import BWRAP_ALTERNATIVE, failed_pull, remember_pull
from jhansi.sandbox.engine_client import EngineClient, PullProgress
from jhansi.sandbox.engines import EngineInfo, find_engine
from jhansi.sandbox.interface import (
    PYTHON,
    Backend,
    BackendInfo,
    CopyOnWrite,
    DiscardOutput,
    ExecResult,
    ExecStatus,
    Mount,
    OutputSink,
    OutputTail,
    Overlay,
    SandboxSpec,
    Stream,
    TailBuffer,
    spec_root_id,
    without_gate,
)
from jhansi.sandbox.ownership import hand_over
from jhansi.sandbox.probe import cached

if TYPE_CHECKING:
    from jhansi.deps.target import Target


def _log() -> Any:
    """jhansi's logger for this backend (``logging`` is imported only when something is
    worth logging: start-up time is a feature)."""
    import logging

    return logging.getLogger("jhansi.sandbox.docker")


#: How long to wait for the engine to stop a killed container and for its output to end.
_KILL_GRACE: Final = 20.0
_OUTPUT_DRAIN: Final = 10.0

PullPolicy = Literal["missing", "never"]


class _Pump:
    """Copies the attached output to the sink and the tails (in its own thread)."""

    def __init__(
        self,
        attachment: Any,
        output: OutputSink,
        limit: int,
        marker: EndMarkerFilter | None = None,
    ) -> None:
        self.attachment = attachment
        self.output: OutputSink | None = output
        self.tails = {"stdout": TailBuffer(limit), "stderr": TailBuffer(limit)}
        self.marker = marker
        """Takes the bootstrap's end marker out of stderr, when it was asked for one."""
        self.error: BaseException | None = None
        self.closing = False
        """Set before the connection is dropped on purpose (Ctrl-C, a stuck stream)."""
        self.thread = threading.Thread(target=self._run, name="jhansi-output", daemon=True)

    def _deliver(self, stream: Stream, data: bytes) -> None:
        if not data:
            return
        self.tails[stream].feed(data)
        if self.output is not None:
            try:
                self.output.write(stream, data)
            except Exception:
                # A sink that fails (a closed pipe) stops getting output;
                # the tails still keep it for the record.
                _log().debug("output sink failed", exc_info=True)
                self.output = None

    def _run(self) -> None:
        try:
            for stream, data in self.attachment.frames():
                if stream == "stderr" and self.marker is not None:
                    data = self.marker.feed(data)
                self._deliver(stream, data)
        except (OSError, ValueError) as exc:
            # The record keeps what arrived; say why the rest is missing.
            self.error = exc
            if not self.closing:
                _log().warning("the sandbox's output stream broke: %s", exc)
        finally:
            if self.marker is not None:
                self._deliver("stderr", self.marker.flush())


def _feed_stdin(attachment: Any, stdin: BinaryIO) -> None:
    read = getattr(stdin, "read1", stdin.read)
    try:
        while data := read(65536):
            attachment.send(data)
    except (OSError, ValueError):
        pass
    finally:
        attachment.close_stdin()


def _engine_error(message: str, started: float | None = None) -> ExecResult:
    empty = OutputTail(b"", 0, False)
    duration = 0 if started is None else int((time.monotonic() - started) * 1000)
    return ExecResult(
        status=ExecStatus.ENGINE_ERROR,
        exit_code=None,
        signal=None,
        duration_ms=duration,
        stdout=empty,
        stderr=empty,
        error=message,
    )


class _Discard:
    """An output sink that keeps nothing (the result's tails keep what is needed)."""

    def write(self, stream: Stream, data: bytes) -> None:
        """Dropped."""


class DockerBackend(Backend):
    """Runs sandboxes as containers of a Docker Engine API endpoint (Docker or Podman).

    ``pull`` decides what happens when the spec's image is not in the engine:
    ``missing`` pulls it (reporting through ``on_pull``), ``never`` refuses with
    the command that would fetch it.
    """

    name = "docker"

    def __init__(
        self,
        client: EngineClient,
        engine: EngineInfo,
        *,
        pull: PullPolicy = "missing",
        on_pull: Callable[[PullProgress], None] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.pull = pull
        self.on_pull = on_pull
        self.cache_dir = cache_dir
        """Where target probes of images are kept (``None``: probe every process)."""
        self._images: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_settings(
        cls,
        engine_url: str | None,
        *,
        pull: PullPolicy = "missing",
        on_pull: Callable[[PullProgress], None] | None = None,
        cache_dir: Path | None = None,
    ) -> DockerBackend:
        """The backend for the first engine that answers (or exactly ``engine_url``)."""
        client, engine = find_engine(engine_url)
        return cls(client, engine, pull=pull, on_pull=on_pull, cache_dir=cache_dir)

    # -- images -----------------------------------------------------------------

    def image(self, image: str, *, skip_pull_failed_within: float = 0) -> dict[str, Any]:
        """The engine's description of ``image``, pulled first if missing and allowed.

        Remembered for the backend's lifetime, so that :meth:`info` and :meth:`run`
        agree on the exact image (the run uses its id, not the tag, which could move).

        A failed pull is remembered in the cache directory. ``skip_pull_failed_within``
        (seconds): when a pull of ``image`` from this engine failed that recently, its
        error is raised again at once instead of pulling, so that ``auto``, which falls
        back to bubblewrap meanwhile, does not wait on an unreachable registry every
        run. The engine is still asked first: an image pulled or loaded since is used.
        """
        found = self._images.get(image)
        if found is not None:
            return found
        found = self.client.image_inspect(image)
        if found is None:
            tool = "podman" if self.engine.name == "podman" else "docker"
            if self.pull == "never":
                raise SandboxError(
                    f"image {image} is not in the engine ({self.engine.description} at "
                    f"{self.engine.url})",
                    hint=f"Fetch it (`{tool} pull {image}`), or pass another with --image. "
                    f"{BWRAP_ALTERNATIVE}",
                )
            if skip_pull_failed_within > 0:
                failed = failed_pull(self.cache_dir, self.engine, image, skip_pull_failed_within)
                if failed is not None:
                    raise failed
            try:
                self.client.image_pull(image, self.on_pull)
            except SandboxError as exc:
                remember_pull(self.cache_dir, self.engine, image, exc.message)
                raise SandboxError(exc.message, hint=f"{exc.hint} {BWRAP_ALTERNATIVE}") from None
            remember_pull(self.cache_dir, self.engine, image, None)
            found = self.client.image_inspect(image)
            if found is None:
                raise SandboxError(
                    f"image {image} is still not in the engine after pulling it",
                    hint=f"Pull it yourself (`{tool} pull {image}`) and check its name. "
                    f"{BWRAP_ALTERNATIVE}",
                )
        self._images[image] = found
        return found

    def target(self, spec: SandboxSpec) -> Target:
        """The image's interpreter, probed in a hardened container once per image id."""
        from jhansi.deps.plan import fallback_stdlib
        from jhansi.deps.target import PROBE_CODE, target_from_probe

        image_id = str(self.image(spec.image).get("Id", spec.image))

        def probe() -> object:
            probe_spec = replace(
                spec,
                run_id=f"{spec.run_id}-probe",
                argv=(PYTHON, "-I", "-S", "-c", PROBE_CODE),
                mounts=(),
                interactive=False,
                # Its own output limit: the run's (--output-limit) may be too small for it.
                limits=replace(
                    spec.limits, timeout=min(spec.limits.timeout, 120.0), output_limit=1 << 22
                ),
            )
            result = self.run(probe_spec, _Discard())
            if result.status is not ExecStatus.SUCCEEDED:
                raise SandboxError(
                    f"cannot tell which Python the image {spec.image} has: "
                    f"{result.error or result.stderr.data.decode(errors='replace')[-300:]}",
                    hint="Use an image with python3 on its PATH (--image).",
                )
            try:
                return json.loads(result.stdout.data)
            except ValueError:
                raise SandboxError(
                    f"the image {spec.image} answered jhansi's interpreter probe with nonsense",
                    hint="Use an image whose python3 is CPython 3.8 or newer (--image).",
                ) from None

        data = cached(self.cache_dir, "targets.json", f"{image_id}|{spec.runtime or ''}", probe)
        if not isinstance(data, dict):
            raise SandboxError(f"the image {spec.image} answered jhansi's probe with nonsense")
        return target_from_probe(data, fallback_stdlib())

    def info(self, spec: SandboxSpec) -> BackendInfo:
        """Engine, version, rootless, url, runtime, image and its digest."""
        found = self.image(spec.image)
        repo_digests = [str(d) for d in found.get("RepoDigests") or ()]
        details = {
            "engine": self.engine.name,
            "engine_version": self.engine.version,
            "rootless": "true" if self.engine.rootless else "false",
            "url": self.engine.url,
            "runtime": spec.runtime or self.engine.default_runtime or "runc",
            "image": spec.image,
            "image_digest": str(found.get("Id", "")),
        }
        if repo_digests:
            details["image_repo_digests"] = " ".join(sorted(repo_digests))
        return BackendInfo("docker", details)

    # -- running ----------------------------------------------------------------

    def _check_runtime(self, spec: SandboxSpec) -> None:
        if spec.runtime and self.engine.runtimes and spec.runtime not in self.engine.runtimes:
            raise SandboxError(
                f"the runtime {spec.runtime!r} is not registered with {self.engine.description}",
                hint=f"Register {spec.runtime} in the engine's configuration (Docker: "
                '/etc/docker/daemon.json "runtimes") and restart it, or unset [sandbox] runtime.',
            )

    def reaches_host_sockets(self, runtime: str | None, socket: Path | None = None) -> bool:
        """False where the engine's user (another unprivileged user) cannot reach
        ``socket``, or on a gVisor runtime registered without ``--host-uds=open`` (asks
        the engine for the runtime's arguments only then, so other runs cost no call)."""
        owner = self.engine.engine_uid
        if socket is not None and owner is not None and owner not in (0, os.getuid()):
            try:
                check_traversable(socket, owner, "the engine's user")
            except (SandboxError, OSError):
                return False
        chosen = runtime or self.engine.default_runtime or "runc"
        if not is_gvisor(chosen):
            return True
        registered = (self.client.info().get("Runtimes") or {}).get(chosen) or {}
        return gvisor_connects_host_sockets(registered.get("runtimeArgs") or ())

    def _check_egress(self, spec: SandboxSpec) -> None:
        """Refuse egress (a bound unix socket) on a gVisor runtime that cannot connect to it.

        Asks the engine for the runtime's arguments only when both apply, so other
        runs cost no extra call.
        """
        if not any(m.kind == "socket" for m in spec.mounts):
            return
        runtime = spec.runtime or self.engine.default_runtime or "runc"
        if not self.reaches_host_sockets(runtime):
            raise SandboxError(
                f"gVisor (runtime {runtime!r}) cannot reach the egress proxy: it is registered "
                "without --host-uds=open, so the sandbox cannot connect to the proxy's socket",
                hint=f'Add "--host-uds=open" to the runtimeArgs of {runtime} in '
                "/etc/docker/daemon.json and reload dockerd (SIGHUP), or run this script with "
                "runc or bwrap, or without network access.",
            )

    @staticmethod
    def _engine_user(identity: Identity) -> tuple[int, str] | None:
        """The engine's own user, when it is another unprivileged user than jhansi's."""
        uid = identity.engine_uid
        if uid is None or uid in (0, os.getuid()):
            return None
        name = username(uid)
        return uid, (
            f"the engine's user ({name}, uid {uid})" if name else f"the engine's user (uid {uid})"
        )

    def _prepare_mounts(self, spec: SandboxSpec, identity: Identity) -> None:
        """Check (and for the home, fix) what the sandbox and the engine can reach.

        The sandbox's home is jhansi's own directory: it is handed to the sandbox's
        host uid. Anything else is the user's: it is checked, never changed, and a
        :class:`SandboxError` says what is missing (before a container exists, and
        in words rather than as the runtime's "permission denied").
        """
        me = os.getuid()
        engine_user = self._engine_user(identity)
        for mount in spec.mounts:
            if mount.kind == "empty":
                continue
            if mount.kind == "overlay" and mount.overlay is not None:
                self._ready_overlay(mount, identity)
                continue
            source = mount.source
            if not source.exists():
                raise SandboxError(
                    f"cannot mount {source} at {mount.target}: it does not exist",
                    hint="Create it, or check the path.",
                )
            if engine_user is not None:
                check_traversable(source, *engine_user)
            if mount.owned and source.is_dir():
                hand_over(source, identity.host_uid, identity.host_gid)
            elif identity.host_uid != me:
                write = not mount.read_only or mount.kind == "socket"
                st = source.stat()
                want = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
                want |= os.W_OK if write else 0
                if not permits(st, identity.host_uid, {identity.host_gid}, want):
                    raise SandboxError(
                        f"the sandbox's user (host uid {identity.host_uid}) cannot "
                        f"{'write' if write else 'read'} {source} (mounted at {mount.target})",
                        hint=f"Make it {'writable' if write else 'readable'} for that uid "
                        f"(`chmod o+{'rwx' if write else 'rX'} {source}`).",
                    )

    def _ready_overlay(self, mount: Mount, identity: Identity) -> None:
        """Hand an overlay's upper and work directories to the sandbox's host uid (and open
        the project's directories for it when it is not their owner)."""
        from jhansi.sandbox.overlay import ready_upper
        from jhansi.sandbox.sources import check_own

        overlay = mount.overlay
        if overlay is None:  # pragma: no cover - the caller checked
            return
        if identity.host_uid != os.getuid():
            st = mount.source.stat()
            if not permits(st, identity.host_uid, {identity.host_gid}, os.R_OK | os.X_OK):
                raise SandboxError(
                    f"the sandbox's user (host uid {identity.host_uid}) cannot read "
                    f"{mount.source} (mounted at {mount.target})",
                    hint=f"Make it readable for that uid (`chmod o+rX {mount.source}`).",
                )
        check_own(overlay.upper.parent, None)
        for directory in (overlay.upper, overlay.work):
            check_own(directory, None)
            hand_over(directory, identity.host_uid, identity.host_gid)
        ready_upper(overlay, mount.source, identity.host_uid, identity.host_gid)

    def copy_on_write(self, spec: SandboxSpec, where: Path, project: Path) -> CopyOnWrite | str:
        """An overlay volume of the engine's local driver (rootful Docker only), tried once
        per engine, runtime and file system of ``where`` (remembered)."""
        if self.engine.name == "podman":
            return (
                "Podman's Docker-compatible API mounts a plain volume where an overlay was "
                "asked for, and its own overlay (:O) takes one lower layer and re-owns the "
                "upper one"
            )
        if self.engine.rootless:
            return "a rootless engine cannot mount an overlay of the host's directories"
        try:
            overlay_options(Overlay((where, project), where, where))
        except SandboxError as exc:
            return exc.message
        runtime = spec.runtime or self.engine.default_runtime or "runc"
        try:
            device = where.stat().st_dev
        except OSError as exc:
            return f"cannot use {where}: {exc.strerror or exc}"
        key = f"overlay:{self.engine.url}:{runtime}:{device}|{self.engine.version}"
        problem = cached(
            self.cache_dir, "overlay.json", key, lambda: self._try_overlay(spec, where)
        )
        if problem:
            return f"{self.engine.description} could not mount an overlay volume ({problem})"
        how = "gVisor's gofer serves it" if is_gvisor(runtime) else runtime
        return CopyOnWrite(
            f"overlayfs volume mounted by {self.engine.name} {self.engine.version}'s local "
            f"driver (as root, on the engine's host; {how})",
            xattr="trusted",
        )

    def _try_overlay(self, spec: SandboxSpec, where: Path) -> str:
        """Run a container with a small overlay; ``""`` when it worked, else why not."""
        from jhansi.sandbox.overlay_probe import OVERLAY_PROBE, probe_layers, remove_probe

        dirs = probe_layers(where, "trusted")
        try:
            probe = replace(
                spec,
                run_id=f"{spec.run_id}-overlay",
                argv=(PYTHON, "-I", "-S", "-c", OVERLAY_PROBE),
                mounts=(dirs.mount,),
                interactive=False,
                limits=replace(spec.limits, timeout=min(spec.limits.timeout, 120.0)),
            )
            try:
                result = self.run(probe, DiscardOutput())
            except SandboxError as exc:
                return exc.message
            if result.status is not ExecStatus.SUCCEEDED:
                tail = result.stderr.data.decode("utf-8", "replace").strip().splitlines()
                return result.error or (tail[-1] if tail else f"exit {result.exit_code}")
            return dirs.check()
        finally:
            remove_probe(dirs)

    def prune(self) -> int:
        """Remove containers of this host's jhansi runs whose owner process is gone."""
        return prune_containers(self.client)

    def run(
        self,
        spec: SandboxSpec,
        output: OutputSink,
        *,
        stdin: BinaryIO | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> ExecResult:
        """Run ``spec`` in a new container, streaming its output; always remove it.

        ``before_start`` runs once the container is created, before it is started.
        """
        spec = replace(spec, argv=tuple(without_gate(spec.argv)))
        # The bootstrap's end marker tells the script's own end from the sandbox's.
        token = os.urandom(12).hex()
        marked = with_end_marker(spec.argv, token)
        if marked is not None:
            spec = replace(spec, argv=tuple(marked))
        marker = EndMarkerFilter(token) if marked is not None else None
        # Housekeeping (containers of runs whose process is gone) beside this run's work,
        # on its own connection: it changes nothing this run uses.
        pruner = threading.Thread(target=self._prune_quietly, name="jhansi-prune", daemon=True)
        pruner.start()
        try:
            return self._run(spec, output, stdin, before_start, marker)
        finally:
            # Waited for before a library call returns; the command waits after its answer.
            housekeeping.later(pruner.join, "jhansi-prune")

    def _prune_quietly(self) -> None:
        try:
            self.prune()
        except SandboxError as exc:
            _log().debug("prune failed: %s", exc)

    def _run(
        self,
        spec: SandboxSpec,
        output: OutputSink,
        stdin: BinaryIO | None,
        before_start: Callable[[], None] | None,
        marker: EndMarkerFilter | None,
    ) -> ExecResult:
        self._check_runtime(spec)
        self._check_egress(spec)
        image = self.image(spec.image)
        identity = sandbox_identity(self.engine, spec.uid, spec.gid, root_id=spec_root_id(spec))
        self._prepare_mounts(spec, identity)
        needs_masks = any(m.kind == "empty" for m in spec.mounts)
        with mask_sources(needs_masks) as masks:
            engine_user = self._engine_user(identity)
            if masks is not None and engine_user is not None:
                check_traversable(masks[0], *engine_user)
            config = container_config(
                spec,
                image=str(image["Id"]),
                engine=self.engine,
                identity=identity,
                mounts=engine_mounts(
                    spec.mounts,
                    masks,
                    opens_targets=is_gvisor(spec.runtime or self.engine.default_runtime or ""),
                ),
                labels={LABEL_RUN_ID: spec.run_id, **owner_labels()},
            )
            container: str | None = None
            try:
                try:
                    container = self.client.container_create(
                        config, name=container_name(spec.run_id)
                    )
                except SandboxError as exc:
                    return _engine_error(exc.message)
                if before_start is not None:
                    before_start()
                result = self._run_container(container, spec, output, stdin, marker)
            finally:
                if container is None:
                    pass
                elif any(m.kind == "overlay" for m in spec.mounts):
                    # Its overlay volume is the layer the run's changes are read from:
                    # gone with the container before anything reads the layer.
                    self._remove(container)
                else:
                    # Nothing reported depends on it: the command removes it while it
                    # records and answers (jhansi.housekeeping), a library call at once.
                    doomed = container
                    housekeeping.later(lambda: self._remove(doomed), "jhansi-remove")
        return ExecResult(
            status=result.status,
            exit_code=result.exit_code,
            signal=result.signal,
            duration_ms=result.duration_ms,
            stdout=result.stdout,
            stderr=result.stderr,
            error=result.error,
            enforcement=enforcement(spec, self.engine, identity),
        )

    def _remove(self, container: str) -> None:
        try:
            self.client.container_remove(container, force=True)
        except SandboxError as exc:
            # prune() removes it on a later run, once this process is gone.
            _log().warning("could not remove container %s: %s", container[:12], exc.message)

    def _run_container(
        self,
        container: str,
        spec: SandboxSpec,
        output: OutputSink,
        stdin: BinaryIO | None,
        marker: EndMarkerFilter | None = None,
    ) -> ExecResult:
        interactive = spec.interactive and stdin is not None
        try:
            attachment = self.client.attach(container, stdin=spec.interactive)
        except SandboxError as exc:
            return _engine_error(exc.message)
        pump = _Pump(attachment, output, spec.limits.output_limit, marker)
        started = time.monotonic()
        try:
            pump.thread.start()
            try:
                self.client.container_start(container)
            except SandboxError as exc:
                return _engine_error(exc.message, started)
            started = time.monotonic()
            if interactive and stdin is not None:
                threading.Thread(
                    target=_feed_stdin, args=(attachment, stdin), name="jhansi-stdin", daemon=True
                ).start()
            elif spec.interactive:
                attachment.close_stdin()
            try:
                waited = self.client.container_wait(container, timeout=spec.limits.timeout)
                timed_out = waited is None
                if timed_out:
                    self.client.container_kill(container)
                    waited = self.client.container_wait(container, timeout=_KILL_GRACE)
            except SandboxError as exc:
                return _engine_error(exc.message, started)
            duration_ms = int((time.monotonic() - started) * 1000)
            pump.thread.join(_OUTPUT_DRAIN)
        finally:
            pump.closing = True
            attachment.close()
        pump.thread.join(1)
        stdout, stderr = pump.tails["stdout"].tail(), pump.tails["stderr"].tail()

        def result(
            status: ExecStatus, code: int | None, signal: int | None, error: str = ""
        ) -> ExecResult:
            return ExecResult(status, code, signal, duration_ms, stdout, stderr, error)

        if timed_out:
            return result(ExecStatus.TIMED_OUT, None, SIGKILL)
        if waited is None:
            return result(ExecStatus.ENGINE_ERROR, None, None, "the killed container did not stop")
        code = int(waited.get("StatusCode", -1))
        wait_error = (waited.get("Error") or {}).get("Message") if waited.get("Error") else ""
        if wait_error or code < 0:
            return result(
                ExecStatus.ENGINE_ERROR, None, None, str(wait_error or f"exit status {code}")
            )
        expected_end = marker is not None and not pump.thread.is_alive()
        end = marker.end if marker is not None else None
        oom_killed = False
        if code != 0 or (expected_end and end is None):
            try:
                state = self.client.container_inspect(container).get("State") or {}
            except SandboxError:
                state = {}
            oom_killed = bool(state.get("OOMKilled"))
        runtime = spec.runtime or self.engine.default_runtime or "runc"
        outcome = interpret_exit(
            code, end=end, expected_end=expected_end, oom_killed=oom_killed, runtime=runtime
        )
        return result(outcome.status, outcome.exit_code, outcome.signal, outcome.error)
