"""A turn's history built from a cached transcript tail costs the records appended since the
last turn, and is exactly the history the records themselves give (issue #16)."""
from __future__ import annotations

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from moltbot_gw.agents.history_window import cap_history, estimate_tokens, history_budget
from moltbot_gw.config import HistoryConfig
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.sessions.tail_cache import TailCache
from moltbot_gw.sessions.tail_derivations import TailWindow
from moltbot_gw.sessions.transcript import history_messages
from moltbot_gw.shared_message import SharedMessage


class CountingRecord(dict):
    """A transcript record that counts how often its fields are read."""

    reads = 0

    def get(self, *args):
        CountingRecord.reads += 1
        return super().get(*args)

    def __getitem__(self, key):
        CountingRecord.reads += 1
        return super().__getitem__(key)


def turn(n: int) -> list:
    return [CountingRecord(type="message", role="user", content=f"question {n}"),
            CountingRecord(type="message", role="assistant", content=f"answer {n}")]


def test_the_next_turns_history_reads_only_the_records_appended_since():
    cache = TailCache(1 << 20)
    cache.put("s", [CountingRecord(type="session")] + [r for n in range(60) for r in turn(n)],
              1000, True)
    limits = HistoryConfig()
    history_messages(cache.get("s").serve(history_budget(limits)))   # the previous turn
    cache.extend("s", turn(60), 100)
    CountingRecord.reads = 0
    history = cap_history(history_messages(cache.get("s").serve(history_budget(limits))),
                          limits)
    assert len(history) == 122
    assert history[-2:] == [{"role": "user", "content": "question 60"},
                            {"role": "assistant", "content": "answer 60"}]
    assert CountingRecord.reads <= 2 * 8   # the two new records, not the 120 before them


def test_a_served_window_stops_where_a_record_by_record_scan_would():
    records = [{"type": "session"}] + [
        {"type": "message", "role": "user", "content": "x" * 40}] * 30
    cache = TailCache(1 << 20)
    cache.put("s", list(records), 1000, False)
    limits = HistoryConfig(maxMessages=3, maxTokens=1000)
    served = cache.get("s").serve(history_budget(limits))
    assert len(served) == 2 * 3 + 2
    by_tokens = cache.get("s").serve(history_budget(HistoryConfig(maxTokens=20)))
    assert len(by_tokens) == 8          # 14 tokens a message: enough once past 2*20+64
    budget = history_budget(HistoryConfig(maxMessages=100))
    assert cache.get("s").serve(budget) is None and budget.messages == 30   # read on disk


def cap_one_by_one(messages, limits):
    """``cap_history`` as it was before messages carried their estimates: the reference."""
    kept: list = []
    budget = limits.maxTokens
    for message in reversed(messages):
        cost = estimate_tokens(message)
        if len(kept) >= limits.maxMessages or cost > budget:
            break
        budget -= cost
        kept.append(message)
    kept.reverse()
    while kept and kept[0].get("role") != "user":
        kept.pop(0)
    return kept


KEY = "agent:main:chat"
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
RECORDS = st.one_of(
    st.builds(lambda text: {"type": "message", "role": "user", "content": text},
              st.text(max_size=30)),
    st.builds(lambda text: {"type": "message", "role": "user",
                            "content": [{"type": "text", "text": text}]}, st.text(max_size=9)),
    st.builds(lambda text: {"type": "message", "role": "assistant", "content": text},
              st.sampled_from(["", "ok", "a longer answer " * 3])),
    st.builds(lambda parts: {"type": "message", "role": "assistant", "content": parts},
              st.sampled_from([[], [{"type": "text", "text": "hi"}], [{"type": "image"}], None])),
    st.just({"type": "message", "role": "assistant", "content": "", "tool_calls": [CALL]}),
    st.just({"type": "message", "role": "tool", "tool_call_id": "c1", "content": "r"}),
    st.just({"type": "message", "role": "system", "content": "odd"}),
    st.builds(lambda drop: {"type": "branch", "drop": drop, "keep": 0},
              st.one_of(st.integers(0, 4), st.just("x"))),
    st.just({"type": "compaction", "reason": "maxTranscriptBytes"}),
)


