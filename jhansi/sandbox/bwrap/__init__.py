"""The bwrap backend: a :class:`~jhansi.sandbox.interface.SandboxSpec` run by bubblewrap.

One module per idea: finding the binary and what it can do (:mod:`.binary`), the
host interpreter the sandbox runs (:mod:`.interpreter`), the host's root the
sandbox sees (:mod:`.root`), bwrap's options (:mod:`.options`) and seccomp filter
(:mod:`.seccomp`), who the sandbox is on the host (:mod:`.user`), the gate the
command waits at while the run is recorded (:mod:`.gate`), and the backend that
runs it all (:mod:`.backend`). The cgroup and rlimit enforcement is
:mod:`jhansi.sandbox.limits`.
"""

from jhansi.sandbox.bwrap.backend import BwrapBackend

__all__ = ["BwrapBackend"]
