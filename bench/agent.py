"""The agent case: new code each run, against the same code run again.

An agent never runs the same script twice: every ``run_python`` call of ``jhansi
mcp``, every ``jhansi.run(code=...)``, every ``echo ... | jhansi run -`` is code
jhansi has not seen. This bench measures what that costs. For each backend
present (bwrap; docker with the test image), in one project directory:

a) **stdlib**: ``jhansi run`` of a new script each run (``print(N * 7)`` with a
   fresh random N, in a file of a new name in the project's directory) against
   the same script run again, with the helper (``jhansi.helper``) as a user gets
   it and with ``JHANSI_HELPER=off``. Target: new/old at most 1.15x. The script
   run again lives in a directory of its own in the project (``same-BACKEND/``):
   a warm run's reused decision is keyed by its script directory's state, which
   the new scripts (and their locks) would change before every run, so beside
   them it would not be the warm repeat it stands for.
b) **numpy**: the same with ``import numpy; print(numpy.arange(N).sum())``. The
   numpy environment is made once before measuring (the only lock and install:
   uv's cache is kept, so it is quick after the first time on a machine); every
   measured run must reuse it. Target: new/old at most 1.15x.
c) **MCP**: ``jhansi mcp`` driven by the MCP SDK's client over stdio, answering
   ``run_python`` with new code each call (stdlib, then numpy), against the same
   kind of new code through ``jhansi run FILE`` (a new file each time) and
   ``jhansi run -`` (the code on stdin), helper on. Per-call medians; no target.

The measurements of one backend are interleaved (so drift hits all alike) and
reported as medians. Every run is checked: exit status 0, status ``succeeded``,
and stdout exactly what its own N gives, so a new script really ran its new
content; a new script's file must not exist before it is written (its content
holds a number no other run used). ``jhansi run`` is called with ``--json`` for
those checks (about 2 ms, the same on both sides), and the numpy runs must say
``dependencies.environment_reused``; the environment cache must not gain an
entry while measuring, which covers the MCP calls too.

jhansi gets a temporary ``JHANSI_HOME`` (the user's ledger, sandboxes and
environments are untouched; uv's cache is shared) and a helper directory of the
bench's own, whose helper is stopped at the end. A failed run or check stops the
bench with its output (exit status 1); figures that miss a target are printed as
FAIL, the exit status stays 0.

Run: ``uv run python bench/agent.py [--runs N] [--backend bwrap|docker]
[--image IMAGE] [--docker-host URL]`` (as root for docker on a rootful engine;
the image must be present). ``--docker-host`` defaults to
``JHANSI_TEST_DOCKER_HOST``, else jhansi finds the engine itself.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_overhead import wait_for_helper

#: new/old, for stdlib and numpy scripts.
TARGET = 1.15
#: A name of this run's own: as root, a sandbox's host uid follows from its name alone
#: (whatever JHANSI_HOME), and each run first kills every process of that uid, so
#: another bench or test using the same name at the same time would kill this one's.
SANDBOX = f"agent-bench-{secrets.token_hex(4)}"


def _say(message: str) -> None:
    """Progress, on stderr (the results go to stdout)."""
    print(f"... {message}", file=sys.stderr, flush=True)


class Code:
    """Scripts and code: each new one has a number no run used before, and its expected output."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.used: set[int] = set()
        self.files = 0

    def _number(self) -> int:
        while True:
            n = 10_000 + secrets.randbelow(990_000)
            if n not in self.used:
                self.used.add(n)
                return n

    def stdlib(self) -> tuple[str, str]:
        """New stdlib-only code and what it prints."""
        n = self._number()
        return f"print({n} * 7)\n", f"{n * 7}\n"

    def numpy(self) -> tuple[str, str]:
        """New numpy code and what it prints."""
        n = self._number()
        return f"import numpy\nprint(numpy.arange({n}).sum())\n", f"{n * (n - 1) // 2}\n"

    def file(self, kind: str, directory: Path | None = None) -> tuple[Path, str]:
        """A new script file (in the project unless ``directory``): a name and content
        never seen before."""
        code, expected = self.stdlib() if kind == "stdlib" else self.numpy()
        self.files += 1
        name = f"agent_{kind}_{self.files:04d}_{secrets.token_hex(4)}.py"
        path = (directory or self.project) / name
        with path.open("x") as handle:  # fails if the name was ever used
            handle.write(code)
        return path, expected


