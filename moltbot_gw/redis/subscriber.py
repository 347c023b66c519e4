"""One gateway process's Redis pub/sub connection, shared by every feature that listens (run
events and aborts, session lock releases, auth locks, freed client slots): one ``SUBSCRIBE``
connection (a pub/sub connection can run no other command, so it is apart from ``RedisLink``'s
pool) that reconnects by itself, subscribes again to every channel someone still listens to,
then runs the reconnect hooks so that listeners catch up on what they missed meanwhile.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

import txredisapi
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from .connection import RECONNECT_MAX_DELAY, RedisLink, RedisUnavailable

Handler = Callable[[Any], None]     # a parsed JSON message, or the text (``text=True``)
_FAILED = object()                  # what a failed SUBSCRIBE leaves (already logged)


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.owner.received(channel, message)


class _SubscriberFactory(txredisapi.SubscriberFactory):
    protocol = _SubscriberProtocol

    def __init__(self, owner: "RedisSubscriber"):
        super().__init__(isLazy=True)
        self.owner = owner

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.whenConnected().addCallback(self.owner.connection_made)
        return protocol


class RedisSubscriber:
    """Channels (full keys, prefix included) to the handlers of their messages.
    ``listen`` fires once Redis has confirmed the subscription, so a caller that then reads
    a key misses nothing published after that read."""

    log = Logger()

    def __init__(self, link: RedisLink, reactor: Any):
        self.link = link
        self._reactor = reactor
        self._handlers: dict[str, list[tuple[Handler, bool]]] = {}   # channel -> (h, text)
        self._on_connect: list[Callable[[], Any]] = []
        self._protocol: Optional[_SubscriberProtocol] = None
        self._caught_up: Optional[_SubscriberProtocol] = None   # resubscribed, hooks run
        self._ready: list[Deferred] = []
        self._factory: Optional[_SubscriberFactory] = None
        self._subscribing: dict[str, list[Deferred]] = {}   # channel -> waiting listeners

    def start(self) -> None:
        """Connect (once; later calls do nothing) and keep reconnecting until ``stop``."""
        if self._factory is not None:
            return
        a = self.link.address
        factory = self._factory = _SubscriberFactory(self)
        factory.dbid, factory.password, factory.username = a.db, a.password, a.username
        factory.convertNumbers = False
        factory.maxDelay = RECONNECT_MAX_DELAY
        # Fails when a connection is lost during AUTH/SELECT (a stop while connecting): the
        # factory reconnects by itself, so the failure is nobody's to report.
        factory.deferred.addErrback(lambda _: None)
        tls = None
        if a.tls:
            from twisted.internet import ssl
            tls = ssl.ClientContextFactory()
        factory.startConnecting(txredisapi._makeEndpoint(
            a.host, a.port, self.link.connect_timeout, tls))

    def stop(self) -> Deferred:
        factory, self._factory = self._factory, None
        self._protocol = self._caught_up = None
        if factory is None:
            return succeed(None)
        return factory.disconnect().addErrback(lambda _: None)

    @property
    def connected(self) -> bool:
        """Connected, every channel subscribed again and the reconnect hooks run."""
        return self._protocol is not None and self._caught_up is self._protocol

    def on_connect(self, hook: Callable[[], Any]) -> None:
        """``hook()`` after every (re)connection, once every channel is subscribed: catch up
        on what was published while no connection listened."""
        self._on_connect.append(hook)

    # -- the connection -----------------------------------------------------------------

    def connection_made(self, protocol: _SubscriberProtocol) -> None:
        """A new connection (the first or after a loss): subscribe to every channel again,
        one command each (txredisapi pairs one reply with one command), then run the hooks."""
        if self._factory is None:
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        protocol.whenDisconnected().addCallback(self._lost)
        subscribed = [protocol.subscribe(channel).addErrback(self._subscribe_failed, channel)
                      for channel in list(self._handlers)]
        ready, self._ready = self._ready, []
        for waiter in ready:
            if not waiter.called:
                waiter.callback(protocol)
        DeferredList(subscribed).addCallback(self._run_hooks, protocol)

    def _run_hooks(self, results: list, protocol: _SubscriberProtocol) -> None:
        if self._protocol is not protocol:
            return                      # lost meanwhile: the next connection runs them
        if any(outcome is _FAILED for _, outcome in results):
            return                      # a subscription failed: logged; not caught up
        self._caught_up = protocol
        for hook in list(self._on_connect):
            try:
                hook()
            except Exception as e:
                self.log.error("a reconnect hook of the pub/sub connection failed: {error}",
                               error=type(e).__name__)

    def _lost(self, protocol) -> None:
        if self._protocol is protocol:
            self._protocol = self._caught_up = None

    def _subscribe_failed(self, failure, channel: str) -> object:
        self.log.warn("could not subscribe to {channel}: {error}", channel=channel,
                      error=type(failure.value).__name__)
        return _FAILED

    def _connection(self) -> Deferred:
        """The live connection, waiting for it within the command timeout."""
        if self._protocol is not None:
            return succeed(self._protocol)
        if self._factory is None:
            return self.link._failed("the pub/sub connection is stopped")
        waiter: Deferred = Deferred()
        self._ready.append(waiter)
        return self.link.bounded(waiter, "SUBSCRIBE")

    # -- channels -----------------------------------------------------------------------

    def add_listener(self, channel: str, handler: Handler, *, text: bool = False) -> None:
        """Call ``handler`` with each message on ``channel``, without waiting for Redis: the
        channel is subscribed now if connected, else on (every) connection."""
        handlers = self._handlers.setdefault(channel, [])
        handlers.append((handler, text))
        if len(handlers) == 1 and self._protocol is not None:
            self._protocol.subscribe(channel).addErrback(self._subscribe_failed, channel)

    async def listen(self, channel: str, handler: Handler, *, text: bool = False) -> None:
        """Call ``handler`` with each JSON message (the text with ``text=True``) on
        ``channel`` from now on; returns once Redis has confirmed the subscription. Raises
        ``RedisUnavailable`` (and listens to nothing) when Redis does not confirm in time."""
        handlers = self._handlers.setdefault(channel, [])
        handlers.append((handler, text))
        waiters = self._subscribing.get(channel)
        try:
            if waiters is not None:                 # being subscribed: wait for Redis too
                waiter: Deferred = Deferred()
                waiters.append(waiter)
                await waiter
            elif len(handlers) == 1:
                await self._subscribe(channel)
        except RedisUnavailable:
            self.unlisten(channel, handler)
            raise

    async def _subscribe(self, channel: str) -> None:
        waiters: list[Deferred] = []
        self._subscribing[channel] = waiters
        outcome: Any = None
        try:
            protocol = await self._connection()
            await self.link.bounded(protocol.subscribe(channel), "SUBSCRIBE")
        except RedisUnavailable as e:
            outcome = e
            raise
        finally:
            del self._subscribing[channel]
            for waiter in waiters:
                if outcome is None:
                    waiter.callback(None)
                else:
                    waiter.errback(outcome)

    def unlisten(self, channel: str, handler: Handler) -> None:
        handlers = self._handlers.get(channel, [])
        for i, (known, _) in enumerate(handlers):
            if known == handler:
                del handlers[i]
                break
        if handlers:
            return
        self._handlers.pop(channel, None)
        if self._protocol is not None:
            self._protocol.unsubscribe(channel).addErrback(lambda _: None)

    def received(self, channel: Any, message: Any) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        parsed: Any = None
        for handler, text in list(self._handlers.get(channel, ())):
            if not text and parsed is None:
                try:
                    parsed = json.loads(message)
                except (TypeError, ValueError):
                    self.log.warn("ignored a message on {channel} that is not JSON",
                                  channel=channel)
                    continue
            try:
                handler(message if text else parsed)
            except Exception as e:
                self.log.error("a handler of {channel} failed: {error}", channel=channel,
                               error=type(e).__name__)
