"""``jhansi replay RUN_ID``: run a recorded run again, from the ledger alone, and compare.

What a run's records hold is what the replay restores: the code (its blob), the
lock (its blob: the same wheels, by hash, from the environment cache or installed
again from the index), the backend with its limits, the image (by its id) or the
interpreter, the arguments, the variables the user passed (their values are
recorded from this version on: :func:`jhansi.records.env_fields`), and the hosts
and secrets the egress proxy allowed. The replay is an ordinary run
(:class:`~jhansi.runner.Runner`, a :class:`~jhansi.request.RunRequest` built from
the record) in a fresh ephemeral sandbox, recorded in the ledger like any run,
with ``replay_of`` naming the original.

Then the outcome is compared with the recorded one: the exit status, the BLAKE3 of
stdout and stderr (what was kept of each), the files changed (names and hashes), and
what the run ran on (code, lock, environment, image or interpreter). A refused run
(``exec.denied``) replays to a refusal: the recorded lock is checked against the
policy again, and the refusals are compared.

What a replay does not restore (:data:`~jhansi.replay.compare.NOT_RESTORED`): the
project's other files at /work (the ledger keeps the code, not the project), the
named sandbox's home (the replay's is empty), the configuration files (only their
hashes are recorded), the values of variables that look like credentials (by name
or by value), and whatever the network answered.

One module per idea: what a replay loads of a ledger, restores of the run and
trusts of whoever signed it (:mod:`.plan`), running it (:mod:`.run`), and comparing
its outcome with the record (:mod:`.compare`).
"""

from jhansi.replay.compare import Check, ReplayReport
from jhansi.replay.run import default_source, parse_env_flags, replay

__all__ = ["Check", "ReplayReport", "default_source", "parse_env_flags", "replay"]
