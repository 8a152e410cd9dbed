"""The pieces of ``jhansi ledger report``'s HTML: escaping, values, definition lists, tables.

Every recorded value reaches the page through :func:`h` (or :func:`h1`, on one line),
which makes terminal escapes and invisible or bidirectional format characters visible
(:func:`jhansi.ledger.read.terminal_safe`) and then escapes ``& < > " '``, so its
result is safe in element text and in a quoted attribute value alike. Nothing here
writes a URL, a script or a style from recorded text.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from jhansi.ledger.read import one_line, terminal_safe

_TOKEN: Final = re.compile(r"[a-z][a-z0-9]{0,31}")


def h(value: object) -> str:
    """Recorded text for any HTML context: terminal escapes made visible, then escaped."""
    return html.escape(terminal_safe("" if value is None else str(value)), quote=True)


def class_token(value: object) -> str:
    """A recorded value as part of a class name: itself when it is one plain lower-case
    word (``failed``), else ``other``. Recorded text never names a class of its own
    choice: a status of ``x banner state-ok`` must not dress a cell as the green banner."""
    text = "" if value is None else str(value)
    return text if _TOKEN.fullmatch(text) else "other"


def h1(value: object) -> str:
    """As :func:`h`, on one line (newlines and tabs shown as ``\\n``, ``\\t``)."""
    return html.escape(one_line("" if value is None else str(value)), quote=True)


def value_text(value: Any) -> str:
    """A recorded value as text: strings as they are, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def duration(ms: Any) -> str:
    """Milliseconds, for a person."""
    if not isinstance(ms, int) or isinstance(ms, bool):
        return ""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms // 60_000} min {ms % 60_000 // 1000} s"


def size(value: Any) -> str:
    """A byte count, for a person."""
    if not isinstance(value, int) or isinstance(value, bool):
        return ""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{value} B"


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition list of (label, value); empty values are left out."""
    rows = "".join(
        f"<dt>{h(label)}</dt><dd>{h1(value_text(value))}</dd>"
        for label, value in pairs
        if value not in (None, "", [], {})
    )
    return f'<dl class="kv">{rows}</dl>' if rows else ""


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    empty: str = "none",
    *,
    nowrap: int = 0,
) -> str:
    """A table of recorded values (each cell escaped, on one line); its first ``nowrap``
    columns (at most 2) are not wrapped."""
    body = "".join(
        "<tr>" + "".join(f"<td>{h1(value_text(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    if not body:
        return f'<p class="note">{h(empty)}</p>'
    head = "".join(f"<th>{h(name)}</th>" for name in headers)
    cls = f' class="nw{min(nowrap, 2)}"' if nowrap else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


__all__ = [
    "as_dict",
    "as_list",
    "class_token",
    "duration",
    "h",
    "h1",
    "kv",
    "size",
    "table",
    "value_text",
]
