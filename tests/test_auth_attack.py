"""Auth under attack: a flood of wrong tokens from one address is throttled while others
keep working, the limiter's memory stays bounded, and X-Forwarded-For is believed only
from trusted proxies."""
from __future__ import annotations

import tracemalloc

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool

from moltbot_gw.auth import FailureLimiter

from .conftest import CHAT_ENABLED

# Loopback clients are exempt from the lockout by default; these tests are about the lockout.
LOCKOUT_ON_LOOPBACK = {"gateway": {**CHAT_ENABLED["gateway"],
                                   "auth": {"rateLimit": {"exemptLoopback": False}}}}


def client(bind_host: str) -> treq.client.HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=True)
    return treq.client.HTTPClient(Agent(reactor, pool=pool, bindAddress=(bind_host, 0))), pool


@pytest_twisted.ensureDeferred
async def test_a_thousand_wrong_tokens_are_throttled_while_the_right_one_works_elsewhere(
        start_gateway):
    gw = await start_gateway(LOCKOUT_ON_LOOPBACK)
    attacker, attacker_pool = client("127.0.0.1")
    friend, friend_pool = client("127.0.0.2")
    codes = []
    retry_after = set()
    try:
        for i in range(1000):
            response = await attacker.get(gw.url + "/v1/models",
                                          headers={"Authorization": f"Bearer guess-{i}"})
            codes.append(response.code)
            if response.code == 429:
                retry_after.add(int(response.headers.getRawHeaders("retry-after")[0]))
            await response.content()
            if i % 100 == 0:  # the right token from another address, all along
                ok = await friend.get(gw.url + "/v1/models", headers=gw.auth_headers)
                assert ok.code == 200
                await ok.content()
        # even the right token is refused from the throttled address: guessing gains nothing
        blocked = await attacker.get(gw.url + "/v1/models", headers=gw.auth_headers)
        assert blocked.code == 429
        await blocked.content()
    finally:
        await attacker_pool.closeCachedConnections()
        await friend_pool.closeCachedConnections()
    assert codes[:10] == [401] * 10 and codes[10:] == [429] * 990
    assert retry_after and all(0 < seconds <= 60 for seconds in retry_after)


def test_limiter_memory_stays_bounded_with_100000_addresses():
    clock = Clock()
    limiter = FailureLimiter(clock, max_failures=10, window=60.0, max_entries=100_000)
    tracemalloc.start()
    try:
        for i in range(150_000):
            limiter.record_failure(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
            if i == 20_000:
                clock.advance(30)
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(limiter) == 100_000                      # the oldest were dropped
    assert size < 40 * 1024 * 1024                      # about 25 MB for 100k entries
    clock.advance(61)
    limiter.record_failure("192.0.2.1")                 # entries expire as new ones arrive
    assert len(limiter) == 1


@pytest_twisted.ensureDeferred
async def test_forwarded_for_counts_per_client_only_behind_a_trusted_proxy(start_gateway):
    raw = {"gateway": {**CHAT_ENABLED["gateway"], "trustedProxies": ["127.0.0.1/32"]}}
    gw = await start_gateway(raw)
    proxy, pool = client("127.0.0.1")
    try:
        for i in range(12):  # twelve clients behind the proxy, one wrong token each
            response = await proxy.get(gw.url + "/v1/models", headers={
                "Authorization": "Bearer wrong", "X-Forwarded-For": f"198.51.100.{i}"})
            assert response.code == 401
            await response.content()
        for _ in range(10):  # one client behind the proxy guessing
            response = await proxy.get(gw.url + "/v1/models", headers={
                "Authorization": "Bearer wrong", "X-Forwarded-For": "203.0.113.9"})
            await response.content()
        throttled = await proxy.get(gw.url + "/v1/models", headers={
            "Authorization": "Bearer wrong", "X-Forwarded-For": "203.0.113.9"})
        assert throttled.code == 429
        await throttled.content()
        other = await proxy.get(gw.url + "/v1/models", headers={
            **gw.auth_headers, "X-Forwarded-For": "198.51.100.200"})
        assert other.code == 200
        await other.content()
    finally:
        await pool.closeCachedConnections()
