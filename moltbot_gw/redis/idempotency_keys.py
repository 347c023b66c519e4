"""Idempotency keys shared by every gateway process: the first request with a key claims it
(``SET NX`` with the idempotency window as expiry) and records the run it started, so a retry
that lands on another process finds that run instead of starting a second one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from twisted.internet.task import deferLater

from .connection import RedisLink, RedisUnavailable

POLL_SECONDS = 0.05


class SharedIdempotencyKeys:
    def __init__(self, link: RedisLink, reactor: Any, ttl_seconds: int):
        self.link = link
        self.reactor = reactor
        self.ttl = str(ttl_seconds)

    def _key(self, scope: tuple) -> str:
        digest = hashlib.sha256(json.dumps(list(scope)).encode("utf-8", "surrogatepass"))
        return self.link.key("idem", digest.hexdigest())

    async def claim(self, scope: tuple, asked: str) -> Optional[dict]:
        """None when this request now holds the key (then ``started`` or ``release``);
        otherwise what the earlier request recorded: ``{"asked", "runId", "agentId",
        "sessionKey", "owner"}`` (compare ``asked`` before using the run)."""
        key = self._key(scope)
        deadline = self.reactor.seconds() + self.link.command_timeout
        while True:
            placeholder = json.dumps({"asked": asked, "runId": None})
            if await self.link.execute("SET", key, placeholder, "NX", "EX", self.ttl) == "OK":
                return None
            raw = await self.link.execute("GET", key)
            if raw is not None:
                earlier = json.loads(raw)
                if earlier.get("runId") or earlier.get("asked") != asked:
                    return earlier
            if self.reactor.seconds() > deadline:
                raise RedisUnavailable("the run of this idempotencyKey is still being "
                                       "started by another gateway process")
            await deferLater(self.reactor, POLL_SECONDS, lambda: None)

    def started(self, scope: tuple, asked: str, run_id: str, agent_id: str, session_key: str,
                owner: str) -> None:
        record = {"asked": asked, "runId": run_id, "agentId": agent_id,
                  "sessionKey": session_key, "owner": owner}
        self.link.execute("SET", self._key(scope), json.dumps(record), "XX", "EX",
                          self.ttl).addErrback(lambda f: f.trap(RedisUnavailable))

    def release(self, scope: tuple) -> None:
        """The request failed before its run started: the key is free again."""
        self.link.execute("DEL", self._key(scope)).addErrback(
            lambda f: f.trap(RedisUnavailable))
