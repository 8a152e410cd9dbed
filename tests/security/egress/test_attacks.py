"""The egress attack suite: hostile scripts through the real ``jhansi run``, on every backend.

The scenario (conftest.py) runs ``probe.py`` in the sandbox twice per backend (bwrap,
rootful Docker, rootless Podman) against three real HTTPS servers on loopback:
``a`` (``JHANSI_TEST_API_KEY`` bound to it with ``--secret``), ``b`` (another secret
bound to it in ``[secrets.NAME]``) and ``c`` (allowed with ``--allow-host``, no secret:
tunnelled). Each test below checks one attack from what the sandbox received (read
unscrubbed from the sandbox home), what the servers received, what ``jhansi`` printed
and what the ledger holds. Nothing is loosened: ``allow_private`` names loopback only
in the project that needs it, and the ``strict`` run shows it is needed.

gVisor (runsc without ``--host-uds=open``, as CI registers it) cannot reach the proxy's
socket: test_gvisor.py shows that egress is refused cleanly there.
"""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.security.egress.conftest import (
    CANARY_NAME,
    KEY_NAME,
    OTHER_NAME,
    Scenario,
    find_secret,
    run_cli,
)


def headers_of(request: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in request["headers"]}


def probe_of(scenario: Scenario, mode: str = "attacks") -> dict[str, Any]:
    assert mode in scenario.probes, (
        f"no probe results for {mode}: {scenario.runs[mode].stderr[-2000:]}"
    )
    return scenario.probes[mode]


def events(scenario: Scenario) -> list[dict[str, Any]]:
    return list(scenario.runs["attacks"].json["egress"])


def ledger_records(scenario: Scenario) -> list[dict[str, Any]]:
    path = scenario.home / "data" / "ledger" / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_both_runs_succeed_and_leave_no_proxy_behind(scenario: Scenario) -> None:
    for mode, run in scenario.runs.items():
        assert run.returncode == 0, f"{mode}: {run.stderr[-3000:]}"
        assert mode in scenario.probes
    assert scenario.runs["attacks"].json["status"] == "succeeded"
    backend = "bwrap" if scenario.backend == "bwrap" else "docker"
    assert scenario.runs["attacks"].json["backend"] == backend
    assert "jhansi: egress: through the proxy to" in scenario.runs["strict"].stderr
    # The proxy's per-run directory (socket, CA bundle) is gone with the run.
    assert list((scenario.home / "run").glob("egress-*")) == []


# -- the secret -------------------------------------------------------------------------


def test_the_bound_server_gets_the_real_key_and_the_script_never_does(
    scenario: Scenario,
) -> None:
    placeholder = scenario.placeholder
    assert placeholder.startswith(f"jhansi-placeholder-{KEY_NAME}-")
    assert placeholder != scenario.key
    received = [r for r in scenario.seen["attacks"]["a"] if r["tls"]]
    assert [r["path"] for r in received] == ["/auth-echo", "/auth-echo-chunked", "/big"]
    for request in received:
        assert headers_of(request)["authorization"] == f"Bearer {scenario.key}"
        assert headers_of(request)["accept-encoding"] == "identity"
    # The other secret reached its own host the same way.
    (other,) = scenario.seen["attacks"]["b"]
    assert headers_of(other)["authorization"] == f"Bearer {scenario.other}"
    # Everything the sandbox received, unscrubbed, holds neither value in any form.
    raw = (scenario.sandbox_home or Path("/nonexistent")) / "probe-attacks.json"
    assert find_secret(raw.read_bytes(), scenario.key, scenario.other) == []
    used = [e for e in events(scenario) if e["decision"] == "intercepted"]
    assert [e["secrets"] for e in used] == [[KEY_NAME]] * 3 + [[OTHER_NAME]]


def test_the_environment_holds_placeholders_and_nothing_of_the_host(
    scenario: Scenario,
) -> None:
    for mode in scenario.runs:
        environ = probe_of(scenario, mode)["environ"]
        assert environ[KEY_NAME].startswith(f"jhansi-placeholder-{KEY_NAME}-")
        assert CANARY_NAME not in environ  # the host's environment is not inherited
        values = "\n".join(f"{k}={v}" for k, v in environ.items())
        assert scenario.canary not in values
        assert find_secret(values, scenario.key, scenario.other) == []
    attacks = probe_of(scenario)["environ"]
    assert attacks[OTHER_NAME].startswith(f"jhansi-placeholder-{OTHER_NAME}-")
    assert OTHER_NAME not in probe_of(scenario, "strict")["environ"]  # not bound there
    # The script printed its whole environment: the output shows the placeholder only.
    printed = scenario.runs["attacks"].json["stdout"]["text"]
    assert f"{KEY_NAME}={scenario.placeholder}\n" in printed
    assert find_secret(printed, scenario.key, scenario.other) == []


