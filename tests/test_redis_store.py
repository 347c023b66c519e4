"""The Redis session store against a real redis-server: the same API as the file store (both
verified against ``ISessionStore``), history read from the stream's tail, unreadable records
skipped, retention, compaction, and fencing by the session lease."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from zope.interface.verify import verifyObject

from moltbot_gw.agents.history_window import history_budget
from moltbot_gw.config import HistoryConfig, SessionConfig
from moltbot_gw.redis import RedisLink
from moltbot_gw.sessions.interface import ISessionStore
from moltbot_gw.sessions.lease import LeaseLost
from moltbot_gw.sessions.redis_store import RedisSessionStore
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.sessions.transcript import history_messages

KEY = "agent:main:main"


@dataclass(frozen=True)
class Lease:
    key: str
    token: str


def user(text):
    return {"type": "message", "role": "user", "content": text}


def reply(text):
    return {"type": "message", "role": "assistant", "content": text}


@pytest.fixture
def link(redis_link):
    return redis_link


def test_both_stores_provide_the_session_store_interface(tmp_path):
    assert verifyObject(ISessionStore, SessionStore(tmp_path, reactor))
    link = RedisLink("redis://127.0.0.1:1/0", reactor)
    assert verifyObject(ISessionStore, RedisSessionStore(link))


@pytest_twisted.ensureDeferred
async def test_turns_are_stored_as_a_stream_with_the_jsonl_record_format(link):
    store = RedisSessionStore(link)
    entry = await store.record_turn(KEY, [user("hi"), reply("hello")], model="m1",
                                    usage={"prompt_tokens": 3, "completion_tokens": 2})
    assert (entry.model, entry.input_tokens, entry.output_tokens, entry.total_tokens) == (
        "m1", 3, 2, 5)
    raw = await link.execute("XRANGE", store.transcript_key(entry.session_id), "-", "+")
    import json
    records = [json.loads(item[1][1]) for item in raw]
    assert records[0] == {"type": "session", "sessionId": entry.session_id,
                          "sessionKey": KEY, "createdAt": entry.created_at}
    assert records[1:] == [user("hi"), reply("hello")]
    assert await store.get(KEY) == entry
    assert await store.load_history(KEY) == records
    second = await store.record_turn(KEY, [user("again")], usage={"input_tokens": 1})
    assert second.session_id == entry.session_id and second.input_tokens == 4


@pytest_twisted.ensureDeferred
async def test_history_is_read_from_the_tail_only_as_far_as_needed(link):
    store = RedisSessionStore(link)
    for i in range(200):
        await store.record_turn(KEY, [user(f"q{i}"), reply(f"a{i}")])
    seen = []

    def enough(record):
        seen.append(record)
        return len(seen) >= 3

    tail = await store.load_history(KEY, enough)
    assert [r["content"] for r in tail] == ["a198", "q199", "a199"]
    assert len(seen) == 3
    everything = await store.load_history(KEY)
    assert len(everything) == 401 and everything[0]["type"] == "session"
    assert [r["content"] for r in everything[1:5]] == ["q0", "a0", "q1", "a1"]


@pytest_twisted.ensureDeferred
async def test_cached_tails_give_a_fresh_reads_history_while_two_processes_take_turns(link):
    """Each process extends its cached tail in place with what any process appended; two
    reads at once that both ask for what followed the same entry add it once."""
    a, b = RedisSessionStore(link), RedisSessionStore(link)
    limits = HistoryConfig(maxMessages=5)
    for i in range(12):
        await (b if i % 3 else a).record_turn(KEY, [user(f"q{i}"), reply(f"a{i}")])
        first, second = await gatherResults([a.load_history(KEY, history_budget(limits)),
                                             a.load_history(KEY, history_budget(limits))])
        fresh = await RedisSessionStore(link).load_history(KEY, history_budget(limits))
        assert list(first) == list(second) == fresh
        expected = history_messages(fresh)
        assert history_messages(first) == history_messages(second) == expected
        assert expected[-1] == {"role": "assistant", "content": f"a{i}"}
    everything = await a.load_history(KEY)
    assert [r["content"] for r in everything[1:]] == [
        text for i in range(12) for text in (f"q{i}", f"a{i}")]


@pytest_twisted.ensureDeferred
async def test_unreadable_records_are_skipped_like_torn_lines(link):
    store = RedisSessionStore(link)
    entry = await store.record_turn(KEY, [user("one")])
    stream = store.transcript_key(entry.session_id)
    await link.execute("XADD", stream, "*", "r", '{"type":"mess')      # not JSON
    await link.execute("XADD", stream, "*", "other", "x")              # no record field
    await store.record_turn(KEY, [reply("two")])
    history = await store.load_history(KEY)
    assert [r.get("content") for r in history[1:]] == ["one", "two"]


@pytest_twisted.ensureDeferred
async def test_reset_delete_and_list(link):
    store = RedisSessionStore(link)
    first = await store.get_or_create(KEY)
    assert await store.get_or_create(KEY) == first
    await store.record_turn(KEY, [user("x")])
    await store.record_turn("agent:other:main", [user("y")])
    listed = await store.list_sessions()
    assert {e.key for e in listed} == {KEY, "agent:other:main"}
    assert [e.key for e in await store.list_sessions("other")] == ["agent:other:main"]
    assert await store.reset(KEY) is True
    after = await store.get(KEY)
    assert after.session_id != first.session_id
    assert await store.load_history(KEY) == []
    # the old transcript is kept, as the file store keeps the old file
    assert await link.execute("XLEN", store.transcript_key(first.session_id)) == 2
    assert await store.delete(KEY) is True
    assert await store.get(KEY) is None and await store.delete(KEY) is False
    assert await store.reset(KEY) is False
    assert [e.key for e in await store.list_sessions()] == ["agent:other:main"]


@pytest_twisted.ensureDeferred
async def test_delete_sets_the_transcript_aside_with_a_ttl(link):
    store = RedisSessionStore(link)
    entry = await store.record_turn(KEY, [user("x")])
    await store.delete(KEY)
    assert await link.execute("EXISTS", store.transcript_key(entry.session_id)) == 0
    aside = await link.execute("KEYS", link.key("deleted", "transcript", entry.session_id)
                               + ":*")
    assert len(aside) == 1 and await link.execute("TTL", aside[0]) > 0


@pytest_twisted.ensureDeferred
async def test_retention_prunes_the_least_recently_used_with_their_transcripts(link):
    from twisted.internet.task import Clock
    clock = Clock()
    clock.advance(1_000_000)
    store = RedisSessionStore(link, SessionConfig(maxSessionsPerAgent=2), reactor=clock)
    old = await store.record_turn("agent:main:a", [user("a")])
    clock.advance(1)
    await store.record_turn("agent:main:b", [user("b")])
    clock.advance(1)
    await store.record_turn("agent:main:a", [user("a2")])   # a is now the most recent
    clock.advance(1)
    await store.get_or_create("agent:main:c")
    assert {e.key for e in await store.list_sessions("main")} == {"agent:main:a",
                                                                  "agent:main:c"}
    assert await link.execute("EXISTS", store.transcript_key(old.session_id)) == 1
    store.reconfigure(SessionConfig(maxSessionsPerAgent=10, idleDays=1))
    clock.advance(2 * 24 * 3600)
    await store.record_turn("agent:main:d", [user("d")])
    assert [e.key for e in await store.list_sessions("main")] == ["agent:main:d"]
    assert await link.execute("EXISTS", store.transcript_key(old.session_id)) == 0


@pytest_twisted.ensureDeferred
async def test_a_transcript_past_its_limit_is_compacted_keeping_the_header(link):
    store = RedisSessionStore(link, SessionConfig(maxTranscriptBytes=4000))
    for i in range(60):
        await store.record_turn(KEY, [user(f"question {i:03d}"), reply("x" * 40)])
    history = await store.load_history(KEY)
    assert history[0]["type"] == "session" and history[0]["sessionKey"] == KEY
    assert history[1]["type"] == "compaction"
    assert history[2]["role"] == "user"
    assert history[-1] == reply("x" * 40) and history[-2] == user("question 059")
    entry = await store.get(KEY)
    stream = await link.execute("XRANGE", store.transcript_key(entry.session_id), "-", "+")
    assert sum(len(item[1][1].encode()) + 1 for item in stream) <= 4000


@pytest_twisted.ensureDeferred
async def test_a_turn_whose_lease_was_lost_writes_nothing(link):
    store = RedisSessionStore(link)
    lock = link.key("lock", KEY)
    await link.execute("SET", lock, "token-1")
    await store.record_turn(KEY, [user("held")], lease=Lease(lock, "token-1"))
    before = await store.get(KEY)
    await link.execute("SET", lock, "token-2")          # another process took the session
    with pytest.raises(LeaseLost):
        await store.record_turn(KEY, [user("late")], usage={"input_tokens": 9},
                                lease=Lease(lock, "token-1"))
    assert await store.get(KEY) == before
    assert [r.get("content") for r in await store.load_history(KEY)][1:] == ["held"]
    await link.execute("DEL", lock)                      # expired: nobody holds it
    with pytest.raises(LeaseLost):
        await store.record_turn("agent:main:new", [user("x")], lease=Lease(lock, "token-1"))
    assert await store.get("agent:main:new") is None


def test_entries_round_trip_through_redis_json():
    from moltbot_gw.sessions.index import SessionEntry
    entry = SessionEntry("agent:main:k", "main", "abc", 1, 2, "m", 1, 2, 3)
    assert SessionEntry.from_json("agent:main:k", "main", entry.to_json()) == entry
    assert dataclasses.replace(entry, model=None).to_json()["model"] is None


@pytest_twisted.ensureDeferred
async def test_health_pings_redis_at_most_once_a_second(redis_url):
    from twisted.internet.task import Clock

    from moltbot_gw.redis.health import RedisHealth
    link = RedisLink(redis_url, reactor)
    await link.connect()
    clock = Clock()
    health = RedisHealth(link, clock)
    pings = []
    real_execute = link.execute

    def counting(*args):
        pings.append(args[0])
        return real_execute(*args)

    link.execute = counting
    assert await health.problem() is None
    both = [health.problem(), health.problem()]
    assert all(d.called for d in both) and pings == ["PING"]    # answered from the cache
    clock.advance(1.0)
    assert await health.problem() is None and pings == ["PING", "PING"]
    await link.disconnect()                                      # as if Redis were gone
    clock.advance(1.0)
    assert "not connected" in await health.problem()
