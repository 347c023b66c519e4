"""A simulated internet for a whole gateway: a reactor wrapper whose name resolution is a
``ScriptedResolver`` (for both ``nameResolver`` and the IPv4-only ``resolve()``, exactly as
the real reactor wires them) and whose TCP connections to chosen "public" addresses are
routed to servers on loopback. Nothing leaves the machine, and the gateway runs its default
address policy: it believes it talks to 93.184.216.34 while the test serves it from
127.0.0.2.

    net = SimulatedInternet(reactor, {"img.example": [[(PUBLIC_IP, 80)]]},
                            routes={PUBLIC_IP: ("127.0.0.2", origin.port)})
    gw = await start_gateway(raw, reactor=net)
"""
from __future__ import annotations

from twisted.internet import abstract, defer
from twisted.internet._resolver import ComplexResolverSimplifier
from twisted.internet.interfaces import (IReactorCore, IReactorPluggableNameResolver,
                                         IReactorTCP, IReactorTime)
from zope.interface import implementer

from .resolver import ScriptedResolver

PUBLIC_IP = "93.184.216.34"      # public by any policy; never actually contacted


@implementer(IReactorPluggableNameResolver, IReactorTCP, IReactorTime, IReactorCore)
class SimulatedInternet:
    def __init__(self, reactor, answers: dict, routes: dict[str, tuple[str, int]]):
        self._reactor = reactor
        self.nameResolver = ScriptedResolver(answers)
        self.routes = routes
        self.connected_to: list[tuple[str, int]] = []

    def resolve(self, name: str, timeout=(1, 3, 11, 45)):
        if abstract.isIPAddress(name):
            return defer.succeed(name)
        return ComplexResolverSimplifier(self.nameResolver).getHostByName(name, timeout)

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        self.connected_to.append((host, port))
        if host in self.routes:
            host, port = self.routes[host]
        return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)

    def __getattr__(self, name):
        return getattr(self._reactor, name)
