"""Strict target parsing, host rules, address checks and the policy's routing."""

from __future__ import annotations

import ipaddress
import re

import pytest

from jhansi.egress.hostpolicy import (
    EgressPolicy,
    EgressRefusal,
    HostPort,
    SecretBinding,
    check_address,
    parse_host_rule,
    parse_http_rule,
    parse_target,
)
from jhansi.errors import UsageError

VALUE = "sk-live-0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("api.example.com:443", HostPort("api.example.com", 443)),
        ("API.Example.COM:443", HostPort("api.example.com", 443)),
        ("api.example.com.:8443", HostPort("api.example.com", 8443)),
        ("xn--bcher-kva.example:443", HostPort("xn--bcher-kva.example", 443)),
        ("123.example.com:443", HostPort("123.example.com", 443)),
        ("localhost:443", HostPort("localhost", 443)),
    ],
)
def test_parse_target_normalises(text: str, expected: HostPort) -> None:
    assert parse_target(text) == expected


IP_SPELLINGS = [
    "127.0.0.1:443",
    "2130706433:443",  # decimal integer
    "0x7f000001:443",  # hex integer
    "0x7f.1:443",  # hex, short form
    "0177.0.0.1:443",  # octal
    "127.1:443",  # short form
    "127.0.1:443",
    "127.000.000.001:443",  # leading zeros
    "169.254.169.254:443",  # metadata
    "0251.0376.0251.0376:443",  # metadata in octal
    "2852039166:443",  # metadata as an integer
    "10.0.0.1:443",
    "[::1]:443",
    "[::ffff:127.0.0.1]:443",  # IPv4-mapped
    "[::ffff:7f00:1]:443",
    "[fd00:ec2::254]:443",
    "[64:ff9b::a9fe:a9fe]:443",  # NAT64 of the metadata address
    "127.0.0.1.:443",  # trailing dot
]


@pytest.mark.parametrize("text", IP_SPELLINGS)
def test_parse_target_refuses_every_ip_literal_spelling(text: str) -> None:
    with pytest.raises(EgressRefusal) as caught:
        parse_target(text)
    assert "IP" in caught.value.reason or "address" in caught.value.reason


def test_parse_target_accepts_a_canonical_literal_only_when_listed() -> None:
    listed = {HostPort("10.1.2.3", 8443), HostPort("::1", 443)}
    assert parse_target("10.1.2.3:8443", literals=listed) == HostPort("10.1.2.3", 8443)
    assert parse_target("[::1]:443", literals=listed) == HostPort("::1", 443)
    for text in ("10.1.2.3:443", "012.1.2.3:8443", "10.1.515:8443", "[::2]:443"):
        with pytest.raises(EgressRefusal):
            parse_target(text, literals=listed)
    with pytest.raises(EgressRefusal):  # a non-canonical spelling of a listed literal
        parse_target("168430083:8443", literals=listed)


@pytest.mark.parametrize(
    "text",
    [
        "user@api.example.com:443",
        "user:pass@api.example.com:443",
        "api.example.com",  # no port
        "api.example.com:",
        "api.example.com:0",
        "api.example.com:65536",
        "api.example.com:0443",
        "api.example.com:+443",
        "api..example.com:443",
        ".api.example.com:443",
        "api.example.com..:443",
        ":443",
        "-api.example.com:443",
        "api-.example.com:443",
        "api_x.example.com:443",
        "api.example.com/path:443",
        "api example.com:443",
        "bücher.example:443",  # raw UTF-8: clients send A-labels
        "xn--zz.example:443",  # invalid punycode
        "xn--abc-.example:443",
        "[::1:443",
        "a:b:443",
        "[fe80::1%25eth0]:443",
        "a" * 64 + ".example:443",
        "api.example.com:443\r\nX: y",
    ],
)
def test_parse_target_refuses_malformed(text: str) -> None:
    with pytest.raises(EgressRefusal):
        parse_target(text)


def test_userinfo_refusal_says_why() -> None:
    with pytest.raises(EgressRefusal, match="user information"):
        parse_target("attacker@api.example.com:443")


def test_host_rules() -> None:
    assert parse_host_rule("api.example.com") == HostPort("api.example.com", 443)
    assert parse_host_rule("API.example.com.:8443") == HostPort("api.example.com", 8443)
    assert parse_host_rule("bücher.example") == HostPort("xn--bcher-kva.example", 443)
    assert parse_host_rule("10.1.2.3:8443") == HostPort("10.1.2.3", 8443)
    assert parse_host_rule("[::1]") == HostPort("::1", 443)
    assert parse_http_rule("http://plain.example:8080") == HostPort("plain.example", 8080)
    assert parse_http_rule("http://plain.example/") == HostPort("plain.example", 80)
    for bad in ("https://api.example.com", "api..example.com", "127.1", "a@b.example", ""):
        with pytest.raises(UsageError):
            parse_host_rule(bad)
    for bad in ("plain.example", "http://plain.example/path", "https://plain.example"):
        with pytest.raises(UsageError):
            parse_http_rule(bad)


