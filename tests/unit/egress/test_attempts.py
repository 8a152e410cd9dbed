"""What a run with no network tried, read back from its egress events, and the hint lines."""

from __future__ import annotations

from typing import Any

from jhansi.egress.attempts import (
    NO_NETWORK,
    SHOWN_ATTEMPTS,
    attempts,
    hint_lines,
    shown,
)


def event(host: str, port: int, method: str | None = "CONNECT", **extra: Any) -> dict[str, Any]:
    reason = f"{NO_NETWORK}: this run allows no host; run with --allow-host {host} to allow it"
    return {"host": host, "port": port, "method": method, "decision": "refused",
            "reason": reason, **extra}  # fmt: skip


def test_one_line_per_destination_with_the_flag_that_allows_it() -> None:
    found = attempts(
        [
            event("api.github.com", 443),
            event("api.github.com", 443),
            event("files.example.org", 8443),
            event("example.com", 80, method="GET"),
            event("[::1]", 443, decision="tunnelled"),  # not a refusal: not an attempt
            {**event("x.example", 443), "reason": "x.example:443 is not allowed"},  # allowed mode
        ]
    )
    assert [(a.host, a.port, a.plain_http, a.count) for a in found] == [
        ("api.github.com", 443, False, 2),
        ("files.example.org", 8443, False, 1),
        ("example.com", 80, True, 1),
    ]
    assert hint_lines(found) == [
        "the script tried to reach api.github.com:443 (refused: no network, 2 times); "
        "allow it with --allow-host api.github.com",
        "the script tried to reach files.example.org:8443 (refused: no network); "
        "allow it with --allow-host files.example.org:8443",
        "the script tried to reach example.com:80 over plain http (refused: no network); "
        "allow it with --allow-host http://example.com",
    ]


def test_the_fix_is_worded_by_the_caller() -> None:
    lines = hint_lines(
        attempts([event("api.github.com", 443)]),
        lambda rules: f"allowed_hosts={rules}",
        who="the code",
    )
    assert lines == [
        "the code tried to reach api.github.com:443 (refused: no network); "
        "allow it with allowed_hosts=['api.github.com']"
    ]


def test_ipv6_and_unparsed_targets() -> None:
    found = attempts(
        [
            event("2001:db8::1", 443),
            # what the proxy could not parse is kept raw, with port 0
            {**event("1.1.1.1:443", 0), "reason": f"{NO_NETWORK}: 1.1.1.1:443 is an IP literal"},
            {**event("", 0, method=None), "reason": f"{NO_NETWORK}: malformed request: x"},
        ]
    )
    lines = hint_lines(found)
    assert lines[0] == (
        "the script tried to reach [2001:db8::1]:443 (refused: no network); "
        "allow it with --allow-host [2001:db8::1]"
    )
    assert lines[1] == (
        "the script tried to reach 1.1.1.1:443 (refused: no network; 1.1.1.1:443 is an IP literal)"
    )
    assert lines[2].startswith("the script sent the egress proxy a request it could not read")


def test_hostile_names_reach_no_terminal_unescaped() -> None:
    nasty = "evil\x1b]0;pwned\x07\x1b[2J\u202eexample\r\n.com"
    found = attempts(
        [
            {**event(nasty, 0), "reason": f"{NO_NETWORK}: {nasty} \x9b31m is not a target"},
            event("a" * 250 + ".example", 443),
        ]
    )
    lines = hint_lines(found)
    for line in lines:
        assert line.isascii(), repr(line)
        assert line.isprintable(), repr(line)
    assert "\\x1b]0;pwned\\x07" in lines[0]
    assert "\\u202e" in lines[0]
    # too long to be worth an --allow-host: named (cut), no fix offered
    assert "allow it with" not in lines[1]
    assert lines[1] == f"the script tried to reach {'a' * 117}... (refused: no network)"


def test_a_flood_is_a_few_lines_and_a_count() -> None:
    found = attempts([event(f"host{i}.example", 443) for i in range(300)])
    lines = hint_lines(found, more="`jhansi ledger show RUN` lists them all", dropped=12)
    assert len(lines) == SHOWN_ATTEMPTS + 1
    assert lines[-1] == (
        "the script tried 295 more destinations and 12 more connections not listed "
        "(refused: no network); `jhansi ledger show RUN` lists them all"
    )


def test_shown_escapes_and_cuts() -> None:
    assert shown("plain.example:443") == "plain.example:443"
    assert shown("\x00\x7f\u00e9") == "\\x00\\x7f\\xe9"
    assert shown("x" * 500, 20) == "x" * 17 + "..."
