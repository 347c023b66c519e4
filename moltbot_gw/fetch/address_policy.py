"""Which IP addresses an outbound fetch may connect to: only globally routable unicast ones.
Pure data and ``ipaddress``; the resolver and the fetcher both ask it, so an IP literal in a
URL and every address a name resolves to are judged by the same table."""
from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _nets(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in rows)


# Named so a log line can say why; anything not listed that Python does not consider
# globally routable is refused too (see AddressPolicy.refusal).
REFUSED_NETWORKS = _nets(
    ("0.0.0.0/8", "unspecified (this network)"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),           # includes 255.255.255.255, broadcast
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped IPv6"),
    ("::/96", "IPv4-compatible IPv6"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)


class AddressPolicy:
    """Refuses every address in ``REFUSED_NETWORKS`` and anything not globally routable.

    ``allowed`` networks are exempt from the table; no config key sets them: tests inject a
    policy that lets a stand-in "public" loopback address (e.g. 127.0.0.2) through."""

    def __init__(self, allowed: Iterable[Union[str, IPNetwork]] = ()):
        self.allowed = tuple(ipaddress.ip_network(n) for n in allowed)

    def refusal(self, address: Union[str, IPAddress]) -> Optional[str]:
        """Why ``address`` is refused, or None when a fetch may connect to it."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%")[0])
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        for net, why in REFUSED_NETWORKS:
            if ip.version == net.version and ip in net:
                return why
        if not ip.is_global or ip.is_multicast or ip.is_reserved:
            return "not globally routable"
        return None

    def allows(self, address: Union[str, IPAddress]) -> bool:
        return self.refusal(address) is None


DEFAULT_POLICY = AddressPolicy()