PRIVATE = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.1.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "240.0.0.1",
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::10.0.0.1",  # IPv4-compatible
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2001:db8::1",
    ],
)
def test_check_address_refuses_non_global(address: str) -> None:
    reason = check_address(address, ())
    assert reason is not None
    assert "[network] allow_private" in reason or "unspecified" in reason


METADATA = [
    "169.254.169.254",
    "169.254.170.2",
    "100.100.100.200",
    "168.63.129.16",  # public-looking
    "fd00:ec2::254",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",
    "2002:a9fe:a9fe::1",
]


@pytest.mark.parametrize("address", METADATA)
def test_metadata_refused_even_under_allow_private(address: str) -> None:
    wide = (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
        ipaddress.ip_network("169.254.0.0/16"),
    )
    reason = check_address(address, wide)
    assert reason is not None
    assert "metadata" in reason


def test_metadata_allowed_only_when_listed_exactly() -> None:
    exact = (ipaddress.ip_network("169.254.169.254/32"),)
    assert check_address("169.254.169.254", exact) is None
    assert check_address("169.254.170.2", exact) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert check_address(address, ()) is None


def test_allow_private_opens_only_its_networks() -> None:
    assert check_address("127.0.0.1", PRIVATE) is None
    assert check_address("::ffff:127.0.0.1", PRIVATE) is None  # the same address
    assert check_address("10.9.9.9", PRIVATE) is None
    assert check_address("192.168.0.1", PRIVATE) is not None
    assert check_address("::1", PRIVATE) is not None  # loopback only if listed
    assert check_address("::1", (ipaddress.ip_network("::1/128"),)) is None
    assert check_address("0.0.0.0", (ipaddress.ip_network("0.0.0.0/0"),)) is not None
    assert check_address("not an address", ()) is not None


def test_secret_binding_validates_and_hides_the_value() -> None:
    binding = SecretBinding(
        name="API_KEY", value=VALUE, hosts=("API.example.com", "b.example:8443"), header="X-Api-Key"
    )
    assert binding.hosts == ("api.example.com", "b.example:8443")
    assert binding.header == "x-api-key"
    assert re.fullmatch(r"jhansi-placeholder-API_KEY-[0-9a-f]{32}", binding.placeholder)
    assert VALUE not in repr(binding)
    assert binding.targets == (HostPort("api.example.com"), HostPort("b.example", 8443))
    other = SecretBinding(name="API_KEY", value=VALUE, hosts=("api.example.com",))
    assert other.placeholder != binding.placeholder  # fresh per run
    bad = [
        {"name": "1X", "value": VALUE, "hosts": ("a.example",)},
        {"name": "K", "value": "short", "hosts": ("a.example",)},
        {"name": "K", "value": VALUE + "\r\nX: y", "hosts": ("a.example",)},
        {"name": "K", "value": VALUE, "hosts": ()},
        {"name": "K", "value": VALUE, "hosts": ("10.0.0.1",)},
        {"name": "K", "value": VALUE, "hosts": ("a.example",), "scheme": "digest"},
        {"name": "K", "value": VALUE, "hosts": ("a.example",), "header": "bad header"},
    ]
    for kwargs in bad:
        with pytest.raises(UsageError):
            SecretBinding(**kwargs)  # type: ignore[arg-type]


def test_policy_routes_exact_hosts_only() -> None:
    secret = SecretBinding(name="K", value=VALUE, hosts=("api.example.com",))
    policy = EgressPolicy(
        allow=(HostPort("files.example.com"), HostPort("10.1.2.3", 8443)),
        secrets=(secret,),
        allow_http=(HostPort("plain.example", 80),),
    )
    assert policy.route(HostPort("api.example.com")) == "intercept"
    assert policy.route(HostPort("files.example.com")) == "tunnel"
    assert policy.route(HostPort("api.example.com", 8443)) is None
    assert policy.route(HostPort("x.api.example.com")) is None
    assert policy.route(HostPort("api.example.com.evil")) is None
    assert policy.route(HostPort("plain.example", 80)) is None
    assert policy.allows_http(HostPort("plain.example", 80))
    assert policy.literals() == {HostPort("10.1.2.3", 8443)}
    assert policy.placeholders() == {"K": secret.placeholder}
    assert policy.intercepted_hosts() == ("api.example.com",)
    with pytest.raises(UsageError):
        EgressPolicy(secrets=(secret, secret))
