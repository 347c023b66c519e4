"""What the runner needs of the lock that orders a session's runs across gateway processes
(``moltbot_gw/redis/session_lock.py`` implements it over Redis), so that agents/ knows no
Redis: acquire a session, hold the lease for the whole run, release it on every exit.
"""
from __future__ import annotations

from typing import Optional, Protocol

from twisted.internet.defer import Deferred

from ..sessions.lease import LeaseLost, SessionLease

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
