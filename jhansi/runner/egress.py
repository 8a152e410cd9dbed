"""The run's egress: the proxy it goes through, its output scrubbed of secrets, and
what the proxy refused, said once the run is over."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from jhansi.config import Settings
from jhansi.errors import JhansiError
from jhansi.paths import Paths
from jhansi.report import Reporter, Stream
from jhansi.request import RunRequest
from jhansi.runner.finish import WARNED
from jhansi.sandbox.interface import Backend, ExecResult

if TYPE_CHECKING:
    from datetime import timedelta

    from jhansi.egress.session import EgressSession


class Sink:
    """Adapts the reporter to the backends' output sink, scrubbing secrets when bound."""

    def __init__(self, reporter: Reporter, egress: EgressSession | None = None) -> None:
        self._reporter = reporter
        self._scrubbers = (
            {"stdout": egress.scrubber(), "stderr": egress.scrubber()} if egress else None
        )

    def write(self, stream: Stream, data: bytes) -> None:
        if self._scrubbers is not None:
            data = self._scrubbers[stream].feed(data)
            if not data:
                return
        self._reporter.output(stream, data)

    def flush(self) -> None:
        """Pass on what the scrubbers held back (a possible start of a secret)."""
        if self._scrubbers is None:
            return
        for stream in ("stdout", "stderr"):
            rest = self._scrubbers[stream].flush()
            if rest:
                self._reporter.output(stream, rest)


def scrub_result(result: ExecResult, egress: EgressSession) -> ExecResult:
    """The result with every form of a secret's value replaced in the kept output."""
    scrubber = egress.scrubber()
    return replace(
        result,
        stdout=replace(result.stdout, data=scrubber.scrub(result.stdout.data)),
        stderr=replace(result.stderr, data=scrubber.scrub(result.stderr.data)),
        error=scrubber.scrub(result.error.encode()).decode("utf-8", "replace"),
    )


def report_refusals(egress: EgressSession, reporter: Reporter) -> None:
    """Say what the proxy refused: a client library shows only "403 Forbidden".

    Not for a run with no network: what it tried is said once the run is over, in
    the front end's own words (:mod:`jhansi.egress.attempts`).
    """
    if egress.no_network:
        return
    from jhansi.egress.attempts import shown

    seen: set[str] = set()
    more = 0
    for event in egress.events():
        if event.get("decision") != "refused":
            continue
        host = shown(str(event.get("host")), 100)
        reason = shown(str(event.get("reason")), 300)
        line = f"egress refused {host}:{event.get('port')}: {reason}"
        if line in seen:
            continue
        if len(seen) >= WARNED:
            more += 1
            continue
        seen.add(line)
        reporter.warning(line)
    if more:
        reporter.warning(
            f"egress refused {more} more connection(s); `jhansi ledger show` lists them all"
        )


def open_egress(
    request: RunRequest,
    *,
    settings: Settings,
    paths: Paths,
    reporter: Reporter,
    backend: Callable[[], Backend],
) -> tuple[EgressSession | None, str]:
    """The run's egress proxy, started, and what ``enforcement`` says of egress.

    With no host allowed, the proxy refuses and records every attempt
    (:func:`~jhansi.egress.session.open_no_network`); where that cannot be set up
    (a gVisor runtime that cannot reach a host socket), the run goes on without it,
    as one with no network always did, and ``enforcement`` says so.
    """
    from datetime import timedelta

    lifetime = timedelta(seconds=settings.sandbox.timeout + 600)
    wanted = request.secrets or request.allow_hosts
    if not (wanted or settings.secrets or settings.network.allow):
        return _no_network(lifetime, settings=settings, paths=paths, backend=backend)
    from jhansi.egress.session import build_policy, open_session, parse_secret_flag

    policy = build_policy(
        settings,
        secrets=[parse_secret_flag(s) for s in request.secrets],
        allow_hosts=request.allow_hosts,
        paths=paths,
    )
    if policy is None:
        return _no_network(lifetime, settings=settings, paths=paths, backend=backend)
    session = open_session(policy, runtime_dir=paths.runtime, lifetime=lifetime)
    hosts = [str(h) for h in policy.allow] + [
        f"{s.name}@{','.join(s.hosts)}" for s in policy.secrets
    ]
    reporter.step("egress", "through the proxy to " + ", ".join(hosts))
    return session, ""


def _no_network(
    lifetime: timedelta, *, settings: Settings, paths: Paths, backend: Callable[[], Backend]
) -> tuple[EgressSession | None, str]:
    """The proxy that only refuses and records, unless it cannot be had (then the
    run goes on with no network, its attempts unrecorded, and says why)."""
    unseen = "no host allowed; what the script tries is not recorded"
    try:
        from jhansi.egress.session import open_no_network

        session = open_no_network(runtime_dir=paths.runtime, lifetime=lifetime)
    except (JhansiError, OSError) as exc:
        why = exc.message if isinstance(exc, JhansiError) else (exc.strerror or str(exc))
        return None, f"{unseen} (the proxy could not be set up: {why})"
    try:
        reached = backend().reaches_host_sockets(settings.sandbox.runtime, session.socket)
    except (JhansiError, OSError):
        reached = False  # the run itself will say what is wrong with the backend
    except BaseException:
        session.close()
        raise
    if not reached:
        session.close()
        return None, f"{unseen} (the sandbox could not reach the proxy's socket here)"
    return session, (
        "no host allowed; clients that use the proxy variables (HTTPS_PROXY ...) reach "
        "jhansi's proxy on the host, which refuses and records each destination"
    )
