"""Notices between gateway processes over Redis pub/sub: one subscriber connection per
process (pub/sub needs a connection of its own, not one from the command pool), which
reconnects by itself and tells its listeners when it (re)connects so that they can catch up
on what they missed while it was away. Publishing goes through the ``RedisLink`` pool.
"""
from __future__ import annotations

from typing import Callable

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from .connection import RECONNECT_MAX_DELAY, RedisLink

Listener = Callable[[str], None]


class _Subscriber(txredisapi.SubscriberProtocol):
    notices: "RedisNotices"

    def messageReceived(self, pattern, channel, message):
        self.notices._deliver(channel, message)

    def connectionLost(self, reason):
        self.notices._lost(self)
        super().connectionLost(reason)


class _SubscriberFactory(Factory):
    """Builds the subscriber connection (AUTH and SELECT as the pool does)."""

    def __init__(self, notices: "RedisNotices"):
        self.notices = notices

    def buildProtocol(self, addr):
        a = self.notices.link.address
        protocol = _Subscriber(password=a.password, dbid=a.db, convertNumbers=False,
                               username=a.username)
        protocol.factory = self
        protocol.notices = self.notices
        protocol.whenConnected().addCallback(self.notices._connected)
        return protocol

    # what txredisapi's protocol calls on a refused AUTH or SELECT
    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        RedisNotices.log.error("Redis notices: {problem}", problem=message)


class RedisNotices:
    """Channel → listeners, delivered on the reactor thread as messages arrive; channels are
    given without the key prefix (``listen("auth-locks", f)``) and prefixed here."""

    log = Logger()

    def __init__(self, link: RedisLink, reactor):
        self.link = link
        self._reactor = reactor
        self._listeners: dict[str, list[Listener]] = {}
        self._on_connect: list[Callable[[], None]] = []
        self._protocol: _Subscriber | None = None
        self._service: ClientService | None = None

    def channel(self, name: str) -> str:
        return self.link.key(name)

    def listen(self, name: str, listener: Listener) -> None:
        self._listeners.setdefault(self.channel(name), []).append(listener)
        if self._protocol is not None:
            self._protocol.subscribe(self.channel(name))

    def on_connect(self, hook: Callable[[], None]) -> None:
        """``hook()`` after every (re)connection, once subscribed: catch up on what was
        published while no connection listened."""
        self._on_connect.append(hook)

    def publish(self, name: str, message: str):
        return self.link.execute("PUBLISH", self.channel(name), message)

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def start(self) -> None:
        a = self.link.address
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, a.host, a.port, timeout=self.link.connect_timeout)
        if a.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(a.host), endpoint)
        self._service = ClientService(endpoint, _SubscriberFactory(self),
                                      retryPolicy=backoffPolicy(maxDelay=RECONNECT_MAX_DELAY),
                                      clock=self._reactor)
        self._service.startService()

    def stop(self):
        service, self._service = self._service, None
        self._protocol = None
        if service is None:
            from twisted.internet.defer import succeed
            return succeed(None)
        return service.stopService()

    # -- the connection -------------------------------------------------------------------

    def _connected(self, protocol: _Subscriber) -> None:
        if self._service is None:
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        if self._listeners:
            d = protocol.subscribe(list(self._listeners))
            d.addCallback(lambda _: self._caught_up())
            d.addErrback(lambda f: self.log.warn("Redis notices: subscribe failed: {problem}",
                                                 problem=str(f.value)))
        else:
            self._caught_up()

    def _caught_up(self) -> None:
        for hook in self._on_connect:
            try:
                hook()
            except Exception:
                self.log.failure("Redis notices: a reconnect hook failed")

    def _lost(self, protocol: _Subscriber) -> None:
        if self._protocol is protocol:
            self._protocol = None

    def _deliver(self, channel: str, message: str) -> None:
        for listener in self._listeners.get(channel, ()):
            try:
                listener(message)
            except Exception:
                self.log.failure("Redis notices: a listener failed on {channel}",
                                 channel=channel)
