"""The Redis commands of one ``RedisLink`` still waiting for an answer, each with its deadline,
watched by one timer rather than one ``callLater`` per command.

Every command has the same bound (the link's ``commandTimeoutSeconds``), so the order in
which they were sent is the order of their deadlines: the timer only ever looks at the
oldest. A command past its deadline fails with ``RedisUnavailable``; its connection, which
has stopped answering, is dropped so that the pool makes a new one.
"""
from __future__ import annotations

from itertools import count
from typing import Any, Callable

Expire = Callable[[], None]


class InFlight:
    """Commands sent and not yet answered, oldest first; ``expire`` of each one past
    ``seconds`` is called once, by one timer."""

    def __init__(self, reactor: Any, seconds: float):
        self.seconds = seconds
        self._reactor = reactor
        self._waiting: dict[int, tuple[float, Expire]] = {}   # insertion order = deadline order
        self._numbers = count()
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, expire: Expire) -> int:
        """Watch one command; the number to ``done`` it with."""
        number = next(self._numbers)
        self._waiting[number] = (self._reactor.seconds() + self.seconds, expire)
        if self._timer is None:
            self._timer = self._reactor.callLater(self.seconds, self._sweep)
        return number

    def done(self, number: int) -> None:
        """The command was answered (or failed): stop watching it. While others wait the
        timer stays (when it fires early it moves on to the next oldest); with none left it
        is cancelled, so an idle link leaves no timer behind."""
        self._waiting.pop(number, None)
        if not self._waiting:
            self.stop()

    def _sweep(self) -> None:
        self._timer = None
        now = self._reactor.seconds()
        while self._waiting:
            number, (deadline, expire) = next(iter(self._waiting.items()))
            if deadline > now:
                self._timer = self._reactor.callLater(deadline - now, self._sweep)
                return
            del self._waiting[number]
            expire()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

