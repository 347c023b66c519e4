"""How a wait is told to a client: whole seconds for HTTP ``Retry-After`` (and messages),
milliseconds for the WebSocket ``retryAfterMs``. Both round up, so a client that waits as
told is never early."""
from __future__ import annotations

import math


def retry_after_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def retry_after_ms(wait: float) -> int:
    return max(1, math.ceil(wait * 1000))