@settings(max_examples=300, deadline=None)
@given(first=st.lists(RECORDS, max_size=30),
       turns=st.lists(st.lists(RECORDS, min_size=1, max_size=6), max_size=6),
       whole=st.booleans(), max_messages=st.integers(1, 8),
       max_tokens=st.integers(1, 80), answered=st.sampled_from([(), ("c1",)]))
def test_histories_from_the_tail_equal_those_built_from_its_records(
        first, turns, whole, max_messages, max_tokens, answered):
    cache = TailCache(1 << 20)
    cache.put("s", ([{"type": "session"}] if whole else []) + list(first), 100, whole)
    limits = HistoryConfig(maxMessages=max_messages, maxTokens=max_tokens)
    for new in [[]] + turns:
        cache.extend("s", new, 10)
        tail = cache.get("s")
        served = tail.serve(history_budget(limits))
        # a judge that is not a fresh budget gets today's record-by-record scan
        plain_budget = history_budget(limits)
        expected = tail.serve(lambda record: plain_budget(record))
        assert served == expected
        if served is None:
            continue
        history = history_messages(served, answered)
        assert history == history_messages(list(served), answered)
        assert cap_history(history, limits) == cap_one_by_one(history, limits)
        assert cap_history(list(history), limits) == cap_one_by_one(history, limits)


def tool_turn(n: int) -> list:
    call = {"id": f"call{n}", "type": "function",
            "function": {"name": "read", "arguments": "{}"}}
    return [{"type": "message", "role": "user", "content": f"read {n}"},
            {"type": "message", "role": "assistant", "content": "", "tool_calls": [call]},
            {"type": "message", "role": "tool", "tool_call_id": f"call{n}", "content": "text"},
            {"type": "message", "role": "assistant", "content": f"it says {n}"}]


@pytest_twisted.ensureDeferred
async def test_a_stores_cached_histories_equal_those_read_from_its_files(tmp_path):
    """Turn after turn (plain, tool, aborted, branched), the history the running store
    builds from memory is the one a restarted store builds from the transcript file."""
    store = SessionStore(tmp_path)
    limits = HistoryConfig(maxMessages=6, maxTokens=400)
    turns = [turn(0), turn(1), tool_turn(2), turn(3),
             [{"type": "message", "role": "user", "content": "aborted"},
              {"type": "message", "role": "assistant", "content": "", "status": "aborted"}],
             [{"type": "branch", "drop": 2, "keep": 9}], turn(4), turn(5), turn(6), turn(7),
             turn(8), tool_turn(9), *(turn(n) for n in range(10, 20))]
    for records in turns:
        await store.record_turn(KEY, [dict(record) for record in records])
        cached = await store.load_history(KEY, history_budget(limits))
        from_disk = await SessionStore(tmp_path).load_history(KEY, history_budget(limits))
        assert cap_history(history_messages(cached), limits) == cap_history(
            history_messages(list(from_disk)), limits)
    assert isinstance(cached, TailWindow)   # the last turns took the cached tail's way
    assert cap_history(history_messages(cached), limits)[-1] == {
        "role": "assistant", "content": "answer 19"}
    await store.flush()


def test_turns_share_the_stored_messages_and_never_a_message_with_parts():
    """Text messages are the same read-only objects turn after turn (no copy per turn);
    a message with content parts is built anew, so a caller may change it."""
    parts = {"type": "message", "role": "user", "content": [{"type": "text", "text": "look"}]}
    cache = TailCache(1 << 20)
    cache.put("s", [{"type": "session"}, *turn(0), parts, *turn(1)], 1000, True)
    limits = HistoryConfig()
    first = history_messages(cache.get("s").serve(history_budget(limits)))
    cache.extend("s", turn(2), 100)
    second = history_messages(cache.get("s").serve(history_budget(limits)))
    assert second[:5] == first and len(second) == 7
    for before, now in zip(first, second[:5], strict=True):
        if isinstance(now["content"], str):
            assert now is before and type(now) is SharedMessage
        else:
            assert now is not before and type(now) is dict
            now["content"].append({"type": "text", "text": "mine"})
    assert history_messages(cache.get("s").serve(history_budget(limits)))[2] == {
        "role": "user", "content": [{"type": "text", "text": "look"}]}