def test_echoes_of_the_key_come_back_as_the_placeholder(scenario: Scenario) -> None:
    probe = probe_of(scenario)
    sent = f"Bearer {scenario.placeholder}"
    for name in ("echo", "echo_chunked"):
        answer = probe[name]
        assert answer["status"] == 200, answer
        forms = json.loads(answer["body"])
        assert forms["raw"] == sent
        assert bytes.fromhex(forms["hex"]).decode() == sent
        assert bytes.fromhex(forms["HEX"]).decode() == sent
        assert forms["urlencoded"] == quote(sent, safe="")
        for key in ("base64", "base64url", "blob0", "blob1", "blob2"):
            # Scrubbed where the value was: what decodes is no longer the key.
            decoded = base64.b64decode(forms[key] + "==", altchars=b"-_" if "url" in key else None)
            assert find_secret(decoded, scenario.key) == []
    headers = {k.lower(): v for k, v in probe["echo"]["headers"]}
    assert headers["x-echo-authorization"] == sent
    assert bytes.fromhex(headers["x-echo-hex"]).decode() == sent
    assert find_secret(headers["x-echo-base64"], scenario.key) == []
    # 2 MiB with the key at the start, middle and end (dots dropped by the probe).
    assert probe["echo_big"]["status"] == 200
    assert probe["echo_big"]["body"] == sent * 3


# -- the placeholder where it does not belong ---------------------------------------------


def test_a_placeholder_anywhere_but_a_header_to_its_host_is_refused(scenario: Scenario) -> None:
    probe = probe_of(scenario)
    expected = {
        "key_to_b": "which it is not bound to",
        "key_in_path": "in the request URL",
        "key_in_query": "in the request URL",
        "key_in_query_encoded": "in the request URL",
        "key_in_body": "in the request body",
        "key_in_chunked_body": "in the request body",
        "key_over_plain_http": "plain-http request",
    }
    for name, reason in expected.items():
        answer = probe[name]
        assert answer["status"] == 403, (name, answer)
        assert reason in answer["body"], (name, answer["body"])
        assert answer["body"].startswith(f"jhansi egress: the placeholder of {KEY_NAME}")
    # Nothing of those reached a server: a saw the three echo requests only, b the one
    # request with its own secret, the plain server the one request without a secret.
    seen = scenario.seen["attacks"]
    tls = [r for r in seen["a"] if r["tls"]]
    assert [r["path"] for r in tls] == ["/auth-echo", "/auth-echo-chunked", "/big"]
    plain = [r for r in seen["a"] if not r["tls"]]
    assert [(r["path"], "authorization" in headers_of(r)) for r in plain] == [("/echo", False)]
    assert len(seen["b"]) == 1
    assert probe["other_on_b"]["status"] == 200
    assert probe["plain_http"]["status"] == 200
    assert json.loads(probe["plain_http"]["body"])["tls"] is False
    for request in seen["a"] + seen["b"]:
        assert scenario.placeholder not in json.dumps(request)


def test_a_tunnelled_host_never_gets_the_key(scenario: Scenario) -> None:
    """Host ``c`` is allowed without a secret: TLS end to end, bytes untouched.

    The proxy cannot look inside such a tunnel, so a placeholder sent there is not
    refused; it arrives as the placeholder, a random per-run string worth nothing. The
    real value only ever goes to the hosts it is bound to.
    """
    probe = probe_of(scenario)
    assert probe["key_to_tunnel"]["status"] == 200, probe["key_to_tunnel"]
    (request,) = scenario.seen["attacks"]["c"]
    assert headers_of(request)["authorization"] == f"Bearer {scenario.placeholder}"
    tunnels = [e for e in events(scenario) if e["decision"] == "tunnelled"]
    assert [(e["port"], e["secrets"]) for e in tunnels] == [(scenario.config["c"], [])]
    assert tunnels[0]["bytes_up"] > 0
    assert tunnels[0]["bytes_down"] > 0


# -- hosts, ports and addresses -------------------------------------------------------------


def test_a_host_that_is_not_allowed_gets_403_with_a_reason(scenario: Scenario) -> None:
    probe = probe_of(scenario)
    answer = probe["refused"]["api.example.com:443"]
    assert answer["status"] == 403
    assert answer["body"] == (
        "jhansi egress: api.example.com is not allowed; run with --allow-host "
        "api.example.com or bind a secret to it\n"
    )
    assert answer["refusal"] == answer["body"].removeprefix("jhansi egress: ").strip()
    # An ordinary client fails too (urllib shows the status, the reason is in the body).
    assert "403" in probe["urllib_not_allowed"]["error"]


