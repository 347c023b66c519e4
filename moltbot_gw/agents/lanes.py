"""Lanes: one run at a time per session key (FIFO), any number of sessions at once, under a
gateway-wide cap on runs executing together."""
from __future__ import annotations

from twisted.internet.defer import DeferredLock, DeferredSemaphore


class Lanes:
    def __init__(self, max_concurrent: int):
        self._locks: dict[str, DeferredLock] = {}
        self._users: dict[str, int] = {}
        self.global_slots = DeferredSemaphore(max_concurrent)

    def __len__(self) -> int:
        """Session keys with a run executing or queued."""
        return len(self._locks)

    async def acquire(self, key: str) -> None:
        """Wait for the session's lane, then for a global slot. Lane first: a run queued
        behind its own session must not hold one of the global slots while it waits."""
        await self.acquire_lane(key)
        try:
            await self.global_slots.acquire()
        except BaseException:
            self.release_lane(key)
            raise

    async def acquire_lane(self, key: str) -> None:
        """The session's lane alone (``acquire`` without the global slot): for a caller
        that has more to wait for before it takes a slot (the cross-process lock)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = DeferredLock()
        self._users[key] = self._users.get(key, 0) + 1
        try:
            await lock.acquire()
        except BaseException:
            self._forget(key)
            raise

    def release(self, key: str) -> None:
        self.global_slots.release()
        self.release_lane(key)

    def release_lane(self, key: str) -> None:
        self._locks[key].release()
        self._forget(key)

    def _forget(self, key: str) -> None:
        self._users[key] -= 1
        if not self._users[key]:
            del self._users[key]
            del self._locks[key]
