"""Short text notices between gateway processes (auth locks, freed client slots), named
without the key prefix: heard through the process's one pub/sub connection
(``subscriber.RedisSubscriber``), published through the ``RedisLink`` pool.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed

from .connection import RedisLink
from .subscriber import RedisSubscriber

Listener = Callable[[str], None]


class RedisNotices:
    """Channel → listeners, delivered on the reactor thread as messages arrive; channels are
    given without the key prefix (``listen("auth-locks", f)``) and prefixed here. Without a
    ``subscriber`` (tests, one feature alone) it makes, starts and stops one of its own."""

    def __init__(self, link: RedisLink, reactor: Any,
                 subscriber: Optional[RedisSubscriber] = None):
        self.link = link
        self._own = subscriber is None
        self.subscriber = subscriber if subscriber is not None else RedisSubscriber(link, reactor)

    def channel(self, name: str) -> str:
        return self.link.key(name)

    def listen(self, name: str, listener: Listener) -> None:
        self.subscriber.add_listener(self.channel(name), listener, text=True)

    def on_connect(self, hook: Callable[[], Any]) -> None:
        """``hook()`` after every (re)connection, once subscribed: catch up on what was
        published while no connection listened."""
        self.subscriber.on_connect(hook)

    def publish(self, name: str, message: str) -> Deferred:
        return self.link.execute("PUBLISH", self.channel(name), message)

    @property
    def connected(self) -> bool:
        return self.subscriber.connected

    def start(self) -> None:
        if self._own:
            self.subscriber.start()

    def stop(self) -> Deferred:
        return self.subscriber.stop() if self._own else succeed(None)
