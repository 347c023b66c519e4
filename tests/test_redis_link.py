"""The Redis connection every shared component uses: commands against a real redis-server,
scripts, the time bound when Redis is gone, recovery when it is back, and a password never
shown."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

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
