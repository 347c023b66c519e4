"""What a session store needs to know of the lock that orders a session's runs across
processes (``moltbot_gw/redis/session_lock.py``): the lease a run holds while it writes.

The Redis store appends a turn only while the lock still holds the lease's token (checked in
the same atomic script as the append: fencing), so a holder that stalled past its lease and
lost the lock to another process cannot write after it. The file store is one process, where
the in-memory lane orders runs; it accepts a lease and has nothing to check.
"""
from __future__ import annotations

from typing import Protocol, Sequence


class SessionLease(Protocol):
    """A held lease on one session's lock."""

    @property
    def key(self) -> str:
        """The full Redis key of the session's lock."""

    @property
    def token(self) -> str:
        """The value the lock holds while this lease is held (unique per acquisition)."""

    def release_keys(self) -> Sequence[str]:
        """The keys a release touches (the lock, the release channel, the mark that someone
        waits), for a store that frees the lock in the same script as the run's last write
        (``record_turn(..., release=True)``): one round trip fewer per turn."""

    def released_with_turn(self) -> None:
        """The store's write freed the lock: the holder stops renewing, and its own release
        has nothing left to do."""


class LeaseLost(Exception):
    """The run's lease on its session expired and another process took the session: the run
    must not write its turn (another run's turn may already follow the history it read)."""
