"""The failed-auth limiter counted across gateway processes through Redis (issue 16): wrong
secrets split between two gateways lock the address on both, a success resets the shared
count, a gateway started later applies the locks in force, and with Redis gone each gateway
still limits on its own.

Two real gateways in the test process sharing one ``redis-server`` under the test's key prefix;
real HTTP clients on loopback (the loopback exemption switched off).
"""
from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from moltbot_gw.redis import RedisLink

from .chat_helpers import no_leftovers  # noqa: F401
from .conftest import CHAT_ENABLED, TOKEN
from .support.waiting import until
from .test_responses_redis import on_redis

MAX_FAILURES = 4
ADDRESS = "127.0.0.1"


def limited_config(url: str, prefix: str, **redis) -> dict:
    raw = {"gateway": {**CHAT_ENABLED["gateway"], "auth": {"rateLimit": {
        "exemptLoopback": False, "maxFailures": MAX_FAILURES, "windowSeconds": 60}}}}
    return on_redis(raw, url, prefix, **redis)


async def status(http, gw, token: str) -> int:
    response = await http.get(gw.url + "/v1/models",
                              headers={"Authorization": f"Bearer {token}"})
    await response.content()
    return response.code


def locked(gw) -> bool:
    return gw.service.auth.limiter.retry_after(ADDRESS) is not None


async def shared_count(redis_url, prefix):
    link = RedisLink(redis_url, reactor, key_prefix=prefix, command_timeout=2)
    await link.connect()
    try:
        return await link.execute("GET", link.key("authfail", ADDRESS))
    finally:
        await link.disconnect()


@pytest_twisted.ensureDeferred
async def test_failures_split_across_two_gateways_lock_the_address_on_both(
        start_gateway, http, redis_url, redis_prefix):
    a = await start_gateway(limited_config(redis_url, redis_prefix))
    b = await start_gateway(limited_config(redis_url, redis_prefix))
    for n in range(MAX_FAILURES):      # 2 on each: neither reaches the limit alone
        assert await status(http, (a, b)[n % 2], "wrong") == 401
    await until(lambda: locked(a) and locked(b))
    assert await status(http, a, TOKEN) == 429     # even the right secret: no guessing
    assert await status(http, b, TOKEN) == 429


@pytest_twisted.ensureDeferred
async def test_a_success_resets_the_shared_count(start_gateway, http, redis_url, redis_prefix):
    a = await start_gateway(limited_config(redis_url, redis_prefix))
    b = await start_gateway(limited_config(redis_url, redis_prefix))
    for gw in (a, b, a):
        assert await status(http, gw, "wrong") == 401
    await until_count(redis_url, redis_prefix, "3")
    assert await status(http, a, TOKEN) == 200
    await until_count(redis_url, redis_prefix, None)
    assert await status(http, b, "wrong") == 401   # 1 since the success, not 4
    await until_count(redis_url, redis_prefix, "1")
    assert not locked(a) and not locked(b)
    assert await status(http, b, TOKEN) == 200


async def until_count(redis_url, prefix, expected):
    seen = []

    async def poll():
        seen.append(await shared_count(redis_url, prefix))
    deadline = reactor.seconds() + 10
    await poll()
    while seen[-1] != expected:
        assert reactor.seconds() < deadline, f"shared count {seen[-1]!r}, not {expected!r}"
        await poll()


@pytest_twisted.ensureDeferred
async def test_a_gateway_started_later_applies_the_locks_in_force(start_gateway, http,
                                                                  redis_url, redis_prefix):
    a = await start_gateway(limited_config(redis_url, redis_prefix))
    for _ in range(MAX_FAILURES):
        await status(http, a, "wrong")
    await until(lambda: locked(a))
    await until_count(redis_url, redis_prefix, str(MAX_FAILURES))
    later = await start_gateway(limited_config(redis_url, redis_prefix))
    await until(lambda: locked(later))
    assert await status(http, later, TOKEN) == 429
    assert 0 < later.service.auth.limiter.retry_after(ADDRESS) <= 60


@pytest_twisted.ensureDeferred
async def test_without_redis_each_gateway_still_limits_on_its_own(start_gateway, http,
                                                                  private_redis, redis_prefix):
    gw = await start_gateway(limited_config(private_redis.url, redis_prefix,
                                            commandTimeoutSeconds=0.5,
                                            connectTimeoutSeconds=0.5))
    await until(lambda: gw.service.redis_notices.connected)
    private_redis.stop()
    for _ in range(MAX_FAILURES):
        assert await status(http, gw, "wrong") == 401
    assert await status(http, gw, TOKEN) == 429      # not failed open into no limit
    other = gw.service.auth.limiter.retry_after("127.0.0.2")
    assert other is None                               # nor closed on everyone
