"""Debian's chromium, headless, for the ``jhansi ledger report`` tests; and the README's screenshot.

Each call starts a fresh browser with its own new profile directory, no network of its
own making (no background networking, updates, sync or QUIC) and the flags a root
process needs here (``--no-sandbox``: chromium's own sandbox cannot start as root).
It loads a ``file://`` URL and either prints the DOM after the page's scripts ran
(``--dump-dom``) or writes a 1280x800 screenshot.

``python -m tests.browser`` writes ``docs/ledger-report.png``: the report of the
fixture ledger (``tests/fixtures/ledger-0.1.0``, verified against its own key), with
the code the test in ``tests/integration/test_ledger_report.py`` runs too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_LEDGER = REPO / "tests" / "fixtures" / "ledger-0.1.0"
DOCS_SCREENSHOT = REPO / "docs" / "ledger-report.png"
WINDOW = (1280, 800)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chromium() -> str | None:
    """The chromium on PATH, if any."""
    return shutil.which("chromium")


def _run(url: str, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (scripts/provision.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="jhansi-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ]
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=profile
        )
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def dump_dom(page: Path, fragment: str = "") -> str:
    """The DOM chromium built from ``page`` (with ``#fragment``), after its scripts ran,
    serialized."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return _run(url, "--dump-dom").stdout


def screenshot(page: Path, dest: Path) -> Path:
    """A screenshot of the top of ``page`` in a 1280x800 window, written to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    width, height = WINDOW
    _run(
        page.resolve().as_uri(),
        f"--screenshot={dest.resolve()}",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    )
    return dest


class Element:
    """One element of a parsed DOM: its tag, attributes and text (its own and its children's)."""

    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Element | None) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Element] = []
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        """All the text inside it, in order."""
        return "".join(self.parts)

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Descendants with ``tag`` (any when ``None``) and these attribute values."""
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()
            ):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def iter(self) -> list[Element]:
        """Every descendant."""
        return self.find_all()


_VOID = {"meta", "link", "br", "hr", "img", "input", "area", "base", "col", "source", "wbr"}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        if tag not in _VOID:
            self.current = element

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        node: Element | None = self.current
        while node is not None:
            node.parts.append(data)
            node = node.parent


def parse(document: str) -> Element:
    """``document`` (serialized HTML, as --dump-dom prints it) as a tree of :class:`Element`."""
    builder = _Builder()
    builder.feed(document)
    builder.close()
    return builder.root


def report_fixture(workdir: Path, *, key: bool = True, env: dict[str, str] | None = None) -> Path:
    """The report of a copy of the fixture ledger, written into ``workdir``; with ``key``,
    verified against the key that signed it (the file next to it)."""
    ledger = workdir / "ledger-0.1.0"
    shutil.copytree(FIXTURE_LEDGER, ledger)
    out = workdir / "report.html"
    args = ["ledger", "report", "--ledger", str(ledger), "-o", str(out), "--include-output"]
    if key:
        args += ["--key", str(ledger / "signing-key.pub.pem")]
    proc = subprocess.run(
        [sys.executable, "-m", "jhansi", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"jhansi ledger report exited {proc.returncode}: {proc.stderr}")
    return out


def fixture_screenshot(dest: Path, workdir: Path, env: dict[str, str] | None = None) -> Path:
    """The README's screenshot: the top of the fixture ledger's report, at 1280x800."""
    return screenshot(report_fixture(workdir, env=env), dest)


def main() -> int:
    """Write :data:`DOCS_SCREENSHOT` (or the path given)."""
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS_SCREENSHOT
    with tempfile.TemporaryDirectory(prefix="jhansi-report-") as work:
        home = Path(work) / "home"  # no machine key: the fixture's own key is given
        fixture_screenshot(dest, Path(work), env={"JHANSI_HOME": str(home)})
    print(f"wrote {dest} ({dest.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
