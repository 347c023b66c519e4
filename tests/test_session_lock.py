"""The cross-process session lock (moltbot_gw/redis/session_lock.py) against a real
redis-server: two ``SessionLocks`` on two ``RedisLink``s stand for two gateway processes."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater

from moltbot_gw.redis import RedisLink, RedisUnavailable
from moltbot_gw.redis.session_lock import SessionLocks

SESSION = "agent:main:openai:alice"


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


class Process:
    """One gateway process's link and locks."""

    def __init__(self, url: str, prefix: str, lease: float, command_timeout: float = 2):
        self.link = RedisLink(url, reactor, key_prefix=prefix, command_timeout=command_timeout,
                              connect_timeout=command_timeout, pool_size=2)
        self.locks = SessionLocks(self.link, lease, reactor)

    async def start(self) -> "Process":
        await self.link.connect()
        self.locks.start()
        return self

    async def stop(self) -> None:
        await self.locks.close()
        await self.link.disconnect()


@pytest_twisted.async_yield_fixture
async def processes(redis_url, redis_prefix):
    """``await processes(lease)`` → a started Process; all stopped after the test."""
    made: list[Process] = []

    async def make(lease: float) -> Process:
        process = Process(redis_url, redis_prefix, lease)
        made.append(process)
        return await process.start()

    yield make
    for process in made:
        await process.stop()


async def listening(process: Process, subscribers: int) -> None:
    """Wait until the release channel has this many subscribers (pub/sub is ready)."""
    for _ in range(200):
        answer = await process.link.execute("PUBSUB", "NUMSUB", process.locks.channel)
        if int(answer[1]) >= subscribers:
            return
        await sleep(0.01)
    pytest.fail("the release subscribers never subscribed")


@pytest_twisted.ensureDeferred
async def test_one_holder_at_a_time_and_a_release_hands_over_at_once(processes):
    a, b = await processes(10), await processes(10)
    await listening(a, 2)
    held = await a.locks.acquire(SESSION)
    waiting = b.locks.acquire(SESSION)
    await sleep(0.5)
    assert not waiting.called                  # B waits while A holds the session
    released_at = reactor.seconds()
    await held.release()
    taken = await waiting
    # pub/sub woke B: not the lease (10 s) nor even B's retry timer (lease/4 = 2.5 s)
    assert reactor.seconds() - released_at < 1.5
    assert taken.fence > held.fence            # the fencing number grows
    assert await b.link.execute("GET", taken.key) == taken.token
    await taken.release()
    assert await b.link.execute("EXISTS", taken.key) == 0


@pytest_twisted.ensureDeferred
async def test_a_dead_holder_frees_the_session_when_its_lease_expires_and_not_before(processes):
    a, b = await processes(1), await processes(1)
    held = await a.locks.acquire(SESSION)
    acquired_at = reactor.seconds()
    await a.stop()                             # dies: no release, no more renewals
    taken = await b.locks.acquire(SESSION)
    waited = reactor.seconds() - acquired_at
    assert 0.9 <= waited < 3, waited
    assert taken.fence == held.fence + 1
    await taken.release()


@pytest_twisted.ensureDeferred
async def test_renewal_keeps_a_live_holder_past_its_lease(processes):
    a, b = await processes(1.5), await processes(1.5)
    held = await a.locks.acquire(SESSION)
    waiting = b.locks.acquire(SESSION)
    await sleep(3.5)                           # over two leases
    assert not waiting.called and not held.lost
    assert await a.link.execute("GET", held.key) == held.token
    await held.release()
    taken = await waiting
    await taken.release()


@pytest_twisted.ensureDeferred
async def test_a_renewal_that_finds_the_lock_gone_marks_the_lease_lost(processes):
    a = await processes(1)
    held = await a.locks.acquire(SESSION)
    await a.link.execute("DEL", held.key)      # as after the lease ran out
    await a.link.execute("SET", held.key, "99:someone-else", "PX", 5000)
    for _ in range(100):
        if held.lost:
            break
        await sleep(0.05)
    assert held.lost
    await held.release()                       # not ours: left alone
    assert await a.link.execute("GET", held.key) == "99:someone-else"


@pytest_twisted.ensureDeferred
async def test_cancelling_a_wait_leaves_nothing_behind(processes):
    a, b = await processes(10), await processes(10)
    held = await a.locks.acquire(SESSION)
    waiting = b.locks.acquire(SESSION)
    await sleep(0.3)
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    assert b.locks._wakers == {}
    # a try cancelled while Redis grants it gives the lock back
    await held.release()
    granted = b.locks.acquire(SESSION)
    granted.cancel()
    with pytest.raises(CancelledError):
        await granted
    again = a.locks.acquire(SESSION)
    taken = await again
    await taken.release()
    # the leak check (conftest) fails this test if a timer or socket is left


@pytest_twisted.ensureDeferred
async def test_acquire_fails_as_unavailable_when_redis_is_gone(private_redis, redis_prefix):
    process = Process(private_redis.url, redis_prefix, 10, command_timeout=0.5)
    await process.start()
    try:
        private_redis.stop()
        with pytest.raises(RedisUnavailable):
            await process.locks.acquire(SESSION)
    finally:
        await process.stop()