def test_every_tricky_target_is_refused_before_any_connection(scenario: Scenario) -> None:
    refused = probe_of(scenario)["refused"]
    targets = scenario.config["refused_targets"]
    assert sorted(refused) == sorted(targets)
    for target in targets:
        answer = refused[target]
        assert answer.get("status") == 403, (target, answer)
        assert answer["refusal"], target
        assert answer["body"].startswith("jhansi egress: "), target
    a = scenario.config["a"]
    for target in ("localhost:443", "localhost:8443", f"localhost:{scenario.config['a_plain']}"):
        assert "is allowed on port" in refused[target]["refusal"]
    for target in ("localhost@evil.example:443", f"user@localhost:{a}"):
        assert "user information" in refused[target]["refusal"]
    metadata = [
        t for t in targets if t.startswith(("169.", "[::ffff:a9", "[64:", "[2002:", "[fd00"))
    ]
    metadata += ["2852039166:443", "0xa9fea9fe:443", "0251.0376.0251.0376:443"]
    for target in metadata:
        reason = refused[target]["refusal"]
        assert "metadata" in reason or "non-canonical" in reason, (target, reason)
    assert "--allow-host" not in refused["169.254.169.254:443"]["refusal"]
    assert "cloud metadata service" in refused["[fd00:ec2::254]:443"]["refusal"]
    # Every one was decided before any DNS lookup or connection: no event has an address.
    decided = [
        e
        for e in events(scenario)
        if e["decision"] == "refused"
        and "placeholder" not in e["reason"]
        and (e["host"] in targets or f"{e['host']}:{e['port']}" in targets)
    ]
    assert len(decided) >= len(targets)
    assert [e for e in decided if e["address"] is not None] == []


def test_loopback_is_refused_without_allow_private(scenario: Scenario) -> None:
    probe = probe_of(scenario, "strict")
    for name in ("connect_bound", "connect_tunnel"):
        assert probe[name]["status"] == 403
        assert probe[name]["refusal"].startswith("localhost resolved to ")
        assert "is not a public address" in probe[name]["refusal"]
        assert "[network] allow_private" in probe[name]["refusal"]
    assert probe["connect_literal"]["status"] == 403
    assert "IP-address literal" in probe["connect_literal"]["refusal"]
    assert "403" in probe["urllib_bound"]["error"]
    assert "403" in probe["urllib_tunnel"]["error"]
    assert scenario.seen["strict"] == {"a": [], "b": [], "c": []}


def test_the_proxy_connects_to_the_address_it_checked(scenario: Scenario) -> None:
    """End to end: every connection's event names the checked address it used.

    The resolver cannot be swapped under ``jhansi run``; that a second, different
    answer cannot rebind a connection is shown with an injected resolver in
    tests/integration/test_egress_proxy.py
    (test_dns_is_resolved_once_and_the_checked_address_is_used).
    """
    resolved = {info[4][0] for info in socket.getaddrinfo("localhost", 443)}
    connected = [e for e in events(scenario) if e["address"] is not None]
    assert len(connected) >= 6
    for event in connected:
        assert event["host"] == "localhost"
        assert event["address"] in resolved
        assert event["address"] == "127.0.0.1"  # where the test servers listen


# -- TLS identity and protocols -------------------------------------------------------------


def test_the_host_header_must_be_the_connected_host(scenario: Scenario) -> None:
    probe = probe_of(scenario)
    for name in ("host_header_other", "host_header_other_port"):
        assert probe[name]["connect"] == 200
        assert probe[name]["status"] == 403
        assert "the Host header" in probe[name]["refusal"]
    assert all(headers_of(r)["host"] != "evil.example" for r in scenario.seen["attacks"]["a"])


def test_the_sni_must_be_the_connected_host(scenario: Scenario) -> None:
    probe = probe_of(scenario)
    for name in ("sni_other", "sni_allowed_other", "sni_none"):
        assert probe[name]["connect"] == 200
        assert probe[name]["handshake"] != "ok", (name, probe[name])
    refusals = [e for e in events(scenario) if "the SNI must be localhost" in e["reason"]]
    assert len(refusals) == 3


def test_http2_and_other_protocols_are_refused(scenario: Scenario) -> None:
    probe = probe_of(scenario)
    assert probe["h2_preface_tunnel"]["status"] == 403
    assert "HTTP/2" in probe["h2_preface_tunnel"]["refusal"]
    for name in ("http_in_tunnel", "ssh_in_tunnel"):
        assert probe[name]["status"] == 403
        assert "TLS ClientHello" in probe[name]["refusal"]
    h2 = probe["alpn_h2"]
    assert h2.get("alpn") != "h2"
    assert h2.get("status") in (400, 403) or "handshake" in h2 or "read" in h2, h2
    # Only the one real request reached the tunnelled server.
    assert len(scenario.seen["attacks"]["c"]) == 1


