"""How a wait is told to a client: whole seconds for HTTP ``Retry-After`` (and messages),
milliseconds for the WebSocket ``retryAfterMs``. Both round up, so a client that waits as
told is never early."""
from __future__ import annotations

import math
from typing import Optional


def retry_after_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def retry_after_ms(wait: float) -> int:
    return max(1, math.ceil(wait * 1000))


class TellsRetryAfter:
    """For a dataclass with a ``retry_after`` field (seconds, or None): that wait in the
    two forms the transports tell it in."""

    retry_after: Optional[float]

    @property
    def retry_after_seconds(self) -> Optional[int]:
        """For ``Retry-After``: whole seconds, rounded up."""
        return None if self.retry_after is None else retry_after_seconds(self.retry_after)

    @property
    def retry_after_ms(self) -> Optional[int]:
        """For the WebSocket ``retryAfterMs``, rounded up."""
        return None if self.retry_after is None else retry_after_ms(self.retry_after)
