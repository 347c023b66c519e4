"""Who may change state over the WebSocket, and when: a per-connection rate for write
methods, the client's share of run slots, and idempotency keys scoped to one client and one
method. The methods ask it before they start anything; it starts nothing itself.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Awaitable, Callable, Mapping, Optional

from ..agents.client_slots import ClientBusy, ClientSlot, ClientSlots, RunSlots
from ..agents.failures import describe_failure
from ..agents.run import Run
from ..config import LimitsConfig
from ..redis.connection import RedisUnavailable
from ..retry_after import retry_after_ms
from .frames import ErrorCode, ProtocolError, Request, failure_error, invalid
from .idempotency import expiring_cache
from .write_rate import TokenBucket

IDEMPOTENCY_TTL = 600.0
MAX_IDEMPOTENCY_KEYS = 10_000
# Methods that change state (start or stop runs, reset or delete sessions): rate limited
# per connection (gateway.limits.wsWriteRatePerSecond / wsWriteBurst).
WRITE_METHODS = ("agent", "chat.send", "chat.abort", "sessions.reset", "sessions.delete")
# The params that say what a run is: a reused idempotency key must come with the same ones.
RUN_PARAMS = ("message", "sessionKey", "agentId", "extraSystemPrompt")

Handler = Callable[[Any, Request], Awaitable[Any]]


class RunAdmission:
    def __init__(self, clock, limits: LimitsConfig, client_slots: Optional[RunSlots] = None):
        self.clock = clock
        self.limits = limits
        self.client_slots = client_slots or ClientSlots(limits.perClientConcurrency,
                                                        limits.perClientQueue)
        self._write_buckets: dict[Any, TokenBucket] = {}
        # (client address, client id, method, key) -> (what the run was asked, the run)
        self._runs = expiring_cache(clock, IDEMPOTENCY_TTL, MAX_IDEMPOTENCY_KEYS)

    def connection_closed(self, connection) -> None:
        self._write_buckets.pop(connection, None)

    def rate_limited(self, handler: Handler) -> Handler:
        """``handler`` behind the connection's write bucket: an excess request gets
        ``RATE_LIMITED`` with ``retryAfterMs`` and is not run."""
        async def limited(connection, request: Request) -> Any:
            bucket = self._write_buckets.get(connection)
            if bucket is None:
                bucket = self._write_buckets[connection] = TokenBucket(
                    self.clock, self.limits.wsWriteRatePerSecond, self.limits.wsWriteBurst)
            wait = bucket.take()
            if wait is not None:
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"too many {', '.join(WRITE_METHODS)} requests on this connection: at "
                    f"most {self.limits.wsWriteRatePerSecond:g} per second "
                    "(gateway.limits.wsWriteRatePerSecond)",
                    retry_after_ms=retry_after_ms(wait))
            return await handler(connection, request)
        return limited

    def check_message(self, message: str) -> None:
        if len(message) > self.limits.wsMaxMessageChars:
            raise invalid(f"message is longer than {self.limits.wsMaxMessageChars} characters "
                          "(gateway.limits.wsMaxMessageChars)")

    @staticmethod
    def idempotency_scope(connection, method: str, key: str) -> tuple:
        """Keys belong to one client (its address and ``client.id``) and one method."""
        return (connection.address, connection.client_id, method, key)

    @staticmethod
    def asked(params: Mapping[str, Any]) -> str:
        """A digest of what a run was asked: remembered keys must not hold whole messages."""
        what = json.dumps([params.get(name) for name in RUN_PARAMS], ensure_ascii=False)
        return hashlib.sha256(what.encode("utf-8", "surrogatepass")).hexdigest()

    def earlier_run(self, scope: tuple, asked: str) -> Optional[Run]:
        """The run a key in ``scope`` started, if it asked the same; a key reused for
        another request is ``IDEMPOTENCY_CONFLICT``."""
        earlier = self._runs.get(scope)
        if earlier is None:
            return None
        earlier_asked, run = earlier
        if earlier_asked != asked:
            raise ProtocolError(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                "idempotencyKey was already used for a different request (message, "
                "sessionKey, agentId or extraSystemPrompt differ); use a new key",
                details={"runId": run.run_id})
        return run

    def remember(self, scope: tuple, asked: str, run: Run) -> None:
        self._runs[scope] = (asked, run)

    async def slot(self, address: str) -> ClientSlot:
        """A run slot of the client at ``address``, once it has one."""
        try:
            return await self.client_slots.acquire(address)
        except (ClientBusy, RedisUnavailable) as busy:   # the shared slots: Redis is out
            raise failure_error(describe_failure(busy)) from busy
