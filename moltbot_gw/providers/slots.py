"""Per-provider concurrency: at most ``maxConcurrent`` requests go to one provider at once
(a llama.cpp server has one slot and cuts a running answer when a second request arrives);
more wait first-in first-out in a queue of ``maxQueue``, and past that are refused with
``ProviderBusy``. Transport-free: the runner holds a slot around each provider call.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

from twisted.internet.defer import Deferred, fail, succeed

from .errors import ProviderError

RETRY_AFTER_SECONDS = 1.0   # what a refused client is told: the queue moves as answers end


class ProviderBusy(ProviderError):
    """The provider runs ``maxConcurrent`` requests and its queue is full. Retryable, so
    the runner tries the next fallback model; without one the client gets a 429."""

    retryable = True
    kind = "provider_busy"

    def __init__(self, provider: str, max_concurrent: Optional[int],
                 max_queue: Optional[int]):
        super().__init__(
            f'provider "{provider}" is busy: {max_concurrent} request(s) at once and '
            f"{max_queue} waiting (models.providers.{provider}.maxConcurrent / maxQueue)",
            retry_after=RETRY_AFTER_SECONDS)
        self.provider = provider


class ProviderSlot:
    """Permission to send one request to the provider; ``release()`` (idempotent) hands it
    to the oldest waiter."""

    def __init__(self, owner: "ProviderSlots"):
        self._owner = owner
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._owner._release()


class ProviderSlots:
    """The FIFO in front of one provider. ``None`` limits mean unlimited. The same object
    lives across config reloads (``reconfigure``), so requests in flight stay counted.

    Like ``agents.client_slots.ClientSlots`` (same design, one key instead of one queue per
    client, optional limits, a provider failure instead of a client refusal)."""

    def __init__(self, provider: str, max_concurrent: Optional[int] = None,
                 max_queue: Optional[int] = None):
        self.provider = provider
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.inflight = 0
        self._waiting: deque[Deferred] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def limited(self) -> bool:
        """Whether a request may have to wait (the runner says so when a run times out)."""
        return self.max_concurrent is not None

    def reconfigure(self, max_concurrent: Optional[int], max_queue: Optional[int]) -> None:
        """New limits for new requests; requests in flight and waiters keep their place
        (a raised limit lets waiters go at once, a lowered one waits for calls to end)."""
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._hand_on()

    def acquire(self) -> Deferred:
        """A Deferred of a ``ProviderSlot``: at once when a slot is free, later (in arrival
        order) when the request has to wait, a ``ProviderBusy`` failure when the queue is
        full. Cancelling a waiting Deferred (the run timed out or its client left) takes it
        out of the queue at once."""
        if self._free() and not self._waiting:
            self.inflight += 1
            return succeed(ProviderSlot(self))
        if self.max_queue is not None and len(self._waiting) >= self.max_queue:
            return fail(ProviderBusy(self.provider, self.max_concurrent, self.max_queue))
        d: Deferred[ProviderSlot] = Deferred(canceller=self._leave_queue)
        self._waiting.append(d)
        return d

    def _free(self) -> bool:
        return self.max_concurrent is None or self.inflight < self.max_concurrent

    def _leave_queue(self, d: Deferred) -> None:
        if d in self._waiting:
            self._waiting.remove(d)

    def _release(self) -> None:
        self.inflight -= 1
        self._hand_on()

    def _hand_on(self) -> None:
        while self._waiting and self._free():
            d = self._waiting.popleft()
            self.inflight += 1
            d.callback(ProviderSlot(self))
