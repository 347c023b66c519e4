"""A small in-memory cache whose entries expire a fixed time after they were stored, on the
reactor clock: it remembers idempotency keys and recently finished runs for the WebSocket
methods. Expiry is lazy (no timers to leak); size is capped, oldest out first.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, Optional, TypeVar

V = TypeVar("V")


class ExpiringCache(Generic[V]):
    def __init__(self, clock, ttl: float, max_entries: int):
        self._clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def get(self, key: Hashable) -> Optional[V]:
        self._expire()
        entry = self._entries.get(key)
        return entry[1] if entry is not None else None

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value``; storing a key again restarts its lifetime."""
        self._entries.pop(key, None)
        self._entries[key] = (self._clock.seconds() + self.ttl, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self._expire()

    def _expire(self) -> None:
        # Every entry lives ``ttl`` from its last put, and puts append, so the entries are
        # in expiry order and the expired ones sit at the front.
        now = self._clock.seconds()
        while self._entries:
            expires, _ = next(iter(self._entries.values()))
            if expires > now:
                break
            self._entries.popitem(last=False)

