"""The Responses API's stored responses in Redis (``session.store.backend: "redis"``), so that
``previous_response_id`` and ``item_reference`` resolve on whichever gateway process a call
lands on.

Each response is one JSON key ``<prefix>resp:<id>`` and each of its output items a key
``<prefix>respitem:<item id>`` naming it, all with a TTL of ``STORED_RESPONSE_TTL_SECONDS``;
a sorted set ``<prefix>resp-order`` (scored by time stored) bounds their number to
``maxStoredResponses``: storing one past it drops the oldest. ``maxStoredBytes`` bounds each
response (``trimmed``), as in memory; the total is at most count x that.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from twisted.internet.defer import Deferred, inlineCallbacks, succeed

from ..redis.connection import LuaScript, RedisLink
from .response_index import DEFAULT_MAX_BYTES, DEFAULT_MAX_RESPONSES, StoredResponse, trimmed

STORED_RESPONSE_TTL_SECONDS = 24 * 3600   # as long as a chain is usually continued

# KEYS: the response key, the order set; ARGV: id, json, ttl ms, now, capacity, response key
# prefix, then the item keys. Drops the oldest responses past the capacity (their item keys
# expire with their TTL and resolve to nothing meanwhile).
_STORE = LuaScript("""
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
for i = 7, #ARGV do redis.call('SET', ARGV[i], ARGV[1], 'PX', ttl) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if excess > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #old, 2 do redis.call('DEL', ARGV[6] .. old[i]) end
end
return excess
""")


def encode(stored: StoredResponse) -> str:
    return json.dumps({"agent": stored.agent_id, "session": stored.session_key,
                       "conversation": list(stored.conversation), "items": stored.items},
                      separators=(",", ":"))


def decode(text: str) -> StoredResponse:
    data = json.loads(text)
    return StoredResponse(data["agent"], data["session"], tuple(data["conversation"]),
                          data["items"])


class RedisResponseIndex:
    """``ResponseIndex``'s awaitable API (``lookup``, ``lookup_items``, ``store``,
    ``resize``) over Redis. Every call may fail with ``RedisUnavailable`` (a 503)."""

    def __init__(self, redis: RedisLink, clock, capacity: int = DEFAULT_MAX_RESPONSES,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 ttl: float = STORED_RESPONSE_TTL_SECONDS):
        self.redis = redis
        self.clock = clock
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.ttl = ttl

    def resize(self, capacity: int, max_bytes: int) -> None:
        """New limits; the count bound applies from the next response stored."""
        self.capacity = capacity
        self.max_bytes = max_bytes

    def _response_key(self, response_id: str) -> str:
        return self.redis.key("resp", response_id)

    def _item_key(self, item_id: str) -> str:
        return self.redis.key("respitem", item_id)

    @inlineCallbacks
    def lookup(self, response_id: str):
        text = yield self.redis.execute("GET", self._response_key(response_id))
        return decode(text) if text is not None else None

    @inlineCallbacks
    def lookup_items(self, item_ids: Iterable[str]):
        """{item id: stored item} for those of ``item_ids`` still known (two round trips:
        the items' responses, then those responses)."""
        wanted = list(dict.fromkeys(item_ids))
        if not wanted:
            return {}
        owners = yield self.redis.execute("MGET", *(self._item_key(i) for i in wanted))
        response_ids = sorted({owner for owner in owners if owner is not None})
        if not response_ids:
            return {}
        texts = yield self.redis.execute("MGET", *(self._response_key(r) for r in response_ids))
        responses = {r: decode(t)
                     for r, t in zip(response_ids, texts, strict=True) if t is not None}
        found: dict[str, Any] = {}
        for item_id, owner in zip(wanted, owners, strict=True):
            stored: Optional[StoredResponse] = responses.get(owner) if owner else None
            if stored is not None and item_id in stored.items:
                found[item_id] = stored.items[item_id]
        return found

    def store(self, response_id: str, stored: StoredResponse) -> Deferred:
        stored = trimmed(stored, self.max_bytes)
        if stored.size > self.max_bytes:
            return succeed(None)   # its items alone exceed the budget: not kept (as in memory)
        args = [response_id, encode(stored), int(self.ttl * 1000), repr(self.clock.seconds()),
                self.capacity, self.redis.key("resp", ""),
                *(self._item_key(item_id) for item_id in stored.items)]
        d = self.redis.script(_STORE, [self._response_key(response_id),
                                       self.redis.key("resp-order")], args)
        return d.addCallback(lambda _: None)
