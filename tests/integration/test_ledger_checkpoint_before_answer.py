"""A run's checkpoint is signed before the command answers, or the command fails.

Written as an outsider's attack on a checkpoint signed after the answer (tried, and
reverted for this). Real: the console path, bwrap, the ledger files; only the
signing's failure is made (a patched ``sign_head`` raising ENOSPC), as a full disk
cannot be arranged for the signing alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.integration.test_helper import jhansi


def _lines(directory: Path) -> list[bytes]:
    return (directory / "ledger.jsonl").read_bytes().splitlines(keepends=True)


def _head_seq(directory: Path) -> int:
    return int(json.loads((directory / "head.json").read_text())["seq"])


def _verify(env: dict[str, str], cwd: Path, directory: Path) -> tuple[int, dict]:
    done = jhansi(["ledger", "verify", "--ledger", str(directory), "--json"], env, cwd)
    return done.returncode, json.loads(done.stdout or "{}")


# A `jhansi run` whose signing of the checkpoint fails (ENOSPC, EIO) once the
# ledger exists: what the command says about it, and what `verify` says after.
_FAILING_SIGN = """
import errno, sys
import jhansi.ledger.store as store
def sign_head(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
store.sign_head = sign_head
import jhansi.cli
jhansi.cli.main(sys.argv[1:])
"""


def test_a_checkpoint_that_cannot_be_signed_fails_the_run(
    tmp_path: Path,
) -> None:
    """A checkpoint that cannot be signed makes `jhansi run` fail (exit 5): its
    records are covered by no signature, so whoever can write the ledger (no key
    needed) could cut the run off and `verify` would find a clean ledger. Signed
    after the answer, that failure went to the debug log only and the run had been
    reported done."""
    import subprocess
    import sys

    ledger = tmp_path / "ledger"
    env = {
        **os.environ,
        "JHANSI_LEDGER": str(ledger),
        "JHANSI_SANDBOX_BACKEND": "bwrap",
        "JHANSI_HELPER": "off",
    }
    tmp_path.chmod(0o755)
    (tmp_path / "ok.py").write_text("print('paid 100 to mallory')\n")
    first = jhansi(["run", "-q", "ok.py"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    before = _lines(ledger)
    done = subprocess.run(
        [sys.executable, "-c", _FAILING_SIGN, "run", "-q", "ok.py"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    after = _lines(ledger)
    assert len(after) == len(before) + 2, done.stderr
    unsigned = _head_seq(ledger) < len(after) - 1
    assert unsigned  # the failure above
    assert done.returncode == 5, done.stderr
    said = done.returncode != 0 or "ledger" in done.stderr.lower()
    # Cut the run off the end (no key needed), then verify.
    (ledger / "ledger.jsonl").write_bytes(b"".join(before))
    code, report = _verify(env, tmp_path, ledger)
    detected = code != 0 or bool(report.get("warnings"))
    assert said or detected, (
        f"`jhansi run` exited {done.returncode} with stderr {done.stderr!r} although its "
        "checkpoint was never signed, and after its records were cut off `jhansi ledger "
        f"verify` exits {code} with no finding: the run is erased without a trace"
    )
