"""The Responses API's memory of earlier responses: what ``previous_response_id`` and
``item_reference`` inputs resolve to.

Bounded in entries and in bytes, least recently used first out, in memory only (a restart
forgets it). A response made in a session keeps only its session key; an anonymous one
keeps its conversation so far, so that a continuation can send it again as the run's own
history instead of persisting a session per call.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Optional

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


class ResponseIndex:
    """Response id → ``StoredResponse``, and output item id → its response. Beyond
    ``capacity`` entries or ``max_bytes`` the least recently used responses are forgotten
    together with their items."""

    def __init__(self, capacity: int = DEFAULT_MAX_RESPONSES,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self._items: dict[str, str] = {}            # item id -> response id

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, capacity: int, max_bytes: int) -> None:
        """Apply new limits (a config reload), forgetting what no longer fits."""
        self.capacity, self.max_bytes = capacity, max_bytes
        self._evict()

    def add(self, response_id: str, stored: StoredResponse) -> None:
        stored = trimmed(stored, self.max_bytes)
        size = stored.size
        if size > self.max_bytes:
            return      # its items alone are larger than the whole budget: not kept
        self._forget(response_id)
        self._entries[response_id] = (stored, size)
        self.bytes += size
        for item_id in stored.items:
            self._items[item_id] = response_id
        self._evict()

    def get(self, response_id: str) -> Optional[StoredResponse]:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        self._entries.move_to_end(response_id)
        return entry[0]

    def item(self, item_id: str) -> Optional[Mapping[str, Any]]:
        """The stored output item ``item_id``, or None."""
        response_id = self._items.get(item_id)
        stored = self.get(response_id) if response_id is not None else None
        return stored.items.get(item_id) if stored is not None else None

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.capacity
                                 or self.bytes > self.max_bytes):
            self._forget(next(iter(self._entries)))

    def _forget(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return
        stored, size = entry
        self.bytes -= size
        for item_id in stored.items:
            if self._items.get(item_id) == response_id:
                del self._items[item_id]
