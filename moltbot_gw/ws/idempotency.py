"""The WebSocket methods' short memories (idempotency keys, recently finished runs): a
``cachetools.TTLCache`` on the reactor's clock. Entries expire ``ttl`` seconds after they were
last stored (storing again restarts that); beyond ``max_entries`` the least recently used go.
"""
from __future__ import annotations

from cachetools import TTLCache
from twisted.internet.interfaces import IReactorTime


def expiring_cache(clock: IReactorTime, ttl: float, max_entries: int) -> TTLCache:
    """A TTL cache timed by ``clock`` (the reactor, or a ``task.Clock`` in tests): expiry is
    lazy, so no timer is left behind."""
    return TTLCache(maxsize=max_entries, ttl=ttl, timer=clock.seconds)
