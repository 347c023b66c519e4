"""How much stored history a turn reads and replays: ``cap_history`` keeps the newest messages
within the agent's ``history`` limits; the budgets say when a transcript read from its end has
read enough."""
from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import Any, Mapping, Sequence

from ..config import HistoryConfig
from ..content import content_text


def estimate_tokens(message: Mapping[str, Any]) -> int:
    """A cheap token estimate (about four characters a token) for history budgeting."""
    content = message.get("content")
    if type(content) is str:   # most messages: run for each of them every turn
        return len(content) // 4 + 4
    return len(content_text(content)) // 4 + 4


def cap_history(messages: Sequence[Mapping[str, Any]], limits: HistoryConfig) -> list:
    """Keep the newest messages within ``maxMessages`` and ``maxTokens``; never start the
    history with an assistant reply cut off from its question. Messages a cached tail
    already estimated (``tail_derivations.KnownMessages``) are not estimated again."""
    known = getattr(messages, "tokens", None)
    if getattr(messages, "estimate", None) is not estimate_tokens or known is None \
            or len(known) != len(messages):
        known = None
    if known is not None:
        # newest first: how many fit in maxMessages and whose running total fits maxTokens
        totals = list(accumulate(known[:-limits.maxMessages - 1:-1]))
        count = bisect_right(totals, limits.maxTokens)
    else:
        budget = limits.maxTokens
        count = 0
        for index in range(len(messages) - 1, -1, -1):
            if count >= limits.maxMessages:
                break
            cost = estimate_tokens(messages[index])
            if cost > budget:
                break
            budget -= cost
            count += 1
    kept = list(messages[len(messages) - count:]) if count else []
    for start, message in enumerate(kept):
        if message.get("role") == "user":
            return kept[start:] if start else kept
    return []


class HistoryBudget:
    """When a transcript read from its end has enough for ``cap_history``: twice the messages
    and tokens it can keep (records that do not become messages, such as unanswered tool
    calls or empty replies, leave room for older ones), so older turns are never read.

    Called with each record, newest first. A cached tail that knows its records' counts
    answers the same question without calling it (``fresh_limits``)."""

    estimate = staticmethod(estimate_tokens)

    def __init__(self, limits: HistoryConfig):
        self.max_messages = 2 * limits.maxMessages + 2   # enough at this many messages
        self.max_tokens = 2 * limits.maxTokens + 64      # enough above this many tokens
        self.messages = self.tokens = 0

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if record.get("type") == "message":
            self.messages += 1
            self.tokens += estimate_tokens(record)
        return self.messages >= self.max_messages or self.tokens > self.max_tokens

    def fresh_limits(self):
        """``(max_messages, max_tokens)`` while no record has been judged, else None."""
        if self.messages or self.tokens:
            return None
        return self.max_messages, self.max_tokens


def history_budget(limits: HistoryConfig) -> HistoryBudget:
    """A fresh ``HistoryBudget`` for ``limits``."""
    return HistoryBudget(limits)


def client_history_budget(client_messages: int):
    """When a transcript read from its end reaches back past the conversation a client
    that owns its history resent: its number of messages plus a margin, counting only
    messages such a client sees (tool traffic is extra) and adding back each branch
    record's dropped messages, so the alignment sees the whole current branch."""
    needed = client_messages + 8
    seen = 0

    def enough(record: Mapping[str, Any]) -> bool:
        nonlocal needed, seen
        drop = record.get("drop")
        if record.get("type") == "branch" and isinstance(drop, int) and drop > 0:
            needed += drop
        elif (record.get("type") == "message" and record.get("role") in ("user", "assistant")
              and not record.get("tool_calls")):
            seen += 1
        return seen >= needed

    return enough
