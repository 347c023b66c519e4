"""Per-client fairness for agent runs: each client (the address the auth limiter uses) may
have ``per_client`` runs at once; more wait first-in first-out in a queue of ``queue_size``,
and past that are refused. Transport-free: HTTP and the WebSocket protocol share one.
"""
from __future__ import annotations

from collections import deque
from typing import Optional, Protocol

from twisted.internet.defer import Deferred, fail, succeed

RETRY_AFTER_SECONDS = 1.0   # what a refused client is told: the queue moves as runs end


class ClientBusy(Exception):
    """The client already runs its share and its queue is full."""

    def __init__(self, client: str, running: int, waiting: int, *,
                 per_client: Optional[int] = None, queue_size: Optional[int] = None):
        super().__init__(f"client {client} has {running} runs and {waiting} waiting")
        self.client = client
        self.retry_after = RETRY_AFTER_SECONDS
        self.per_client = per_client    # the limits it met, for the client's message
        self.queue_size = queue_size


class ClientSlot:
    """One client's permission to run; ``release()`` (idempotent) hands it on."""

    def __init__(self, owner: "ClientSlots", client: str):
        self._owner = owner
        self.client = client
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._owner._release(self.client)


class RunSlots(Protocol):
    """What run admission needs of client slots: ``ClientSlots`` (this process) or
    ``redis.client_slots.RedisClientSlots`` (counted across processes)."""

    def acquire(self, client: str) -> Deferred: ...

    def reconfigure(self, per_client: int, queue_size: int) -> None: ...


class SlotBook:
    """The limits and this process's count of each client's running runs and queue, shared
    by ``ClientSlots`` and the Redis-backed ``RedisClientSlots``; ``_hand_on(client)`` is
    theirs: admitting waiters after a release or a limit change."""

    def __init__(self, per_client: int, queue_size: int):
        self.per_client = per_client
        self.queue_size = queue_size
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[Deferred]] = {}

    def reconfigure(self, per_client: int, queue_size: int) -> None:
        """New limits for new requests; slots held and waiters queued keep their place."""
        self.per_client = per_client
        self.queue_size = queue_size
        for client in list(self._waiting):
            self._hand_on(client)

    def running(self, client: str) -> int:
        return self._running.get(client, 0)

    def waiting(self, client: str) -> int:
        return len(self._waiting.get(client, ()))

    def _enqueue(self, client: str) -> Deferred:
        """A place at the end of ``client``'s queue (cancelling it leaves the queue), or a
        ``ClientBusy`` failure when the queue is full."""
        if self.waiting(client) >= self.queue_size:
            return fail(ClientBusy(client, self.running(client), self.waiting(client),
                                   per_client=self.per_client, queue_size=self.queue_size))
        d: Deferred = Deferred(canceller=lambda d: self._leave_queue(client, d))
        self._waiting.setdefault(client, deque()).append(d)
        return d

    def _leave_queue(self, client: str, d: Deferred) -> None:
        queue = self._waiting.get(client)
        if queue is not None and d in queue:
            queue.remove(d)
            if not queue:
                del self._waiting[client]

    def _hand_on(self, client: str) -> None:
        raise NotImplementedError


class ClientSlots(SlotBook):
    """Counts running slots and queues waiters per client key."""

    def acquire(self, client: str) -> Deferred:
        """A Deferred of a ``ClientSlot``: at once when the client has a free slot, later
        (in arrival order) when it has to wait, a ``ClientBusy`` failure when its queue is
        full. Cancelling a waiting Deferred takes it out of the queue."""
        if self.running(client) < self.per_client and not self.waiting(client):
            self._running[client] = self.running(client) + 1
            return succeed(ClientSlot(self, client))
        return self._enqueue(client)

    def _release(self, client: str) -> None:
        left = self.running(client) - 1
        if left > 0:
            self._running[client] = left
        else:
            self._running.pop(client, None)
        self._hand_on(client)

    def _hand_on(self, client: str) -> None:
        """Give free slots to the oldest waiters of ``client``."""
        queue: Optional[deque[Deferred]] = self._waiting.get(client)
        while queue and self.running(client) < self.per_client:
            d = queue.popleft()
            self._running[client] = self.running(client) + 1
            d.callback(ClientSlot(self, client))
        if queue is not None and not queue:
            self._waiting.pop(client, None)
