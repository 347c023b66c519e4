"""The newest transcript records of recently used sessions, kept in memory so that a turn
does not read its transcript's tail from disk again; the file stays the truth.

Each entry is the tail a read returned plus every record appended since, and whether it
reaches the file's start. Bounded in bytes of transcript (least recently used out first).
Each entry also keeps what a turn derives from its records (``TailDerivations``), so a turn
does the work for the records appended since the last one only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from cachetools import LRUCache

from .tail_derivations import TailDerivations, TailWindow

Enough = Callable[[Mapping[str, Any]], bool]


@dataclass
class CachedTail:
    records: list[dict[str, Any]]
    size: int            # bytes of the transcript lines these records came from
    whole: bool          # the records start at the file's first line
    derived: TailDerivations = field(default_factory=TailDerivations, repr=False)

    def serve(self, enough: Enough) -> Optional[list[dict[str, Any]]]:
        return serve_tail(self.records, self.whole, self.derived, enough)


def serve_tail(records: list[dict[str, Any]], whole: bool, derived: TailDerivations,
               enough: Enough) -> Optional[list[dict[str, Any]]]:
    """The records a tail read with ``enough`` would return from a cached tail (``whole``:
    it starts at the transcript's start), or None when the tail is too short to tell.
    ``enough`` has then seen every cached record, newest first.

    A fresh history budget is answered from the records' running counts (the same answer,
    without looking at each record again); what it serves is a ``TailWindow``, whose
    conversation messages are already known."""
    start = derived.budget_start(records, enough)
    if start is not None and (start >= 0 or whole):
        start = max(start, 0)
        return TailWindow(records[start:], derived, start)
    # otherwise the judge sees every record here, as a disk read that follows expects
    for index in range(len(records) - 1, -1, -1):
        if enough(records[index]):
            return records[index:]
    return list(records) if whole else None


class TailCache:
    """Cached tails by session id. Values bigger than the whole budget are not kept."""

    def __init__(self, max_bytes: int):
        self._tails: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=lambda tail: tail.size)

    def __len__(self) -> int:
        return len(self._tails)

    def get(self, session_id: str) -> Optional[CachedTail]:
        return self._tails.get(session_id)

    def put(self, session_id: str, records: list[dict[str, Any]], size: int,
            whole: bool) -> None:
        self.pop(session_id)
        if size <= self._tails.maxsize:
            self._tails[session_id] = CachedTail(records, size, whole)

    def extend(self, session_id: str, records: list[dict[str, Any]], size: int) -> None:
        """Records appended to the session's transcript (nothing if it is not cached)."""
        tail = self._tails.get(session_id)
        if tail is not None:   # in place: a copy would cost the whole tail every turn
            tail.records.extend(records)
            tail.size += size
            self.pop(session_id)   # re-inserted, the same entry: its derivations stay
            if tail.size <= self._tails.maxsize:
                self._tails[session_id] = tail

    def pop(self, session_id: str) -> None:
        self._tails.pop(session_id, None)


def skipping(count: int, enough: Enough) -> Enough:
    """``enough`` for a disk read whose newest ``count`` records ``enough`` already saw."""
    seen = 0

    def judge(record: Mapping[str, Any]) -> bool:
        nonlocal seen
        if seen < count:
            seen += 1
            return False
        return enough(record)

    return judge
