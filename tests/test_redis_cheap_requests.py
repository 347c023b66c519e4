"""What a request costs on the Redis backend (issue 16, "make the Redis backend cheap per
request"): a real gateway on a real Redis; the keys and commands Redis saw tell what the
gateway asked of it."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.task import deferLater

from moltbot_gw.config import SessionConfig
from moltbot_gw.redis import RedisLink
from moltbot_gw.sessions.lease import LeaseLost
from moltbot_gw.sessions.redis_store import RedisSessionStore

from .chat_helpers import PATH, config, http  # noqa: F401
from .support.waiting import until
from .test_client_slots_redis import CLIENT, Process
from .test_fairness import within
from .test_session_lock import Process as LockProcess


SESSION = "agent:beta:openai-user:alice"


def redis_config(up, url: str, prefix: str) -> dict:
    raw = config(up)
    raw["session"] = {"store": {"backend": "redis", "redis": {"url": url, "keyPrefix": prefix}}}
    return raw


async def ask(http, gw, user=None):  # noqa: F811
    body: dict = {"model": "moltbot:beta", "messages": [{"role": "user", "content": "hi"}]}
    if user is not None:
        body["user"] = user
    response = await http.post(gw.url + PATH, json.dumps(body).encode(),
                               headers={"Content-Type": "application/json", **gw.auth_headers})
    return response.code, json.loads(await response.content())


async def keys_of(redis_url: str, prefix: str, kind: str) -> list:
    link = RedisLink(redis_url, reactor, key_prefix=prefix)
    await link.connect()
    try:
        return sorted(await link.execute("KEYS", link.key(kind, "*")))
    finally:
        await link.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_stateless_request_takes_no_cross_process_session_lock(
        start_gateway, http, upstream, redis_url, redis_prefix):  # noqa: F811
    gw = await start_gateway(redis_config(upstream, redis_url, redis_prefix))
    for _ in range(3):
        code, body = await ask(http, gw)
        assert code == 200, body
    # every lock acquisition leaves its session's fence counter behind (for 30 days)
    assert await keys_of(redis_url, redis_prefix, "fence") == []
    code, body = await ask(http, gw, user="alice")       # a stored session still locks
    assert code == 200, body
    assert await keys_of(redis_url, redis_prefix, "fence") == [
        redis_prefix + "fence:agent:beta:openai-user:alice"]


async def publishes(link: RedisLink) -> int:
    """PUBLISH calls the server ran so far (a script's included)."""
    info = await link.execute("INFO", "commandstats")
    for row in info.splitlines():
        if row.startswith("cmdstat_publish:"):
            return int(row.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def until_free(link: RedisLink) -> None:
    for _ in range(500):
        if not await link.execute("ZCARD", link.key("slots", CLIENT)):
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the slot was never released")


@pytest_twisted.ensureDeferred
async def test_a_client_slot_release_publishes_only_when_someone_was_refused(
        private_redis, redis_prefix):
    a = await Process(private_redis.url, redis_prefix).start()
    b = await Process(private_redis.url, redis_prefix).start()
    try:
        for _ in range(5):                      # nobody waits: no slot-free notices
            slot = await a.slots.acquire(CLIENT)
            slot.release()
            await until_free(a.link)            # (the next acquire would wait otherwise)
        held = await a.slots.acquire(CLIENT)
        waiting = b.slots.acquire(CLIENT)       # refused on b: it waits for a notice
        await until(lambda: b.slots.waiting(CLIENT) == 1)
        held.release()
        slot = await within(waiting)
        slot.release()
        assert await publishes(a.link) == 1
    finally:
        await a.stop()
        await b.stop()


class CountingLink(RedisLink):
    """A real link that counts the round trips its users make."""

    round_trips = 0

    def execute(self, *args):
        self.round_trips += 1
        return super().execute(*args)

    def script(self, script, keys, args):
        self.round_trips += 1
        return super().script(script, keys, args)


@pytest_twisted.ensureDeferred
async def test_reading_a_short_history_is_one_round_trip(redis_url, redis_prefix):
    link = CountingLink(redis_url, reactor, key_prefix=redis_prefix)
    await link.connect()
    try:
        store = RedisSessionStore(link)
        key = "agent:beta:openai-user:alice"
        assert await store.load_history(key) == []
        turn = [{"type": "message", "role": "user", "content": "hi"},
                {"type": "message", "role": "assistant", "content": "hello"}]
        await store.record_turn(key, turn)
        link.round_trips = 0
        history = await store.load_history(key)
        assert [(r.get("role"), r.get("content")) for r in history][-2:] == [
            ("user", "hi"), ("assistant", "hello")]
        assert link.round_trips == 1       # the entry and the newest page together
    finally:
        await link.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_session_lock_release_publishes_only_when_someone_found_it_taken(
        private_redis, redis_prefix):
    a = await LockProcess(private_redis.url, redis_prefix, 30).start()
    b = await LockProcess(private_redis.url, redis_prefix, 30).start()
    try:
        for _ in range(5):                      # one run after the other: nobody waits
            lease = await a.locks.acquire(SESSION)
            await lease.release()
        assert await publishes(a.link) == 0
        held = await a.locks.acquire(SESSION)
        waiting = b.locks.acquire(SESSION)
        waited = a.link.key("lock-waited", SESSION)
        for _ in range(500):                    # b asked and found the lock taken
            if await a.link.execute("EXISTS", waited):
                break
            await deferLater(reactor, 0.01, lambda: None)
        await held.release()
        taken = await within(waiting)
        assert await publishes(a.link) == 1
        await taken.release()
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_the_turns_write_frees_the_session_lock_and_wakes_a_waiter(
        private_redis, redis_prefix):
    a = await LockProcess(private_redis.url, redis_prefix, 30).start()
    b = await LockProcess(private_redis.url, redis_prefix, 30).start()
    counting = CountingLink(private_redis.url, reactor, key_prefix=redis_prefix)
    await counting.connect()
    try:
        store = RedisSessionStore(counting)
        await store.record_turn(SESSION, turn("first"))     # (a new session also prunes)
        lease = await a.locks.acquire(SESSION)
        waiting = b.locks.acquire(SESSION)      # another process asks, finds it taken
        waited = a.link.key("lock-waited", SESSION)
        for _ in range(500):
            if await a.link.execute("EXISTS", waited):
                break
            await deferLater(reactor, 0.01, lambda: None)
        counting.round_trips = 0
        await store.record_turn(SESSION, turn("last write"), lease=lease, release=True)
        assert await a.link.execute("GET", lease.key) != lease.token   # freed with the turn
        taken = await within(waiting)           # and the waiter heard it
        assert taken.fence == lease.fence + 1
        assert await publishes(a.link) == 1
        await lease.release()                   # the run's own release: nothing to send
        assert counting.round_trips == 1 and await publishes(a.link) == 1
        assert await a.link.execute("GET", taken.key) == taken.token
        history = await store.load_history(SESSION)
        assert history[-1]["content"] == "re: last write"
        await store.record_turn(SESSION, turn("after"), lease=taken)   # release=False
        assert await a.link.execute("GET", taken.key) == taken.token  # still held
        await taken.release()
        assert await a.link.execute("EXISTS", taken.key) == 0
    finally:
        await counting.disconnect()
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_fenced_turn_frees_nothing(private_redis, redis_prefix):
    a = await LockProcess(private_redis.url, redis_prefix, 30).start()
    try:
        store = RedisSessionStore(a.link)
        lease = await a.locks.acquire(SESSION)
        await a.link.execute("SET", lease.key, "another-holder")   # taken over meanwhile
        with pytest.raises(LeaseLost):
            await store.record_turn(SESSION, turn("late"), lease=lease, release=True)
        assert await a.link.execute("GET", lease.key) == "another-holder"
        await lease.release()                   # compare-and-delete: not ours, left alone
        assert await a.link.execute("GET", lease.key) == "another-holder"
        await a.link.execute("DEL", lease.key)
    finally:
        await a.stop()


@pytest_twisted.ensureDeferred
async def test_replies_are_parsed_by_hiredis_and_numbers_stay_strings(redis_url, redis_prefix):
    # txredisapi's pure-Python parser spends ~2 ms of CPU on a 64-record history page;
    # hiredis (install_requires) a seventh of that
    assert txredisapi.RedisProtocol is txredisapi.HiredisProtocol
    link = RedisLink(redis_url, reactor, key_prefix=redis_prefix)
    await link.connect()
    try:
        key = link.key("numbers")
        assert await link.execute("SET", key, "0123") == "OK"
        assert await link.execute("GET", key) == "0123"       # convertNumbers=False holds
        assert await link.execute("DEL", key) == 1
        assert await link.execute("GET", key) is None
        stored = await link.execute("XADD", key, "*", "r", "7")
        assert await link.execute("XRANGE", key, "-", "+") == [[stored, ["r", "7"]]]
    finally:
        await link.disconnect()


def turn(text: str) -> list:
    return [{"type": "message", "role": "user", "content": text},
            {"type": "message", "role": "assistant", "content": "re: " + text}]


@pytest_twisted.ensureDeferred
async def test_a_long_history_is_read_once_then_only_what_any_process_appended(
        redis_url, redis_prefix):
    a_link = CountingLink(redis_url, reactor, key_prefix=redis_prefix)
    b_link = RedisLink(redis_url, reactor, key_prefix=redis_prefix)
    await a_link.connect()
    await b_link.connect()
    try:
        a, b = RedisSessionStore(a_link), RedisSessionStore(b_link)   # two processes
        for i in range(60):                                  # 121 records: two pages
            await b.record_turn(SESSION, turn(f"t{i}"))
        first = await a.load_history(SESSION)
        assert len(first) == 121
        await b.record_turn(SESSION, turn("from b"))         # the other process appends
        a_link.round_trips = 0
        second = await a.load_history(SESSION)
        assert a_link.round_trips == 1                       # not the two pages again
        assert second == await RedisSessionStore(b_link).load_history(SESSION)
        assert [r.get("content") for r in second[-2:]] == ["from b", "re: from b"]
    finally:
        await a_link.disconnect()
        await b_link.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_cached_tail_is_dropped_when_another_process_compacts_or_resets(
        redis_url, redis_prefix):
    a_link = RedisLink(redis_url, reactor, key_prefix=redis_prefix)
    await a_link.connect()
    try:
        a = RedisSessionStore(a_link)
        b = RedisSessionStore(a_link, SessionConfig(maxTranscriptBytes=2000))
        for i in range(10):
            await a.record_turn(SESSION, turn(f"old {i}"))
        assert len(await a.load_history(SESSION)) == 21       # cached now
        for i in range(20):                                  # b compacts the transcript
            await b.record_turn(SESSION, turn(f"new {i}"))
        after = await a.load_history(SESSION)
        assert after == await RedisSessionStore(a_link).load_history(SESSION)
        assert not any("old" in str(r.get("content")) for r in after)
        await b.reset(SESSION)
        await b.record_turn(SESSION, turn("fresh"))
        assert [r.get("content") for r in await a.load_history(SESSION)
                if r.get("type") == "message"] == ["fresh", "re: fresh"]
    finally:
        await a_link.disconnect()


@pytest_twisted.ensureDeferred
async def test_slots_asked_and_freed_in_one_reactor_turn_share_one_round_trip(
        redis_url, redis_prefix):
    """Under load many runs of a client start and end at once: their slots go to Redis
    together, releases first, admissions in order up to the limit, the rest waiting."""
    a = Process(redis_url, redis_prefix, per_client=2, queue=4)
    a.link = a.slots.redis = CountingLink(redis_url, reactor, key_prefix=redis_prefix)
    await a.start()
    try:
        a.link.round_trips = 0
        first, second, third = (a.slots.acquire(CLIENT) for _ in range(3))
        one, two = await within(first), await within(second)
        await until(lambda: a.slots.waiting(CLIENT) == 1)          # over the limit: queued
        assert a.link.round_trips == 1
        a.link.round_trips = 0
        one.release()
        fourth = a.slots.acquire(CLIENT)        # behind the waiter, in this process's queue
        three = await within(third)             # the release let the waiter in
        assert a.link.round_trips == 2          # the release, then the waiter's admission
        two.release()
        three.release()
        four = await within(fourth)
        four.release()
        await until_free(a.link)
    finally:
        await a.stop()
