"""The session store keeps each recent session's transcript tail in memory, so the next turn
reads nothing from disk; what it serves is always what a read of the file would give."""
from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from moltbot_gw.agents.runner import history_budget
from moltbot_gw.config import HistoryConfig, SessionConfig
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.sessions.transcript import read_transcript, transcript_path

KEY = "agent:main:chat"


class CountingPool:
    """The reactor's thread pool, noting which functions the store runs in it."""

    def __init__(self):
        self.pool = reactor.getThreadPool()
        self.calls: list[str] = []

    def callInThreadWithCallback(self, on_result, function, *args, **kwargs):
        self.calls.append(function.__name__)
        self.pool.callInThreadWithCallback(on_result, function, *args, **kwargs)

    def tail_reads(self) -> int:
        return self.calls.count("read_transcript_tail")


def turn(n):
    return [{"type": "message", "role": "user", "content": f"question {n}", "ts": n},
            {"type": "message", "role": "assistant", "content": f"answer {n}", "ts": n,
             "status": "ok"}]


def on_disk(tmp_path, entry):
    path = transcript_path(tmp_path / "agents" / "main" / "sessions", entry.session_id)
    return list(read_transcript(path).records)


@pytest_twisted.ensureDeferred
async def test_the_next_turns_history_is_served_from_memory_as_the_file_holds_it(tmp_path):
    pool = CountingPool()
    store = SessionStore(tmp_path, threadpool=pool)
    for n in range(30):
        entry = await store.record_turn(KEY, turn(n))
    assert await store.load_history(KEY) == on_disk(tmp_path, entry)
    budget = HistoryConfig(maxMessages=4)
    served = await store.load_history(KEY, history_budget(budget))
    assert pool.tail_reads() == 0
    fresh = await SessionStore(tmp_path).load_history(KEY, history_budget(budget))
    assert served == fresh and 0 < len(fresh) < 60
    await store.flush()   # its batched index save, not left to a timer


@pytest_twisted.ensureDeferred
async def test_a_tail_too_short_for_the_question_is_read_again_from_disk(tmp_path):
    store = SessionStore(tmp_path)
    for n in range(30):
        entry = await store.record_turn(KEY, turn(n))
    pool = CountingPool()
    restarted = SessionStore(tmp_path, threadpool=pool)
    short = await restarted.load_history(KEY, history_budget(HistoryConfig(maxMessages=2)))
    assert pool.tail_reads() == 1 and len(short) < 10
    again = await restarted.load_history(KEY, history_budget(HistoryConfig(maxMessages=2)))
    assert again == short and pool.tail_reads() == 1
    everything = await restarted.load_history(KEY)   # more than the cached tail holds
    assert pool.tail_reads() == 2
    assert everything == on_disk(tmp_path, entry)
    assert await restarted.load_history(KEY) == everything and pool.tail_reads() == 2
    await store.flush()   # its batched index save, not left to a timer
    await restarted.flush()   # its batched index save, not left to a timer


@pytest_twisted.ensureDeferred
async def test_a_compacted_transcript_is_read_again(tmp_path):
    store = SessionStore(tmp_path, limits=SessionConfig(maxTranscriptBytes=4096))
    for n in range(60):
        entry = await store.record_turn(KEY, turn(n))
    records = await store.load_history(KEY)
    assert records == on_disk(tmp_path, entry)
    assert any(record.get("type") == "compaction" for record in records)
    assert records[-1]["content"] == "answer 59"
    await store.flush()   # its batched index save, not left to a timer
