"""Whether this gateway's Redis answers, for ``GET /health``: a ``PING`` bounded by the command
timeout, at most once a second however often the health check is asked (the answer is
cached), so a load balancer polling ``/health`` never adds load to Redis."""
from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from .connection import RedisLink

CHECK_INTERVAL_SECONDS = 1.0


class RedisHealth:
    """The newest answer to "does Redis answer?": ``None`` when it does, else the reason
    (the link's messages never hold the password)."""

    def __init__(self, link: RedisLink, reactor: Any):
        self.link = link
        self._reactor = reactor
        self._checked_at: Optional[float] = None
        self._problem: Optional[str] = None
        self._pending: Optional[Deferred] = None
        self._waiters: list[Deferred] = []

    def problem(self) -> Deferred:
        """Fire with ``None`` if Redis answered a PING within the last second (or answers
        one now), else with why not."""
        now = self._reactor.seconds()
        if self._checked_at is not None and now - self._checked_at < CHECK_INTERVAL_SECONDS:
            return succeed(self._problem)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        if self._pending is None:
            self._pending = self.link.execute("PING")
            self._pending.addBoth(self._answered)
        return waiter

    def _answered(self, outcome: Any) -> None:
        self._pending = None
        if isinstance(outcome, Failure):
            self._problem = str(outcome.value) or type(outcome.value).__name__
        else:
            self._problem = None
        self._checked_at = self._reactor.seconds()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self._problem)
