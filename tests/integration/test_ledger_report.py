"""``jhansi ledger report`` of runs recorded by real ``jhansi run``s, loaded in chromium.

The runs (four, on bubblewrap, recorded once for the module): a run with a prompt and
a model that writes a file; a script whose name, code, prompt and output carry HTML,
``javascript:`` links and terminal escapes, and which fails; a refusal (an import no
package provides); and a run in a second named sandbox. Each report is loaded in
Debian's chromium (headless, ``tests/browser.py``), and the tests read the DOM it
built after the page's own script ran: what an auditor's browser would show.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import browser
from tests.conftest import absent, run_jhansi

pytestmark = [pytest.mark.bwrap, pytest.mark.browser]

PAYLOAD_NAME = 'x"><svg onload=alert(1)>.py'
PAYLOAD_CODE = r"""# <script>alert(1)</script> </textarea> <img src=x onerror=alert(1)>
# <a href="javascript:alert(1)">click</a>
import sys
print("<script>alert(1)</script></textarea>")
print("<img src=x onerror=alert(1)><a href='javascript:alert(1)'>click</a>")
print("\x1b[2J\x1b]8;;https://example.invalid/\x07link\x1b]8;;\x07 \u202ereversed")
sys.exit(3)
"""
PAYLOAD_PROMPT = "<script>alert(2)</script> write </textarea> code"
PAYLOAD_MODEL = '"><img src=x onerror=alert(3)>'


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium: required in CI (CI or JHANSI_REQUIRE_ENGINES=1), else skip."""
    found = browser.chromium()
    if found is None:
        reason = "chromium is not installed (scripts/provision.sh installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"required in CI but absent: {reason}", pytrace=False)
        absent(reason)
    return found


@dataclass(frozen=True)
class Recorded:
    """The module's ledger, the JHANSI_HOME whose key signed it, and its runs."""

    ledger: Path
    home: Path
    hello: str
    payload: str
    refused: str
    other: str

    @property
    def env(self) -> dict[str, str]:
        """What makes ``jhansi`` use this ledger and this machine's key."""
        return {"JHANSI_HOME": str(self.home), "JHANSI_LEDGER": str(self.ledger)}


