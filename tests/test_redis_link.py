"""The Redis connection every shared component uses: commands against a real redis-server,
scripts, the time bound when Redis is gone, recovery when it is back, and a password never
shown."""
from __future__ import annotations

import gc
import signal

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from moltbot_gw.redis import RedisLink, RedisUnavailable, masked_url
from moltbot_gw.redis.connection import LuaScript

INCR_BY_TWO = LuaScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")


def test_masked_url_hides_the_password_and_keeps_the_rest():
    assert masked_url("redis://user:s3cret@db.example:6380/2") == "redis://user:***@db.example:6380/2"
    assert masked_url("redis://:s3cret@[::1]/0") == "redis://:***@[::1]/0"
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest_twisted.ensureDeferred
async def test_commands_and_scripts_run_on_a_real_server(redis_url, redis_prefix):
    link = RedisLink(redis_url, reactor, key_prefix=redis_prefix, command_timeout=2)
    await link.connect()
    try:
        key = link.key("counter")
        assert key == redis_prefix + "counter"
        assert await link.execute("SET", key, "40") == "OK"
        assert await link.script(INCR_BY_TWO, [key], [2]) == 42
        await link.execute("SCRIPT", "FLUSH")          # as after a Redis restart
        assert await link.script(INCR_BY_TWO, [key], [2]) == 44
        await link.execute("DEL", key)
    finally:
        await link.disconnect()


@pytest_twisted.ensureDeferred
async def test_start_against_a_dead_port_names_the_masked_url_within_the_bound(private_redis):
    url = f"redis://:hunter2@127.0.0.1:{private_redis.port}/0"
    private_redis.stop()
    link = RedisLink(url, reactor, connect_timeout=0.5, command_timeout=0.5)
    started = reactor.seconds()
    with pytest.raises(RedisUnavailable) as caught:
        await link.connect()
    await link.disconnect()
    assert reactor.seconds() - started < 5
    assert "hunter2" not in str(caught.value)
    assert f"redis://:***@127.0.0.1:{private_redis.port}/0" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_redis_lost_fails_fast_and_recovers_without_a_new_link(private_redis):
    link = RedisLink(private_redis.url, reactor, connect_timeout=1, command_timeout=0.5)
    await link.connect()
    try:
        assert await link.execute("SET", "k", "v") == "OK"
        private_redis.stop()
        started = reactor.seconds()
        with pytest.raises(RedisUnavailable):
            await link.execute("GET", "k")
        assert reactor.seconds() - started < 5
        assert link.last_error
        private_redis.start()          # the same port, the same AOF
        for _ in range(100):
            try:
                if await link.execute("GET", "k") == "v":
                    break
            except RedisUnavailable:
                await deferLater(reactor, 0.1, lambda: None)
        else:
            pytest.fail("the link did not recover after Redis came back")
        assert link.last_error is None
    finally:
        await link.disconnect()



@pytest_twisted.ensureDeferred
async def test_many_commands_in_one_reactor_turn_each_get_their_own_answer(redis_url,
                                                                           redis_prefix):
    link = RedisLink(redis_url, reactor, key_prefix=redis_prefix, command_timeout=2)
    await link.connect()
    try:
        text = link.key("text")
        await link.execute("SET", text, "not a number")
        sent = [link.execute("ECHO", f"n{i}") if i % 10 else link.execute("INCR", text)
                for i in range(200)]
        answers = await DeferredList(sent, consumeErrors=True)
        for i, (ok, answer) in enumerate(answers):
            if i % 10:
                assert (ok, answer) == (True, f"n{i}")
            else:       # Redis's error answer fails that command only, not an outage
                assert not ok and answer.check(txredisapi.ResponseError)
        await link.execute("DEL", text)
    finally:
        await link.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_frozen_redis_fails_commands_within_the_bound_and_its_connection_is_replaced(
        private_redis):
    link = RedisLink(private_redis.url, reactor, connect_timeout=1, command_timeout=0.5,
                     pool_size=1)
    await link.connect()
    try:
        assert await link.execute("SET", "k", "v") == "OK"
        first_connection = await link.execute("CLIENT", "ID")
        private_redis.process.send_signal(signal.SIGSTOP)     # up, but answers nothing
        try:
            started = reactor.seconds()
            waiting = [link.execute("GET", "k") for _ in range(5)]
            outcomes = await DeferredList(waiting, consumeErrors=True)
            took = reactor.seconds() - started
            assert all(not ok and failure.check(RedisUnavailable) for ok, failure in outcomes)
            assert 0.4 < took < 2, took
            assert "within 0.5 s" in link.last_error
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        for _ in range(100):           # a new connection; the late answers went nowhere
            try:
                assert await link.execute("ECHO", "after") == "after"
                break
            except RedisUnavailable:
                await deferLater(reactor, 0.1, lambda: None)
        else:
            pytest.fail("the link did not recover after Redis answered again")
        assert await link.execute("GET", "k") == "v"
        assert await link.execute("CLIENT", "ID") != first_connection
        assert not _sweeps_pending(), "an idle link left its timer behind"
    finally:
        await link.disconnect()


def _sweeps_pending() -> list:
    return [call for call in reactor.getDelayedCalls()
            if getattr(call.func, "__qualname__", "") == "InFlight._sweep"]


@pytest_twisted.ensureDeferred
async def test_a_link_closed_while_its_pool_still_connects_logs_no_error(redis_url):
    # connect() returns once one connection answers; the pool's others are still starting
    errors: list[str] = []

    def observe(event: dict) -> None:
        if event.get("isError") or event.get("log_failure") is not None:
            errors.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(30):
            link = RedisLink(redis_url, reactor, pool_size=8)
            await link.connect()
            await link.disconnect()
            del link
            gc.collect()        # an unhandled failure in a Deferred is logged when collected
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == []
