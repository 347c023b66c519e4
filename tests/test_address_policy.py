"""The outbound address policy as a table: every refused range of issue 13 item 1 (and the
sensible extras), IP literals written in their IPv6-embedded forms, and public addresses."""
from __future__ import annotations

import pytest

from moltbot_gw.fetch import DEFAULT_POLICY, AddressPolicy

REFUSED = [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("fd12:3456::1", "unique local (private)"),
    ("fc00::1", "unique local (private)"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified (this network)"), ("0.1.2.3", "unspecified (this network)"),
    ("::", "unspecified"),
    ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
    ("64:ff9b::7f00:1", "NAT64"), ("64:ff9b::808:808", "NAT64"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:7f00:1::1", "6to4"), ("2002:0808:0808::1", "6to4"),
    ("::ffff:127.0.0.1", "IPv4-mapped IPv6"), ("::ffff:8.8.8.8", "IPv4-mapped IPv6"),
    ("::127.0.0.1", "IPv4-compatible IPv6"), ("::8.8.8.8", "IPv4-compatible IPv6"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("255.255.255.255", "reserved"), ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"), ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"), ("192.0.0.8", "IETF protocol assignments"),
    ("192.88.99.1", "6to4 relay anycast"), ("100::1", "discard-only"),
    ("fec0::1", "site-local"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "151.101.1.69", "100.128.0.1",
          "172.32.0.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


@pytest.mark.parametrize("address,why", REFUSED)
def test_refused_ranges_are_refused_with_their_name(address, why):
    assert DEFAULT_POLICY.refusal(address) == why
    assert not DEFAULT_POLICY.allows(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_are_allowed(address):
    assert DEFAULT_POLICY.refusal(address) is None


def test_a_host_name_is_not_an_address():
    assert DEFAULT_POLICY.refusal("example.com") == "not an IP address"


def test_an_injected_allowance_admits_only_its_network():
    policy = AddressPolicy(allowed=["127.0.0.2/32"])
    assert policy.allows("127.0.0.2")
    assert policy.refusal("127.0.0.1") == "loopback"
    assert policy.refusal("::ffff:127.0.0.2") == "IPv4-mapped IPv6"
