"""How a run takes its session: the local lane, then (several processes sharing Redis) the
session's cross-process lock, then a global slot; and what the runner needs of that lock
(``moltbot_gw/redis/session_lock.py`` implements it), so that agents/ knows no Redis.
"""
from __future__ import annotations

from typing import Optional, Protocol

from twisted.internet.defer import Deferred

from ..sessions.lease import LeaseLost, SessionLease
from .lanes import Lanes

TAKEN_OVER = ("the session was taken over by another run after this run's lease on it expired "
              "(session.store.redis.lockLeaseSeconds); the turn was not recorded, try again")


class HeldSession(SessionLease, Protocol):
    """A lease on one session, renewed by its holder until ``release``."""

    lost: bool      # a renewal found the lock gone: another process may hold the session

    def release(self) -> Deferred:
        """Free the session for the next run; never fails."""


class SessionLocking(Protocol):
    """One run of a session at a time, across every process that shares the lock."""

    def acquire(self, session_key: str) -> Deferred:
        """Fire with a ``HeldSession``; cancellable while it waits."""


def check_lease(lease: Optional[HeldSession]) -> None:
    """Refuse to write a turn once the run knows it lost the session (the store checks
    again, atomically with the append)."""
    if lease is not None and lease.lost:
        raise LeaseLost(TAKEN_OVER)


async def enter_session(lanes: Lanes, locks: Optional[SessionLocking],
                        key: str) -> Optional[HeldSession]:
    """Wait for the session's lane, then its lock (only the head of the local lane asks
    Redis), then a global slot: a run waiting for another process holds no slot meanwhile.
    Fires with the lease (None without ``locks``); a failure or cancellation on the way
    gives back what was taken. Errors of the lock (RedisUnavailable) pass as they are."""
    await lanes.acquire_lane(key)
    lease: Optional[HeldSession] = None
    try:
        if locks is not None:
            lease = await locks.acquire(key)
        await lanes.global_slots.acquire()
    except BaseException:
        if lease is not None:
            lease.release()
        lanes.release_lane(key)
        raise
    return lease


def leave_session(lanes: Lanes, lease: Optional[HeldSession], key: str) -> None:
    """The end of ``enter_session``, on every exit of the run. The release is not awaited
    (it never fails; the client need not wait for it)."""
    if lease is not None:
        lease.release()
    lanes.release(key)
