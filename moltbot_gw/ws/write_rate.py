"""A token bucket on the reactor clock: how many state-changing WebSocket requests one
connection may send (``burst`` at once, then ``rate`` per second). No timers: the bucket is
refilled lazily when asked.
"""
from __future__ import annotations

from typing import Optional


class TokenBucket:
    def __init__(self, clock, rate: float, burst: int):
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = clock.seconds()

    def take(self) -> Optional[float]:
        """Spend one token: ``None`` when there was one, else the seconds until there is."""
        now = self._clock.seconds()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self.rate
