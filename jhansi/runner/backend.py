"""Which sandbox backend a run uses: the one ``[sandbox] backend`` names, or with
``auto``, a container engine that has (or can pull) the image, else bubblewrap."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from jhansi.config import Settings
from jhansi.errors import SandboxError
from jhansi.paths import Paths
from jhansi.report import Reporter
from jhansi.sandbox.interface import Backend

if TYPE_CHECKING:
    from jhansi.sandbox.docker import DockerBackend

#: Seconds during which ``auto`` does not try again to pull an image whose pull failed
#: (it runs on bubblewrap meanwhile): an unreachable registry may take long to fail.
PULL_RETRY_AFTER = 600.0


def select_backend(
    settings: Settings,
    reporter: Reporter,
    paths: Paths,
    *,
    make_engine: Callable[[], DockerBackend] | None = None,
    make_bwrap: Callable[[], Backend] | None = None,
) -> Backend:
    """The backend named by ``[sandbox] backend``; ``auto``: an engine that has (or can
    pull) the image, else bubblewrap.

    ``auto`` says why in :attr:`Backend.selection` (recorded with each run). An engine
    that answers but cannot provide the image (not present, and the pull fails: no
    registry here) is passed over with one warning, since the user may well have
    expected it; having no engine at all is the ordinary bubblewrap case and is one
    step line. Asking for the image costs nothing on the warm path: the engine's
    answer is kept by the backend, which asks for it on every run anyway. A failed
    pull is not tried again for :data:`PULL_RETRY_AFTER` seconds.

    ``make_engine`` and ``make_bwrap`` build the backends (default: from ``settings``).
    """
    engine_backend = make_engine or (lambda: _docker(settings, paths))
    bwrap_backend = make_bwrap or (lambda: _bwrap(settings, paths))
    choice = settings.sandbox.backend
    if choice == "bwrap":
        return bwrap_backend()
    if choice == "docker":
        return engine_backend()
    try:
        engine = engine_backend()
    except SandboxError as engine_error:
        backend = _bwrap_instead(bwrap_backend, engine_error)
        why = engine_error.message
        from jhansi.sandbox.engines import NO_ENGINE_RUNNING

        if why.startswith(NO_ENGINE_RUNNING):
            why = NO_ENGINE_RUNNING  # where it looked is in the record and in `jhansi doctor`
        reporter.step("backend", f"bwrap ({why})")
        backend.selection = f"auto: {engine_error.message}"
        return backend
    image = settings.sandbox.image
    where = f"{engine.engine.description} at {engine.engine.url}"
    try:
        engine.image(image, skip_pull_failed_within=PULL_RETRY_AFTER)
    except SandboxError as image_error:
        from jhansi.sandbox.docker import BWRAP_ALTERNATIVE

        detail = image_error.message
        pulled = f"cannot pull the image {image}: "
        if detail.startswith(pulled):
            detail = "the pull failed: " + detail.removeprefix(pulled)
        why = f"the container engine ({where}) cannot provide the image {image}: {detail}"
        hint = image_error.hint.replace(BWRAP_ALTERNATIVE, "").strip()
        backend = _bwrap_instead(bwrap_backend, SandboxError(why, hint=hint))
        reporter.warning(
            f"{why}; running on bwrap instead (--backend docker insists on the engine, "
            '[sandbox] backend = "bwrap" makes bwrap the choice, or pull or load the image)'
        )
        backend.selection = f"auto: {why}"
        return backend
    engine.selection = f"auto: the container engine ({where}) has the image {image}"
    return engine


def _bwrap_instead(make_bwrap: Callable[[], Backend], engine_error: SandboxError) -> Backend:
    """bubblewrap, since the engine cannot serve (``engine_error``); both reasons if neither."""
    try:
        return make_bwrap()
    except SandboxError as bwrap_error:
        raise SandboxError(
            f"no sandbox backend is usable: {engine_error.message}; {bwrap_error.message}",
            hint=f"{bwrap_error.hint} Or: {engine_error.hint} (`jhansi doctor` checks both.)",
        ) from None


def _bwrap(settings: Settings, paths: Paths) -> Backend:
    from jhansi.sandbox.bwrap import BwrapBackend

    return BwrapBackend.from_settings(
        settings.sandbox.bwrap, settings.sandbox.python, cache_dir=paths.cache
    )


def _docker(settings: Settings, paths: Paths) -> DockerBackend:
    from jhansi.sandbox.docker import DockerBackend

    return DockerBackend.from_settings(settings.sandbox.engine_url, cache_dir=paths.cache)
