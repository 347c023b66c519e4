"""Per-client run concurrency counted across gateway processes through Redis (issue 16): a
client's run on one gateway holds its slot on the other too, a waiter on another process is
admitted when the holder releases, a dead holder's slot frees after its lease, a full queue is
429 and Redis gone is a 503.

Two ``RedisClientSlots`` on two RedisLinks (two processes' worth) on a real ``redis-server``,
and two real gateways with a stalling fake upstream for the end-to-end view.
"""
from __future__ import annotations

import json
import math

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from moltbot_gw.agents.client_slots import ClientBusy
from moltbot_gw.redis import RedisLink
from moltbot_gw.redis.client_slots import RedisClientSlots
from moltbot_gw.redis.notices import RedisNotices

from .chat_helpers import http, no_leftovers  # noqa: F401
from .support.waiting import hang_up, until
from .test_fairness import chat, fairness_config, within
from .test_responses_redis import on_redis
from .test_ws_protocol import open_client, upstream_config

CLIENT = "198.51.100.7"


class Process:
    """One process's worth of shared slots: its own link, notices and slots."""

    def __init__(self, url, prefix, lease=30.0, per_client=1, queue=1):
        self.link = RedisLink(url, reactor, key_prefix=prefix, command_timeout=2)
        self.notices = RedisNotices(self.link, reactor)
        self.slots = RedisClientSlots(self.link, self.notices, reactor, per_client, queue,
                                      lease)

    async def start(self):
        await self.link.connect()
        self.notices.start()
        await until(lambda: self.notices.connected)
        return self

    async def stop(self):
        self.slots.stop()
        await self.notices.stop()
        await self.link.disconnect()


def pending(d):
    """``d`` and a list that gets its slot once it has one (``d.called`` says nothing of a
    Deferred chained on another)."""
    got = []
    d.addCallback(lambda slot: got.append(slot) or slot)
    return d, got


@pytest_twisted.ensureDeferred
async def test_a_waiter_on_b_is_admitted_when_a_releases(redis_url, redis_prefix):
    a = await Process(redis_url, redis_prefix).start()
    b = await Process(redis_url, redis_prefix).start()
    try:
        held = await a.slots.acquire(CLIENT)
        waiting, got = pending(b.slots.acquire(CLIENT))   # the one slot is held on a
        await until(lambda: b.slots.waiting(CLIENT) == 1)
        other = await b.slots.acquire("203.0.113.9")  # another client is not held up
        other.release()
        with pytest.raises(ClientBusy):            # b's queue of one is full
            await b.slots.acquire(CLIENT)
        assert got == []
        held.release()
        slot = await waiting
        assert b.slots.running(CLIENT) == 1 and a.slots.running(CLIENT) == 0
        slot.release()
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_dead_holders_slot_is_freed_after_its_lease(redis_url, redis_prefix):
    a = await Process(redis_url, redis_prefix, lease=1.0).start()
    b = await Process(redis_url, redis_prefix, lease=1.0).start()
    try:
        held = await a.slots.acquire(CLIENT)
        await a.notices.stop()
        await a.link.disconnect()          # a "dies": it neither renews nor releases
        waiting, got = pending(b.slots.acquire(CLIENT))
        await until(lambda: b.slots.waiting(CLIENT) == 1)
        await until(lambda: got != [], seconds=6)
        slot = await waiting
        slot.release()
        held.release()                     # a's late release finds no link: logged, no harm
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_held_slot_outlives_its_lease_while_renewed(redis_url, redis_prefix):
    a = await Process(redis_url, redis_prefix, lease=0.6).start()
    b = await Process(redis_url, redis_prefix, lease=0.6).start()
    try:
        held = await a.slots.acquire(CLIENT)
        waiting, got = pending(b.slots.acquire(CLIENT))
        await deferLater(reactor, 2.0, lambda: None)   # three leases: renewed all along
        assert got == []
        held.release()
        slot = await waiting
        slot.release()
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_clients_run_on_a_fills_its_slot_on_b(start_gateway, http, upstream,
                                                     redis_url, redis_prefix):
    upstream.script(stall_before_headers=math.inf)
    raw = on_redis(fairness_config(upstream, per_client=1, queue=0), redis_url, redis_prefix)
    a = await start_gateway(raw)
    b = await start_gateway(raw)
    running = chat(http, a, CLIENT, "running on a")
    await within(upstream.wait_for_request(1))
    refused = await within(chat(http, b, CLIENT, "one too many, on b"))
    assert refused.code == 429
    assert refused.headers.getRawHeaders("Retry-After") == ["1"]
    error = json.loads(await refused.content())["error"]
    assert error["code"] == "too_many_concurrent_requests"
    upstream.script(stall_before_headers=0)
    other = await within(chat(http, b, "203.0.113.9", "another client"))
    assert other.code == 200
    await other.content()
    hang_up(running)


