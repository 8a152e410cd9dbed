"""The runner: one ``jhansi run`` composed from its steps.

One module per step: reading and checking the script and finding its project
(:mod:`.script`), choosing the backend (:mod:`.backend`), the dependencies, cold
or warm (:mod:`.dependencies`), the sandbox's spec and mounts (:mod:`.spec`), the
``--rw`` copy of the project (:mod:`.rw`), the egress proxy (:mod:`.egress`), the
changes and the ``exec.end`` record (:mod:`.finish`), and the :class:`Runner` that
composes them (:mod:`.pipeline`). :class:`RunRequest` and :class:`RunResult` are
defined below the runner (:mod:`jhansi.records` reads them too) and importable
from here as they always were.
"""

from jhansi.request import RunRequest
from jhansi.result import RunResult
from jhansi.runner.pipeline import Runner

__all__ = ["RunRequest", "RunResult", "Runner"]