@dataclass
class Runner:
    """``jhansi run --json`` for one backend, checked and timed."""

    base: list[str]
    project: Path
    environment: str | None = None  # the numpy environment every measured run must reuse

    def run(
        self, env: dict[str, str], target: str, expected: str, code: str | None = None
    ) -> tuple[float, dict[str, Any]]:
        """Run ``target`` (a path, or ``-`` with ``code`` on stdin); its time and --json."""
        argv = [*self.base, target]
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            input=code.encode() if code is not None else None,
            capture_output=True,
            env=env,
            cwd=self.project,
            check=False,
        )
        elapsed = time.perf_counter() - start
        stderr = proc.stderr.decode(errors="replace")[-2000:]
        if proc.returncode != 0:
            sys.exit(f"failed (exit {proc.returncode}): {' '.join(argv)}\n{stderr}")
        document: dict[str, Any] = json.loads(proc.stdout)
        if document["status"] != "succeeded" or document["stdout"]["text"] != expected:
            sys.exit(
                f"wrong result of {' '.join(argv)}: status {document['status']}, stdout "
                f"{document['stdout']['text']!r}, expected {expected!r}\n{stderr}"
            )
        deps = document["dependencies"]
        reused = deps["environment_reused"] and deps["environment"] == self.environment
        if self.environment is not None and deps["locked"] and not reused:
            sys.exit(
                f"{' '.join(argv)} did not reuse the numpy environment {self.environment}: "
                f"environment {deps['environment']}, reused {deps['environment_reused']}"
            )
        return elapsed, document


@dataclass
class Series:
    """Times of one kind of run."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median, in seconds."""
        return statistics.median(self.times)


def environments(home: Path) -> list[str]:
    """The environments in jhansi's cache."""
    envs = home / "cache" / "envs"
    return sorted(p.name for p in envs.iterdir()) if envs.is_dir() else []


def measure_scripts(
    backend: str,
    runner: Runner,
    code: Code,
    env_on: dict[str, str],
    env_off: dict[str, str],
    jhansi: str,
    runs: int,
) -> dict[tuple[str, str, str], Series]:
    """a) and b): new against old script, helper on and off; keys (kind, age, helper)."""
    old: dict[str, tuple[Path, str]] = {}
    same = runner.project / f"same-{backend}"
    same.mkdir(mode=0o755)
    for kind in ("stdlib", "numpy"):
        if kind == "numpy":
            _say(f"{backend}: first numpy run (locks and installs numpy; quick with uv's cache)")
        old[kind] = code.file(kind, same)
        _, first = runner.run(env_on, str(old[kind][0]), old[kind][1])
        if kind == "numpy":
            deps = first["dependencies"]
            if deps["environment"] is None:
                sys.exit(f"{backend}: the numpy script got no environment: {deps}")
            runner.environment = deps["environment"]
    wait_for_helper(jhansi, env_on)
    for kind in ("stdlib", "numpy"):  # warm both helper modes and the page cache
        for env in (env_on, env_off):
            runner.run(env, str(old[kind][0]), old[kind][1])
            runner.run(env, *map(str, code.file(kind)))
    series: dict[tuple[str, str, str], Series] = {}
    for i in range(runs):
        _say(f"{backend}: scripts, round {i + 1}/{runs}")
        for kind in ("stdlib", "numpy"):
            for helper, env in (("on", env_on), ("off", env_off)):
                path, expected = code.file(kind)
                elapsed, _ = runner.run(env, str(path), expected)
                series.setdefault((kind, "new", helper), Series()).times.append(elapsed)
                elapsed, _ = runner.run(env, str(old[kind][0]), old[kind][1])
                series.setdefault((kind, "old", helper), Series()).times.append(elapsed)
    return series


