"""Labels on jhansi's containers, and pruning those whose owner died.

Crashed runs leave containers behind; each carries the owner's pid, the pid's
start time and the host name as labels, and :func:`prune_containers` (called at
the start of every run, one filtered list call) removes those whose owner is
gone.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Final

from jhansi.sandbox.engine_client import EngineClient

LABEL_RUN_ID: Final = "jhansi.run-id"
LABEL_OWNER_PID: Final = "jhansi.owner-pid"
LABEL_OWNER_START: Final = "jhansi.owner-start"
"""The owner's start time (clock ticks since boot), so that a reused pid is not mistaken
for the owner."""
LABEL_OWNER_HOST: Final = "jhansi.owner-host"


def owner_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ("" when it is not running)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = raw.rsplit(")", 1)[-1].split()
    # fields[0] is the state (field 3); starttime is field 22.
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return ""
    return fields[19]


def owner_labels() -> dict[str, str]:
    """The labels that let :func:`prune_containers` tell whether a run's owner is alive."""
    pid = os.getpid()
    return {
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_START: owner_start(pid),
        LABEL_OWNER_HOST: socket.gethostname(),
    }


def container_name(run_id: str) -> str:
    """A container name for the run: its id made safe, and random so that names never clash."""
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", run_id).strip("-.") or "run"
    return f"jhansi-{slug[:40]}-{os.urandom(3).hex()}"


def prune_containers(client: EngineClient) -> int:
    """Remove the containers of this host's jhansi runs whose owner process is gone;
    return how many."""
    host = socket.gethostname()
    removed = 0
    for container in client.containers(labels=[LABEL_OWNER_PID, f"{LABEL_OWNER_HOST}={host}"]):
        labels = container.get("Labels") or {}
        if labels.get(LABEL_OWNER_HOST) != host:
            continue
        try:
            pid = int(labels.get(LABEL_OWNER_PID, ""))
        except ValueError:
            continue
        start = owner_start(pid)
        recorded = labels.get(LABEL_OWNER_START, "")
        if start and (not recorded or recorded == start):
            continue  # the owner is alive
        client.container_remove(str(container["Id"]), force=True)
        removed += 1
    return removed
