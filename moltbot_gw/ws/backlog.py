"""How much a WebSocket client has left unread, and what to do when it is too much.

Events go to whoever watches a run or a session, so a client that stops reading cannot pause
the run (the others would stall with it). Instead its connection is dropped once the events
waiting for it pass a bound, rather than buffered without end.
"""
from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

MAX_BACKLOG_BYTES = 8 * 1024 * 1024


@implementer(IPushProducer)
class SendBacklog:
    """Registered as the producer of a connection's transport, which pauses it when its
    write buffer is full and resumes it once drained; bytes written while paused count
    against ``limit``, and ``on_overflow`` runs (once) when they pass it."""

    def __init__(self, limit: int, on_overflow: Callable[[int], None]):
        self.limit = limit
        self.paused = False
        self.waiting = 0             # bytes written since the transport's buffer filled up
        self._on_overflow = on_overflow
        self._overflowed = False

    def wrote(self, size: int) -> None:
        if not self.paused or self._overflowed:
            return
        self.waiting += size
        if self.waiting > self.limit:
            self._overflowed = True
            self._on_overflow(self.waiting)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.waiting = 0

    def stopProducing(self) -> None:
        self.paused = False