def _run_id(proc: object) -> str:
    stdout = getattr(proc, "stdout", "")
    return str(json.loads(stdout)["run_id"])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """Four runs recorded by real ``jhansi run`` on bubblewrap (shared by the module)."""
    if shutil.which("bwrap") is None:
        absent("bubblewrap is not installed (apt-get install bubblewrap)")
    base = tmp_path_factory.mktemp("report")
    base.chmod(0o755)
    project = base / "project"
    project.mkdir()
    project.chmod(0o755)
    (project / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    (project / "hello.py").write_text(
        "from pathlib import Path\nPath('total.txt').write_text(str(sum(range(1000))))\n"
        "print('total', sum(range(1000)))\n"
    )
    (project / PAYLOAD_NAME).write_text(PAYLOAD_CODE)
    (project / "made_up.py").write_text("import quantumflux_helpers\n")
    home, ledger = base / "home", base / "ledger"
    env = {
        "JHANSI_HOME": str(home),
        "JHANSI_LEDGER": str(ledger),
        "JHANSI_SANDBOX_BACKEND": "bwrap",
    }
    hello = run_jhansi(
        "run", "--json", "--prompt", "sum the numbers below 1000", "--model", "model-1",
        "hello.py", env=env, cwd=project,
    )  # fmt: skip
    assert hello.returncode == 0, hello.stderr
    payload = run_jhansi(
        "run", "--json", "--prompt", PAYLOAD_PROMPT, "--model", PAYLOAD_MODEL, PAYLOAD_NAME,
        env=env, cwd=project,
    )  # fmt: skip
    assert payload.returncode == 3, payload.stderr
    refused = run_jhansi("run", "--json", "made_up.py", env=env, cwd=project)
    assert refused.returncode == 7, refused.stderr
    other = run_jhansi("run", "--json", "--sandbox", "second", "hello.py", env=env, cwd=project)
    assert other.returncode == 0, other.stderr
    denied = [
        json.loads(line)["body"]["run_id"]
        for line in (ledger / "ledger.jsonl").read_text().splitlines()
        if '"exec.denied"' in line
    ]
    assert len(denied) == 1  # a refusal's --json names no run: the ledger does
    return Recorded(ledger, home, _run_id(hello), _run_id(payload), denied[0], _run_id(other))


def _report(
    recorded: Recorded, out: Path, *args: str, code: int = 0, ledger: Path | None = None
) -> dict[str, object]:
    proc = run_jhansi(
        "ledger", "report", "--json", "-o", str(out), "--ledger", str(ledger or recorded.ledger),
        *args, env=recorded.env,
    )  # fmt: skip
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    summary = json.loads(proc.stdout)
    assert isinstance(summary, dict)
    return summary


@pytest.fixture(scope="module")
def full_report(recorded: Recorded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of every run, outputs included."""
    out = tmp_path_factory.mktemp("full") / "report.html"
    summary = _report(recorded, out, "--include-output")
    assert summary["runs"] == 4
    return out


def _banner(dom: browser.Element) -> browser.Element:
    (banner,) = dom.find_all("header", id="verification")
    return banner


def test_the_payload_creates_no_element_and_is_shown_as_text(
    chromium: str, recorded: Recorded, full_report: Path
) -> None:
    document = browser.dump_dom(full_report)
    dom = browser.parse(document)
    tags = [e.tag for e in dom.iter()]
    # The page's own script ran (its CSP hash is right), and it is the only script.
    (html,) = dom.find_all("html")
    assert html.attrs.get("data-js") == "on"
    assert tags.count("script") == 1
    for tag in ("img", "svg", "textarea", "iframe", "object", "embed", "form", "base"):
        assert tag not in tags, tag
    for element in dom.iter():
        assert not any(name.startswith("on") for name in element.attrs), element.attrs
        if "href" in element.attrs:  # the only links: the page's own anchors
            assert (element.attrs["href"] or "").startswith("#run-"), element.attrs
    (section,) = [s for s in dom.find_all("section") if recorded.payload in s.text]
    text = section.text
    assert "<script>alert(1)</script></textarea>" in text
    assert "<img src=x onerror=alert(1)><a href='javascript:alert(1)'>click</a>" in text
    assert PAYLOAD_PROMPT in text
    assert PAYLOAD_MODEL in text
    assert PAYLOAD_NAME in text
    # The output: terminal escapes and the bidirectional override are shown, not
    # passed through.
    (stdout,) = [p.text for p in section.find_all("pre") if p.text.startswith("<script>alert(1)")]
    assert stdout == (
        "<script>alert(1)</script></textarea>\n"
        "<img src=x onerror=alert(1)><a href='javascript:alert(1)'>click</a>\n"
        "\\x1b[2J\\x1b]8;;https://example.invalid/\\x07link\\x1b]8;;\\x07 \\u202ereversed\n"
    )
    assert "\x1b" not in document
    assert "\u202e" not in document
    # The code, line by line (numbered by its list).
    (code,) = [o for o in section.find_all("ol") if "code" in (o.attrs.get("class") or "")]
    assert len(code.find_all("li")) == PAYLOAD_CODE.count("\n")


def test_a_verifying_ledger_gets_a_green_banner_on_top(
    chromium: str, recorded: Recorded, full_report: Path, tmp_path: Path
) -> None:
    dom = browser.parse(browser.dump_dom(full_report))
    banner = _banner(dom)
    assert banner.attrs["data-state"] == "ok", banner.text
    assert f"ledger verifies: {recorded.ledger}" in banner.text
    assert "pinned (this machine's key)" in banner.text
    # The banner is the first thing in the body: seen without scrolling.
    (body,) = dom.find_all("body")
    assert body.children[0] is banner
    shot = browser.screenshot(full_report, tmp_path / "top.png")
    assert shot.read_bytes().startswith(browser.PNG_MAGIC)


def test_a_tampered_ledger_cannot_produce_a_green_report(
    chromium: str, recorded: Recorded, tmp_path: Path
) -> None:
    copy = tmp_path / "ledger"
    shutil.copytree(recorded.ledger, copy)
    lines = (copy / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    index = next(
        i
        for i, line in enumerate(lines)
        if b'"exec.end"' in line and recorded.payload.encode() in line
    )
    # The failed run made to look like a success (exit 3 -> 0), hash left as it was.
    edited = lines[index].replace(b'"exit_code":3', b'"exit_code":0')
    edited = edited.replace(b'"status":"failed"', b'"status":"succeeded"')
    assert edited != lines[index]
    lines[index] = edited
    (copy / "ledger.jsonl").write_bytes(b"".join(lines))
    out = tmp_path / "report.html"
    summary = _report(recorded, out, ledger=copy, code=5)
    assert summary["status"] == "invalid"
    verification = summary["verification"]
    assert isinstance(verification, dict)
    assert verification["state"] == "fail"

    verify = run_jhansi("ledger", "verify", "--ledger", str(copy), env=recorded.env)
    assert verify.returncode == 5
    first = next(line for line in verify.stdout.splitlines() if line.startswith("first failure"))
    dom = browser.parse(browser.dump_dom(out))
    banner = _banner(dom)
    assert banner.attrs["data-state"] == "fail"
    assert f"ledger does NOT verify: {copy}" in banner.text
    assert first in banner.text  # the same words as `ledger verify`
    for element in dom.iter():
        classes = (element.attrs.get("class") or "").split()
        assert "state-ok" not in classes
        assert "verified-ledger" not in classes
        assert element.attrs.get("data-state") in (None, "fail")


def test_the_timeline_filters_by_status_sandbox_and_search(
    chromium: str, recorded: Recorded, full_report: Path
) -> None:
    def shown(fragment: str) -> tuple[list[str], list[str]]:
        dom = browser.parse(browser.dump_dom(full_report, fragment))
        rows = [r for r in dom.find_all("tr") if "data-status" in r.attrs]
        kept = [r.attrs["data-status"] or "" for r in rows if "hidden" not in r.attrs]
        sections = [
            s.attrs["id"] or ""
            for s in dom.find_all("section")
            if "run" in (s.attrs.get("class") or "") and "hidden" not in s.attrs
        ]
        assert len(rows) == 4
        return kept, sections

    every = (["succeeded", "failed", "denied", "succeeded"], [f"run-{n}" for n in (1, 2, 3, 4)])
    assert shown("") == every
    assert shown("status=denied") == (["denied"], ["run-3"])
    assert shown("sandbox=second") == (["succeeded"], ["run-4"])
    assert shown("q=" + recorded.payload[-8:]) == (["failed"], ["run-2"])
    assert shown("q=model-1") == (["succeeded"], ["run-1"])

    # JavaScript off, the DOM is the file as written (chromium's --dump-dom needs
    # scripts on to print it): no filter controls, every row and section shown.
    dom = browser.parse(full_report.read_text())
    (filters,) = dom.find_all("div", id="filters")
    assert "hidden" in filters.attrs
    assert not [e for e in dom.iter() if "hidden" in e.attrs and e.tag in ("tr", "section")]


def test_each_run_shows_what_was_recorded(
    chromium: str, recorded: Recorded, full_report: Path
) -> None:
    dom = browser.parse(browser.dump_dom(full_report))
    sections = {s.attrs["id"]: s.text for s in dom.find_all("section")}
    hello = sections["run-1"]
    assert "sum the numbers below 1000" in hello
    assert "model-1" in hello
    assert "total.txt" in hello  # the file it wrote
    assert "total 499500" in hello  # its output (--include-output)
    assert "cgroup" in hello or "bwrap" in hello  # how the limits were enforced
    refused = sections["run-3"]
    assert "quantumflux_helpers" in refused
    assert "denied" in refused
    assert recorded.refused in refused


def test_outputs_are_left_out_by_default_and_runs_can_be_chosen(
    chromium: str, recorded: Recorded, tmp_path: Path
) -> None:
    out = tmp_path / "some.html"
    out.write_text("old")
    out.chmod(0o644)
    summary = _report(recorded, out, "--run", recorded.hello, "--run", recorded.payload[:18])
    assert summary["run_ids"] == [recorded.hello, recorded.payload]
    assert summary["include_output"] is False
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = browser.parse(browser.dump_dom(out)).text
    assert "total 499500" not in text
    assert "left out of this report (--no-output)" in text
    only = _report(recorded, tmp_path / "b.html", "--sandbox", "second")
    assert only["run_ids"] == [recorded.other]
    none = _report(recorded, tmp_path / "c.html", "--until", "2000-01-01")
    assert none["runs"] == 0


def test_the_report_refuses_a_terminal_and_a_device(recorded: Recorded, tmp_path: Path) -> None:
    import pty
    import subprocess
    import sys

    device = run_jhansi("ledger", "report", "-o", "/dev/null", env=recorded.env)
    assert device.returncode == 2
    assert "not a regular file" in device.stderr
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    linked = run_jhansi("ledger", "report", "-o", str(link), env=recorded.env)
    assert linked.returncode == 2
    assert not (tmp_path / "elsewhere.html").exists()
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jhansi", "ledger", "report"],
            stdout=follower,
            stderr=subprocess.PIPE,
            env={**os.environ, **recorded.env},
            timeout=60,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    assert b"-o report.html" in proc.stderr


@pytest.fixture
def fixture_home(tmp_path: Path) -> dict[str, str]:
    """A JHANSI_HOME with no signing key of its own (as on an auditor's machine)."""
    return {"JHANSI_HOME": str(tmp_path / "auditor-home")}


def test_the_ledger_recorded_by_0_1_0_is_reported(
    chromium: str, tmp_path: Path, fixture_home: dict[str, str]
) -> None:
    records = [
        json.loads(line)
        for line in (browser.FIXTURE_LEDGER / "ledger.jsonl").read_text().splitlines()
    ]
    run_ids = list(dict.fromkeys(r["body"]["run_id"] for r in records if "run_id" in r["body"]))
    assert len(run_ids) == 8

    # Its own key given: it verifies, green.
    keyed = browser.report_fixture(tmp_path / "keyed", env=fixture_home)
    dom = browser.parse(browser.dump_dom(keyed))
    assert _banner(dom).attrs["data-state"] == "ok"
    sections = [s for s in dom.find_all("section") if "run" in (s.attrs.get("class") or "")]
    assert [next(r for r in run_ids if r in s.text) for s in sections] == run_ids
    text = dom.text
    assert "PYSEC-2018-28" in text
    assert "MIT" in text
    assert "cannot pull the image" in text  # a refusal, with its reason

    # No key given on a machine without one: signatures checked, the key not pinned.
    unkeyed = browser.report_fixture(tmp_path / "unkeyed", key=False, env=fixture_home)
    banner = _banner(browser.parse(browser.dump_dom(unkeyed)))
    assert banner.attrs["data-state"] == "warn"
    assert "key-unpinned" in banner.text
    assert "not pinned" in banner.text

    # A machine with a key of its own trusts only that one: the 0.1.0 key is untrusted.
    home = tmp_path / "own-home"
    assert run_jhansi("ledger", "key", env={"JHANSI_HOME": str(home)}).returncode == 0
    ledger = tmp_path / "unkeyed" / "ledger-0.1.0"
    out = tmp_path / "own.html"
    proc = run_jhansi(
        "ledger", "report", "--ledger", str(ledger), "-o", str(out),
        env={"JHANSI_HOME": str(home)},
    )  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    banner = _banner(browser.parse(browser.dump_dom(out)))
    assert banner.attrs["data-state"] == "fail"
    assert "untrusted-key" in banner.text


def test_the_readme_screenshot_is_made_by_this_code(
    chromium: str, tmp_path: Path, fixture_home: dict[str, str]
) -> None:
    shot = browser.fixture_screenshot(tmp_path / "ledger-report.png", tmp_path, env=fixture_home)
    data = shot.read_bytes()
    assert data.startswith(browser.PNG_MAGIC)
    assert len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == browser.WINDOW
    assert browser.DOCS_SCREENSHOT.read_bytes().startswith(browser.PNG_MAGIC)
