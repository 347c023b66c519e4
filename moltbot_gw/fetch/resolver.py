"""Name resolution that enforces the address policy: an ``IHostnameResolver`` wrapper that
drops refused addresses before the HTTP client sees them (so the check covers exactly the
addresses a connection uses: every record, every hop, no rebinding gap), and the reactor
wrapper that hands it to the fetch client."""
from __future__ import annotations

from twisted.internet._resolver import ComplexResolverSimplifier
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.logger import Logger
from zope.interface import implementer

from .address_policy import AddressPolicy

log = Logger()


@implementer(IResolutionReceiver)
class _FilteringReceiver:
    """Collects the inner resolver's answer and passes on only the allowed addresses, all
    at once when resolution completes (so no connection attempt can start on a refused one)."""

    def __init__(self, receiver, host: str, policy: AddressPolicy):
        self._receiver = receiver
        self._host = host
        self._policy = policy
        self._addresses: list = []

    def resolutionBegan(self, resolution) -> None:
        self._receiver.resolutionBegan(resolution)

    def addressResolved(self, address) -> None:
        self._addresses.append(address)

    def resolutionComplete(self) -> None:
        for address in self._addresses:
            why = self._policy.refusal(getattr(address, "host", ""))
            if why is None:
                self._receiver.addressResolved(address)
            else:
                log.warn("outbound fetch: {host} resolved to a refused address ({why}); "
                         "dropped", host=self._host, why=why)
        self._receiver.resolutionComplete()


@implementer(IHostnameResolver)
class GuardedResolver:
    """Wraps ``resolver`` (any ``IHostnameResolver``); a name left with no allowed address
    resolves to nothing, which the HTTP client reports as a failed lookup."""

    def __init__(self, resolver, policy: AddressPolicy):
        self._resolver = resolver
        self._policy = policy

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0,
                        addressTypes=None, transportSemantics="TCP"):
        self._resolver.resolveHostName(
            _FilteringReceiver(resolutionReceiver, hostName, self._policy), hostName,
            portNumber, addressTypes, transportSemantics)
        return resolutionReceiver


@implementer(IReactorPluggableNameResolver, IReactorTCP, IReactorTime, IReactorCore)
class GuardedReactor:
    """The real reactor for everything but name resolution, which goes through a
    ``GuardedResolver``. Only the fetch client gets this reactor."""

    def __init__(self, reactor, resolver: GuardedResolver):
        self._reactor = reactor
        self._name_resolver = resolver

    @property
    def nameResolver(self):
        return self._name_resolver

    def installNameResolver(self, resolver):
        raise RuntimeError("the guarded reactor's resolver cannot be replaced")

    def resolve(self, name: str, timeout=(1, 3, 11, 45)):
        """The old single-address API, guarded too, so no code path resolves around it."""
        return ComplexResolverSimplifier(self._name_resolver).getHostByName(name, timeout)

    def __getattr__(self, name):
        return getattr(self._reactor, name)
