"""A scripted ``IHostnameResolver``: each lookup of a name answers the next scripted list of
(ip, port) pairs (the last one repeats), so tests can play DNS rebinding or a name with a
public A and a loopback AAAA record without any real DNS. An IP literal answers itself;
a lookup asking only for IPv4 (``addressTypes``) gets only the IPv4 answers, like DNS."""
from __future__ import annotations

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet._resolver import HostResolution
from zope.interface import implementer


@implementer(IHostnameResolver)
class ScriptedResolver:
    def __init__(self, answers: dict[str, list[list[tuple[str, int]]]]):
        self.answers = {name: list(script) for name, script in answers.items()}
        self.lookups: list[str] = []

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0,
                        addressTypes=None, transportSemantics="TCP"):
        self.lookups.append(hostName)
        resolutionReceiver.resolutionBegan(HostResolution(hostName))
        script = self.answers.get(hostName, [])
        answer = (script.pop(0) if len(script) > 1 else script[0]) if script else []
        if not script and (isIPAddress(hostName) or isIPv6Address(hostName)):
            answer = [(hostName, portNumber)]
        for ip, port in answer:
            kind = IPv6Address if ":" in ip else IPv4Address
            if addressTypes is None or kind in addressTypes:
                resolutionReceiver.addressResolved(kind("TCP", ip, port))
        resolutionReceiver.resolutionComplete()
        return resolutionReceiver
