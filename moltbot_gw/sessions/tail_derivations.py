"""What a turn derives from a cached transcript tail — each record's conversation message and
the running message/token counts a history budget asks about — worked out once per record as
the tail grows, so a turn's history costs the records appended since, not the whole history.

Used only where the answer is the one ``transcript.history_messages`` would give: windows with
no tool traffic and no ``branch`` record (those re-root the history); elsewhere callers fall
back to building the history from the records.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any, Callable, Mapping, Optional, Sequence

from ..content import content_text
from ..shared_message import SharedMessage
from .transcript import _as_message


class TailDerivations:
    """Derived data for the first ``count`` records of one cached tail (records are only ever
    appended to a tail, so a prefix stays valid)."""

    def __init__(self) -> None:
        self.count = 0
        self.estimate: Optional[Callable[[Mapping[str, Any]], int]] = None
        self.message_counts = [0]   # [i]: message records among the first i records
        self.token_counts = [0]     # [i]: their estimated tokens
        self.last_complex = -1      # newest record that is tool traffic, a branch or unknown
        self.positions: list[int] = []             # records that yield a message ...
        self.messages: list[dict[str, Any]] = []   # ... those messages ...
        self.message_tokens: list[int] = []        # ... and their estimated tokens
        self.unshared: list[int] = []   # messages (indexes) with parts: built anew each turn

    def catch_up(self, records: Sequence[Mapping[str, Any]],
                 estimate: Callable[[Mapping[str, Any]], int]) -> None:
        """Derive what is missing for ``records`` (the tail's records, grown since)."""
        if estimate is not self.estimate or len(records) < self.count:
            self.__init__()     # type: ignore[misc]  # a different question: start again
            self.estimate = estimate
        messages, tokens = self.message_counts[-1], self.token_counts[-1]
        for index in range(self.count, len(records)):
            record = records[index]
            kind = record.get("type")
            if kind == "message":
                messages += 1
                tokens += estimate(record)
                self._classify(index, record, estimate)
            elif kind == "branch":
                self.last_complex = index
            self.message_counts.append(messages)
            self.token_counts.append(tokens)
        self.count = len(records)

    def _classify(self, index: int, record: Mapping[str, Any],
                  estimate: Callable[[Mapping[str, Any]], int]) -> None:
        """As ``current_branch`` keeps a message record when no tool traffic is open."""
        role = record.get("role")
        if role == "assistant" and not record.get("tool_calls"):
            content = record.get("content")
            if not (content if type(content) is str else content_text(content)):
                return    # an empty reply (an aborted turn): never a message
        elif role != "user":
            self.last_complex = index
            return
        self.positions.append(index)
        message = _as_message(record)
        if type(message["content"]) is str:
            message = SharedMessage(message)   # one object, encoded once, for every turn
        else:
            self.unshared.append(len(self.messages))
        self.messages.append(message)
        self.message_tokens.append(estimate(message))

    def budget_start(self, records: Sequence[Mapping[str, Any]], enough: Any) -> Optional[int]:
        """For a fresh history budget (``HistoryBudget``): the index a newest-first scan with
        it would stop at, or -1 when no record would satisfy it. None for other judges."""
        fresh = getattr(enough, "fresh_limits", None)
        limits = fresh() if fresh is not None else None
        if limits is None:
            return None
        max_messages, max_tokens = limits
        self.catch_up(records, enough.estimate)
        n = self.count
        counts, tokens = self.message_counts, self.token_counts
        # the newest index whose suffix reaches max_messages messages or passes max_tokens
        by_messages = bisect_right(counts, counts[n] - max_messages) - 1
        by_tokens = bisect_left(tokens, tokens[n] - max_tokens) - 1
        return min(max(by_messages, by_tokens), n - 1)

    def known_messages(self, window: Sequence[Mapping[str, Any]],
                       start: int) -> Optional[KnownMessages]:
        """``branch_messages(window)`` for the records ``start`` on, or None when the
        window holds a record only the full computation handles."""
        if self.last_complex >= start:
            return None
        first = bisect_left(self.positions, start)
        last = bisect_left(self.positions, start + len(window))
        messages = KnownMessages(self.messages[first:last])
        for index in self.unshared[bisect_left(self.unshared, first):]:
            if index >= last:
                break
            messages[index - first] = _as_message(window[self.positions[index] - start])
        messages.tokens = self.message_tokens[first:last]
        messages.estimate = self.estimate
        return messages


class KnownMessages(list):
    """Conversation messages (text ones are ``SharedMessage``s: read-only, kept across turns)
    with their token estimates (``tokens[i]`` is ``estimate`` of
    message ``i``), so capping the history does not estimate them again."""

    tokens: list[int]
    estimate: Optional[Callable[[Mapping[str, Any]], int]]


class TailWindow(list):
    """Records a cached tail served (``records[start:]``), able to say their conversation
    messages from the tail's derivations (``transcript.history_messages`` asks)."""

    def __init__(self, records: list, derived: TailDerivations, start: int):
        super().__init__(records)
        self._derived = derived
        self._start = start

    def known_messages(self) -> Optional[KnownMessages]:
        return self._derived.known_messages(self, self._start)
