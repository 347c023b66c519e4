"""The Responses API's memory of earlier responses: what ``previous_response_id`` and
``item_reference`` inputs resolve to.

Bounded in entries and in bytes, least recently used first out, in memory only (a restart
forgets it). A response made in a session keeps only its session key; an anonymous one
keeps its conversation so far, so that a continuation can send it again as the run's own
history instead of persisting a session per call.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol

from cachetools import LRUCache
from twisted.internet.defer import Deferred, succeed

DEFAULT_MAX_RESPONSES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class StoredResponse:
    """One stored response.

    ``session_key`` is None for an anonymous response; then ``conversation`` holds its chat
    messages (history, the turn and the reply) for the next turn. ``items`` maps each output
    item id (``msg_``, ``fc_``, ``rs_``) to the item as the client received it."""

    agent_id: str
    session_key: Optional[str]
    conversation: tuple[Mapping[str, Any], ...] = ()
    items: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @cached_property
    def size(self) -> int:
        """Approximate bytes held: the JSON text of the conversation and the items. Messages
        shared with earlier responses of a chain are counted again (a safe overestimate)."""
        return (_json_size(self.conversation) + _json_size(self.items)
                + len(self.session_key or "") + 200)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def trimmed(stored: StoredResponse, max_bytes: int) -> StoredResponse:
    """``stored`` with its oldest conversation messages dropped until it fits ``max_bytes``
    (never starting with a reply or a tool result cut off from its question)."""
    excess = stored.size - max_bytes
    if excess <= 0:
        return stored
    conversation = stored.conversation
    start = 0
    while start < len(conversation) and excess > 0:
        excess -= _json_size(conversation[start]) + 1
        start += 1
    while start < len(conversation) and conversation[start].get("role") != "user":
        start += 1
    return StoredResponse(stored.agent_id, stored.session_key, conversation[start:],
                          stored.items)


class _Entries(LRUCache):
    """Response id → ``StoredResponse``, bounded in bytes (``maxsize``, each response
    weighing its ``size``) and in count; tells the index of every response it evicts, so
    that the items of that response go with it."""

    def __init__(self, capacity: int, max_bytes: int, on_evict: Callable[[str, Any], None]):
        super().__init__(maxsize=max_bytes, getsizeof=lambda stored: stored.size)
        self.capacity = capacity
        self.on_evict = on_evict

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        while len(self) > self.capacity:
            self.popitem()

    def popitem(self):
        key, value = super().popitem()
        self.on_evict(key, value)
        return key, value


class ResponseStore(Protocol):
    """What ``/v1/responses`` needs of its stored responses: ``ResponseIndex`` (in memory)
    or ``RedisResponseIndex`` (shared by every process); each answers with Deferreds."""

    def lookup(self, response_id: str) -> Deferred: ...

    def lookup_items(self, item_ids: Iterable[str]) -> Deferred: ...

    def store(self, response_id: str, stored: "StoredResponse") -> Deferred: ...

    def resize(self, capacity: int, max_bytes: int) -> None: ...


class ResponseIndex:
    """Response id → ``StoredResponse``, and output item id → its response. Beyond
    ``capacity`` entries or ``max_bytes`` the least recently used responses are forgotten
    together with their items."""

    def __init__(self, capacity: int = DEFAULT_MAX_RESPONSES,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self._entries = _Entries(capacity, max_bytes, self._forget_items)
        self._items: dict[str, str] = {}            # item id -> response id

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def capacity(self) -> int:
        return self._entries.capacity

    @property
    def max_bytes(self) -> int:
        return int(self._entries.maxsize)

    @property
    def bytes(self) -> int:
        """Approximate bytes held (the sum of the stored responses' ``size``)."""
        return int(self._entries.currsize)

    def resize(self, capacity: int, max_bytes: int) -> None:
        """Apply new limits (a config reload), forgetting what no longer fits."""
        old = self._entries
        old.on_evict = lambda _key, _stored: None   # moved, not forgotten
        self._entries = _Entries(capacity, max_bytes, self._forget_items)
        while old:
            response_id, stored = old.popitem()     # least recently used first
            self._entries[response_id] = stored     # evicts (with items) what no longer fits

    def add(self, response_id: str, stored: StoredResponse) -> None:
        stored = trimmed(stored, self.max_bytes)
        if stored.size > self.max_bytes:
            return      # its items alone are larger than the whole budget: not kept
        self._forget(response_id)
        for item_id in stored.items:   # before storing: an eviction of it takes them along
            self._items[item_id] = response_id
        self._entries[response_id] = stored

    def get(self, response_id: str) -> Optional[StoredResponse]:
        return self._entries.get(response_id)      # a hit makes it the most recently used

    def item(self, item_id: str) -> Optional[Mapping[str, Any]]:
        """The stored output item ``item_id``, or None."""
        response_id = self._items.get(item_id)
        stored = self.get(response_id) if response_id is not None else None
        return stored.items.get(item_id) if stored is not None else None

    def _forget(self, response_id: str) -> None:
        stored = self._entries.pop(response_id, None)
        if stored is not None:
            self._forget_items(response_id, stored)

    def _forget_items(self, response_id: str, stored: StoredResponse) -> None:
        for item_id in stored.items:
            if self._items.get(item_id) == response_id:
                del self._items[item_id]

    # -- the awaitable API the endpoint uses (shared with ``RedisResponseIndex``) ----------

    def lookup(self, response_id: str) -> Deferred:
        """``get`` as a Deferred: the endpoint awaits either backend the same way."""
        return succeed(self.get(response_id))

    def lookup_items(self, item_ids: Iterable[str]) -> Deferred:
        """A Deferred of {item id: stored item} for those of ``item_ids`` still known."""
        found = {item_id: self.item(item_id) for item_id in item_ids}
        return succeed({k: v for k, v in found.items() if v is not None})

    def store(self, response_id: str, stored: StoredResponse) -> Deferred:
        """``add`` as a Deferred."""
        self.add(response_id, stored)
        return succeed(None)
