"""The egress proxy under load, through the real ``jhansi run`` on bwrap (loopback only).

Two runs of ``load_probe.py`` against real HTTPS servers on loopback: ``a`` has the
key bound (intercepted), ``c`` is allowed (tunnelled).

* ``connections``: a slowloris of 50 clients, two connections whose TLS never starts,
  then 300 connections at once. The proxy cuts each stalled head after its ``head``
  deadline (10 s) and each stalled handshake after ``handshake`` (10 s), serves real
  requests meanwhile, keeps 256 connections and refuses the rest with 503, counted
  in one egress event.
* ``bulk``: a 1 GiB response through the tunnel, big responses and requests through
  the intercepted host (scrubbed on the way), generated on the fly by the server; the
  jhansi process (where the proxy runs, in a thread) is sampled from ``/proc`` and its
  RSS may grow by at most 200 MiB.

Each run stops by itself (the probe bounds its waits) and takes well under 30 s here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import prepare_jhansi_home, require_backend
from tests.security.egress.conftest import (
    KEY_NAME,
    _shared_base,
    clean_env,
    find_secret,
    run_cli,
)
from tests.tls_server import TLSServer

PROBE = Path(__file__).with_name("load_probe.py")
MiB = 1024 * 1024
GiB = 1024 * MiB
# Sized for CI's two cores (about 25 s together): through the tunnel ~100 MB/s here, through
# the intercepted host (TLS twice, h11, scrubbing) ~20 MB/s, bounded by the Python server and
# client on the same cores. 2 GiB + 512 MiB down and 1 GiB + 256 MiB up took 71 s, +7 MiB.
SIZES = {
    "tunnel_get": 1 * GiB,
    "intercepted_get": 128 * MiB,
    "tunnel_post": 512 * MiB,
    "intercepted_post": 128 * MiB,
}
RSS_GROWTH_LIMIT = 200 * MiB


@dataclass
class Load:
    base: Path
    home: Path
    project: Path
    env: dict[str, str]
    key: str
    a: TLSServer
    c: TLSServer

    def config(self, **extra: Any) -> str:
        return json.dumps(
            {"a": self.a.port, "c": self.c.port, "key": KEY_NAME, **extra},
        )

    def argv(self, mode: str, config: str) -> list[str]:
        return [
            sys.executable, "-m", "jhansi", "run", "--json", "--sandbox", f"load-{mode}",
            "--secret", f"{KEY_NAME}@localhost:{self.a.port}",
            "--allow-host", f"localhost:{self.c.port}",
            "load_probe.py", mode, config,
        ]  # fmt: skip

    def sandbox_home(self, mode: str) -> Path | None:
        found = list((self.home / "data" / "sandboxes").glob(f"load-{mode}*/home"))
        return found[0] if found else None


@pytest.fixture(scope="module")
def load(request: pytest.FixtureRequest) -> Iterator[Load]:
    require_backend(request, "bwrap")
    base = _shared_base("bwrap")
    servers: list[TLSServer] = []
    try:
        a, c = TLSServer(base / "a"), TLSServer(base / "c")
        servers += [a, c]
        home = base / "home"
        home.mkdir()
        prepare_jhansi_home("bwrap", home)
        upstream = base / "upstream-ca.pem"
        upstream.write_bytes(a.ca_path.read_bytes() + c.ca_path.read_bytes())
        project = base / "project"
        project.mkdir()
        (project / "jhansi.toml").write_text(
            f'[network]\nupstream_ca = "{upstream}"\nallow_private = ["127.0.0.0/8", "::1/128"]\n'
        )
        shutil.copy(PROBE, project / "load_probe.py")
        key = "sk-load-" + "0123456789abcdef" * 2
        env = clean_env(base, home, "bwrap") | {KEY_NAME: key, "JHANSI_HELPER": "off"}
        # Its network keys need trust: the user gives it, as a user would.
        trusted = run_cli("trust", str(project / "jhansi.toml"), env=env, cwd=project)
        assert trusted.returncode == 0, trusted.stderr
        yield Load(base, home, project, env, key, a, c)
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(base, ignore_errors=True)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.bwrap
def test_slowloris_and_a_burst_of_connections_are_bounded(load: Load) -> None:
    started = time.monotonic()
    done = subprocess.run(
        load.argv("connections", load.config()),
        capture_output=True, text=True, env=load.env, cwd=load.project, timeout=120,
        check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    home = load.sandbox_home("connections")
    assert home is not None
    probe = json.loads((home / "load-connections.json").read_text())
    # Every stalled client was cut by the proxy: heads after 10 s, handshakes after 10 s.
    assert probe["slowloris_open"] == 0, probe
    closed = probe["slowloris_closed_after"]
    assert len(closed) == 52
    assert min(closed) >= 9, closed
    assert max(closed) <= 16, closed
    # Real requests went through meanwhile and afterwards.
    assert probe["meanwhile"][0] == 200, probe["meanwhile"]
    assert probe["after"][0] == 200, probe["after"]
    # 300 at once: 256 kept, 44 refused cleanly with 503, counted in one event.
    assert probe["burst"] == {"200": 256, "503": 44}, probe["burst"]
    record = json.loads(done.stdout)
    assert record["status"] == "succeeded"
    capped = [e for e in record["egress"] if "open at once" in e["reason"]]
    assert [(e["decision"], e["status"], e["reason"]) for e in capped] == [
        ("refused", 503, "44 connections refused: more than 256 open at once")
    ]
    assert took < 60, took


@pytest.mark.bwrap
def test_gigabytes_through_the_proxy_in_bounded_memory(load: Load) -> None:
    config = load.config(sizes=SIZES, tunnel_ca=load.c.ca_path.read_text())
    started = time.monotonic()
    proc = subprocess.Popen(
        load.argv("bulk", config),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=load.env,
        cwd=load.project,
    )  # fmt: skip
    samples: list[tuple[float, int, bool]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            home = load.sandbox_home("bulk")
            begun = home is not None and (home / "load-start").exists()
            ended = home is not None and (home / "load-done").exists()
            try:
                samples.append((time.monotonic(), _rss(proc.pid), begun and not ended))
            except (OSError, ValueError):
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        stop.set()
        proc.kill()
        sampler.join()
    took = time.monotonic() - started
    assert proc.returncode == 0, stderr[-3000:]
    home = load.sandbox_home("bulk")
    assert home is not None
    probe = json.loads((home / "load-bulk.json").read_text())
    for name, size in SIZES.items():
        status, count, _ = probe[name]
        assert status == 200, (name, probe[name])
        assert int(count) == size, (name, probe[name])
    loading = [rss for _, rss, busy in samples if busy]
    before = [rss for _, rss, busy in samples if not busy and rss]
    assert len(loading) > 20, "the sampler missed the transfers"
    baseline = min(loading[:5])
    peak = max(loading)
    print(
        f"bulk: {took:.1f} s; RSS baseline {baseline / MiB:.0f} MiB, peak "
        f"{peak / MiB:.0f} MiB (+{(peak - baseline) / MiB:.0f}); before {max(before) / MiB:.0f}"
        f" MiB; transfers (status, bytes, s): {probe}"
    )
    assert peak - baseline < RSS_GROWTH_LIMIT
    record = json.loads(stdout)
    tunnels = [e for e in record["egress"] if e["decision"] == "tunnelled"]
    assert max(e["bytes_down"] for e in tunnels) >= SIZES["tunnel_get"]
    assert max(e["bytes_up"] for e in tunnels) >= SIZES["tunnel_post"]
    bound = [e for e in record["egress"] if e["decision"] == "intercepted"]
    assert sorted(e["bytes_down"] for e in bound)[-1] == SIZES["intercepted_get"]
    assert sorted(e["bytes_up"] for e in bound)[-1] == SIZES["intercepted_post"]
    assert find_secret(stdout, load.key) == []
