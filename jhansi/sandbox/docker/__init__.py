"""The docker backend: sandboxes as containers of a Docker Engine API endpoint.

One module per idea: who the sandbox is on the host (:mod:`.identity`), the
hardened container and how each limit is enforced (:mod:`.container`), the labels
that let crashed runs be pruned (:mod:`.labels`), how a container ended
(:mod:`.outcome`), pulls that failed (:mod:`.pulls`), and the backend that runs
and streams it (:mod:`.backend`). The engine itself is looked for at the
endpoints of :mod:`jhansi.sandbox.endpoints`, found and described by
:mod:`jhansi.sandbox.engines`, and talked to through
:mod:`jhansi.sandbox.engine_client`.
"""

from jhansi.sandbox.docker.backend import DockerBackend
from jhansi.sandbox.docker.outcome import RUNTIME_ENDED
from jhansi.sandbox.docker.pulls import BWRAP_ALTERNATIVE

__all__ = ["BWRAP_ALTERNATIVE", "RUNTIME_ENDED", "DockerBackend"]