def measure_mcp(
    backend: str,
    runner: Runner,
    code: Code,
    env_on: dict[str, str],
    server_argv: list[str],
    log: TextIO,
    runs: int,
) -> dict[tuple[str, str], Series]:
    """c): ``run_python`` against ``jhansi run FILE`` and ``jhansi run -``, new code each time."""
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=server_argv[0], args=server_argv[1:], env=env_on, cwd=runner.project
    )
    series: dict[tuple[str, str], Series] = {}

    async def call(session: Any, kind: str) -> float:
        source, expected = code.stdlib() if kind == "stdlib" else code.numpy()
        start = time.perf_counter()
        result: Any = await session.call_tool(
            "run_python", {"code": source, "sandbox": SANDBOX}, read_timeout_seconds=600
        )
        elapsed = time.perf_counter() - start
        data = result.structured_content
        if (
            result.is_error
            or not isinstance(data, dict)
            or data["status"] != "succeeded"
            or data["stdout_tail"] != expected
            or data["backend"] != backend
        ):
            sys.exit(f"{backend}: run_python failed: {result.content}, expected {expected!r}")
        return elapsed

    def stdin(kind: str) -> float:
        source, expected = code.stdlib() if kind == "stdlib" else code.numpy()
        return runner.run(env_on, "-", expected, source)[0]

    async def main() -> None:
        async with (
            stdio_client(params, errlog=log) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            for kind in ("stdlib", "numpy"):  # the server's first calls import the run path
                await call(session, kind)
                stdin(kind)
            for i in range(runs):
                _say(f"{backend}: MCP, round {i + 1}/{runs}")
                for kind in ("stdlib", "numpy"):
                    series.setdefault((kind, "mcp"), Series()).times.append(
                        await call(session, kind)
                    )
                    path, expected = code.file(kind)
                    elapsed, _ = runner.run(env_on, str(path), expected)
                    series.setdefault((kind, "file"), Series()).times.append(elapsed)
                    series.setdefault((kind, "stdin"), Series()).times.append(stdin(kind))

    anyio.run(main)
    return series


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def main() -> None:
    """Measure each backend that is present and print the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--backend", action="append", choices=("bwrap", "docker"), help="repeatable; default both"
    )
    parser.add_argument(
        "--image", default=os.environ.get("JHANSI_TEST_IMAGE", "jhansi-test-python:bookworm")
    )
    parser.add_argument("--docker-host", default=os.environ.get("JHANSI_TEST_DOCKER_HOST"))
    args = parser.parse_args()
    backends = args.backend or ["bwrap", "docker"]
    jhansi = str(Path(sys.executable).with_name("jhansi"))
    scratch = Path(tempfile.mkdtemp(prefix="jhansi-bench-agent-"))
    scratch.chmod(0o755)
    home = scratch / "jhansi-home"
    env_on = {
        **os.environ,
        "JHANSI_HOME": str(home),
        "JHANSI_HELPER": "on",
        "JHANSI_HELPER_DIR": str(scratch / "helper"),  # this bench's helper, stopped at its end
    }
    env_on.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with compiled bytecode, as installed
    if args.docker_host:
        env_on["JHANSI_SANDBOX_ENGINE_URL"] = args.docker_host
    env_off = {**env_on, "JHANSI_HELPER": "off"}
    project = scratch / "project"
    project.mkdir()
    project.chmod(0o755)  # jhansi refuses a world-writable project
    (project / "pyproject.toml").write_text('[project]\nname = "agent-bench"\n')
    code = Code(project)
    scripts: dict[str, dict[tuple[str, str, str], Series]] = {}
    agent: dict[str, dict[tuple[str, str], Series]] = {}
    try:
        for backend in backends:
            flags = ["--backend", backend, "--sandbox", SANDBOX]
            if backend == "bwrap" and not shutil.which("bwrap"):
                print("bwrap:  not installed, skipped")
                continue
            if backend == "docker":
                docker_env = {**os.environ}
                if args.docker_host:
                    docker_env["DOCKER_HOST"] = args.docker_host
                present = shutil.which("docker") is not None and (
                    subprocess.run(
                        ["docker", "image", "inspect", args.image],
                        capture_output=True,
                        env=docker_env,
                        check=False,
                    ).returncode
                    == 0
                )
                if not present:
                    print(f"docker: no engine or no image {args.image}, skipped")
                    continue
                flags += ["--image", args.image]
            runner = Runner([jhansi, "run", "--json", *flags], project)
            scripts[backend] = measure_scripts(
                backend, runner, code, env_on, env_off, jhansi, args.runs
            )
            before = environments(home)
            with (scratch / f"mcp-{backend}.log").open("w") as log:
                agent[backend] = measure_mcp(
                    backend, runner, code, env_on, [jhansi, "mcp", *flags], log, args.runs
                )
            if environments(home) != before:
                sys.exit(f"{backend}: an environment was built while measuring: {before}")
        report(scripts, agent, args.runs)
    finally:
        subprocess.run([jhansi, "helper", "stop"], env=env_on, capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def report(
    scripts: dict[str, dict[tuple[str, str, str], Series]],
    agent: dict[str, dict[tuple[str, str], Series]],
    runs: int,
) -> None:
    """Print the two tables."""
    print(f"\nNew script against the same script again (medians of {runs} runs, ms)")
    print(f"{'backend':8} {'script':7} {'helper':6} {'new':>6} {'old':>6} {'new/old':>8}  target")
    for backend, series in scripts.items():
        for kind in ("stdlib", "numpy"):
            for helper in ("on", "off"):
                new = series[(kind, "new", helper)].median
                old = series[(kind, "old", helper)].median
                ratio = new / old
                verdict = "PASS" if ratio <= TARGET else "FAIL"
                print(
                    f"{backend:8} {kind:7} {helper:6} {_ms(new):>6} {_ms(old):>6} "
                    f"{ratio:7.2f}x  <= {TARGET}x {verdict}"
                )
    print(f"\nNew code each call, per call (medians of {runs} calls, ms; helper on)")
    print(f"{'backend':8} {'code':7} {'mcp run_python':>15} {'run FILE':>9} {'run -':>6} mcp/FILE")
    for backend, calls in agent.items():
        for kind in ("stdlib", "numpy"):
            mcp = calls[(kind, "mcp")].median
            path = calls[(kind, "file")].median
            stdin = calls[(kind, "stdin")].median
            print(
                f"{backend:8} {kind:7} {_ms(mcp):>15} {_ms(path):>9} {_ms(stdin):>6} "
                f"{mcp / path:7.2f}x"
            )


if __name__ == "__main__":
    main()