def test_no_way_out_but_the_forwarder(scenario: Scenario) -> None:
    probe = probe_of(scenario)
    assert probe["interfaces"] == ["lo"]
    for target, outcome in probe["direct"].items():
        assert outcome != "connected", target
        assert "Errno" in outcome, (target, outcome)
    assert probe["direct_udp"] != "sent"
    assert probe["resolve"].startswith("gaierror")
    assert probe["forwarder"] == "connected"


def test_the_run_ca_can_only_sign_for_the_bound_hosts(scenario: Scenario) -> None:
    """The CA the sandbox trusts: NameConstraints to the intercepted hosts, no sub-CAs.

    That a leaf outside the constraints does not verify (cryptography and OpenSSL) is
    tests/unit/egress/test_ca.py; end to end, asking the proxy for another name by SNI
    fails (test_the_sni_must_be_the_connected_host).
    """
    import datetime as dt

    from cryptography import x509

    ca = x509.load_pem_x509_certificate(probe_of(scenario)["run_ca"].strip().encode())
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.DNSName("localhost")]
    assert all(isinstance(n, x509.IPAddress) for n in constraints.value.excluded_subtrees or [])
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert lifetime <= dt.timedelta(seconds=300 + 600 + 3600)
    bundle_marks = probe_of(scenario)["run_ca"].count("BEGIN CERTIFICATE")
    assert bundle_marks == 1


# -- the record ---------------------------------------------------------------------------


def test_the_ledger_records_names_hosts_and_every_connection(scenario: Scenario) -> None:
    records = ledger_records(scenario)
    attacks = scenario.runs["attacks"].json
    starts = [r for r in records if r["kind"] == "exec.start"]
    ends = [r for r in records if r["kind"] == "exec.end"]
    assert len(starts) == len(ends) == 2
    start = next(r["body"] for r in starts if r["body"]["run_id"] == attacks["run_id"])
    a, b, c = (scenario.config[n] for n in "abc")
    assert start["secrets"] == [
        {"name": KEY_NAME, "hosts": [f"localhost:{a}"], "header": None, "scheme": None},
        {"name": OTHER_NAME, "hosts": [f"localhost:{b}"], "header": None, "scheme": None},
    ]
    assert start["egress"]["allow"] == [f"localhost:{c}"]
    assert start["egress"]["allow_http"] == [f"localhost:{scenario.config['a_plain']}"]
    assert start["egress"]["allow_private"] == ["127.0.0.0/8", "::1/128"]
    end = next(r["body"] for r in ends if r["body"]["run_id"] == attacks["run_id"])
    assert end["egress"] == attacks["egress"]
    decisions = {e["decision"] for e in end["egress"]}
    assert decisions == {"intercepted", "tunnelled", "forwarded", "refused"}
    for event in end["egress"]:
        if event["decision"] == "intercepted":
            assert len(event["path_hash"]) == 64
            assert event["method"] == "GET"
    verified = run_cli("ledger", "verify", env=scenario.env, cwd=scenario.base)
    assert verified.returncode == 0, verified.stderr


def test_no_trace_of_the_secrets_anywhere(scenario: Scenario) -> None:
    """The ledger (records and blobs), the sandbox home, every file under JHANSI_HOME
    and the projects, and everything ``jhansi`` printed in this backend's scenario: no
    form (raw, hex, base64, URL-encoded) of either real value, anywhere."""
    values = (scenario.key, scenario.other)
    assert scenario.runs, "the scenario ran nothing"
    files = [p for p in scenario.base.rglob("*") if p.is_file()]
    ledger = scenario.home / "data" / "ledger"
    assert (ledger / "ledger.jsonl") in files
    assert any(p.is_relative_to(ledger / "blobs") for p in files)
    assert scenario.sandbox_home is not None
    assert any(p.is_relative_to(scenario.sandbox_home) for p in files)
    leaks = {str(p): find_secret(p.read_bytes(), *values) for p in files}
    assert {p: f for p, f in leaks.items() if f} == {}
    for mode, run in scenario.runs.items():
        assert find_secret(run.stdout, *values) == [], f"{mode} stdout"
        assert find_secret(run.stderr, *values) == [], f"{mode} stderr"
    # The search looks where the values would be: the placeholder it stands for is in
    # the ledger's output blobs and in the sandbox home, and the key reached server a.
    placeholder = scenario.placeholder.encode()
    assert any(placeholder in p.read_bytes() for p in (ledger / "blobs").rglob("*") if p.is_file())
    assert find_secret(json.dumps(scenario.seen["attacks"]["a"]), scenario.key) != []


@pytest.mark.parametrize("mode", ["attacks", "strict"])
def test_the_probe_really_ran_in_the_sandbox(scenario: Scenario, mode: str) -> None:
    environ = probe_of(scenario, mode)["environ"]
    assert environ["HOME"] == "/home/sandbox"
    assert environ["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert environ.get("NO_PROXY", "") == ""
