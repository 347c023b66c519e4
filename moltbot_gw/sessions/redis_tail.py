"""The newest transcript records of recently read sessions of the Redis store, kept in this
process so that a turn reads only what was appended since its last read (by any process).

A stream entry never changes once added, and entries leave a transcript only all at once (a
compaction rewrites the stream, a reset or delete moves to another key): so a cached tail is
still true while its oldest entry exists, and the entries after its newest are all that is new.
Bounded in bytes of records (least recently used out first).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from cachetools import LRUCache

from .tail_cache import serve_tail
from .tail_derivations import TailDerivations

Enough = Callable[[Mapping[str, Any]], bool]


@dataclass
class StreamTail:
    records: list[dict[str, Any]]    # file order
    oldest_id: str                   # stream ids of the first and last entry read
    newest_id: str
    size: int                        # bytes of the records' JSON
    whole: bool                      # the records start at the stream's first entry
    session_id: str                  # the transcript they came from

    derived: TailDerivations = field(default_factory=TailDerivations, repr=False)

    def serve(self, enough: Enough) -> Optional[list[dict[str, Any]]]:
        """The records a read from the end with ``enough`` would return, or None when this
        tail is too short to tell (``tail_cache.serve_tail``)."""
        return serve_tail(self.records, self.whole, self.derived, enough)

    def extend(self, entries: Sequence[tuple[str, dict[str, Any], int]]) -> None:
        """Add entries read after this tail (stream id, record, its bytes; oldest first), in
        place: the derivations of the records before stay. Entries it already holds (two
        reads of one session that both asked for what followed the same entry) are left."""
        newest = stream_id_order(self.newest_id)
        for stream_id, record, size in entries:
            if stream_id_order(stream_id) > newest:
                self.records.append(record)
                self.size += size
                self.newest_id = stream_id


def stream_id_order(stream_id: str) -> tuple[int, int]:
    """A Redis stream id (``<ms>-<seq>``) as something that sorts as Redis does."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class StreamTails:
    """Cached tails by session key; a tail bigger than the whole budget is not kept."""

    def __init__(self, max_bytes: int):
        self._tails: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=lambda tail: tail.size)

    def get(self, session_key: str) -> Optional[StreamTail]:
        return self._tails.get(session_key)

    def put(self, session_key: str, tail: StreamTail) -> None:
        self.pop(session_key)
        if tail.records and tail.size <= self._tails.maxsize:
            self._tails[session_key] = tail

    def pop(self, session_key: str) -> None:
        self._tails.pop(session_key, None)