@pytest_twisted.ensureDeferred
async def test_redis_down_is_a_503_for_a_run(start_gateway, http, upstream, private_redis,
                                             redis_prefix):
    raw = on_redis(fairness_config(upstream), private_redis.url, redis_prefix,
                   commandTimeoutSeconds=0.5, connectTimeoutSeconds=0.5)
    gw = await start_gateway(raw)
    await until(lambda: gw.service.redis_notices.connected)
    private_redis.stop()
    response = await within(chat(http, gw, CLIENT, "hello"))
    assert response.code == 503
    error = json.loads(await response.content())["error"]
    assert error["code"] == "service_unavailable"
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_a_run_queued_on_b_starts_when_the_clients_run_on_a_ends(
        start_gateway, http, upstream, redis_url, redis_prefix):
    upstream.script(stall_before_headers=math.inf)
    raw = on_redis(fairness_config(upstream, per_client=1, queue=1), redis_url, redis_prefix)
    a = await start_gateway(raw)
    b = await start_gateway(raw)
    running = chat(http, a, CLIENT, "running on a")
    await within(upstream.wait_for_request(1))
    queued = chat(http, b, CLIENT, "queued on b")
    await until(lambda: b.service.client_slots.waiting(CLIENT) == 1)
    upstream.script(stall_before_headers=0)
    assert len(upstream.requests) == 1          # b's run waits for a's
    hang_up(running)                            # a's run ends: its slot frees on b too
    response = await within(queued)
    assert response.code == 200
    await response.content()
    assert [r.body["messages"][-1]["content"] for r in upstream.requests] == [
        "running on a", "queued on b"]


@pytest_twisted.ensureDeferred
async def test_redis_down_is_unavailable_for_a_websocket_run(start_gateway, upstream,
                                                             private_redis, redis_prefix):
    raw = on_redis(upstream_config(upstream), private_redis.url, redis_prefix,
                   commandTimeoutSeconds=0.5, connectTimeoutSeconds=0.5)
    gw = await start_gateway(raw)
    await until(lambda: gw.service.redis_notices.connected)
    private_redis.stop()

    def ask():
        client = open_client(gw.ws_url)
        try:
            return client.call("agent", {"message": "hello", "agentId": "main"})
        finally:
            client.close()

    reply = await threads.deferToThread(ask)
    assert not reply["ok"] and reply["error"]["code"] == "UNAVAILABLE", reply
    assert "Redis" in reply["error"]["message"]
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_a_queued_waiter_is_told_redis_is_gone_not_kept_waiting(private_redis,
                                                                       redis_prefix):
    """A run waiting for its client's slot when Redis goes away gets RedisUnavailable (a 503)
    at its next attempt, as a new run would, instead of waiting out the outage."""
    from moltbot_gw.redis import RedisUnavailable

    a = await Process(private_redis.url, redis_prefix).start()
    a.link.command_timeout = 0.5
    try:
        held = await a.slots.acquire(CLIENT)
        waiting, got = pending(a.slots.acquire(CLIENT))
        failed = []
        waiting.addErrback(lambda f: failed.append(f.value))
        await until(lambda: a.slots.waiting(CLIENT) == 1)   # refused, now in the queue
        private_redis.stop()
        started = reactor.seconds()
        await until(lambda: failed, seconds=5)
        assert isinstance(failed[0], RedisUnavailable) and not got
        assert reactor.seconds() - started < 3      # the retry (1 s) + the bound (0.5 s)
        held.release()
    finally:
        private_redis.start()
        await a.stop()


@pytest_twisted.ensureDeferred
async def test_a_slot_whose_release_an_outage_lost_is_freed_by_the_next_run(private_redis,
                                                                             redis_prefix):
    """A release Redis never heard (it was down) leaves the holder in Redis (AOF keeps it)
    for a whole lease; this process's next acquire for the client removes it first."""
    a = await Process(private_redis.url, redis_prefix, lease=30.0).start()
    a.link.command_timeout = 0.5
    try:
        held = await a.slots.acquire(CLIENT)
        private_redis.stop()
        held.release()                              # not recorded: Redis is down
        await deferLater(reactor, 0.7, lambda: None)
        private_redis.start()
        for _ in range(50):                         # the pool reconnects by itself
            try:
                await a.link.execute("PING")
                break
            except Exception:
                await deferLater(reactor, 0.1, lambda: None)
        again = await within(a.slots.acquire(CLIENT), 3)   # not after the 30 s lease
        again.release()
    finally:
        await a.stop()
