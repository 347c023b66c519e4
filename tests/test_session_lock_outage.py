"""The session lock across a Redis outage (moltbot_gw/redis/session_lock.py): a lock this
process could not release while Redis was down is freed by its next run of the session once
Redis is back, instead of that run waiting out the whole lease."""
from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from moltbot_gw.redis import RedisUnavailable

from .test_session_lock import SESSION, Process

LEASE = 30.0          # the default lockLeaseSeconds: far longer than the wait allowed below


@pytest_twisted.ensureDeferred
async def test_a_lock_not_released_during_an_outage_is_freed_by_the_next_run(private_redis):
    process = await Process(private_redis.url, "outage:", LEASE, command_timeout=0.5).start()
    try:
        lease = await process.locks.acquire(SESSION)
        await threads.deferToThread(private_redis.stop)
        await lease.release()                    # never fails; Redis did not hear it
        try:
            await process.locks.acquire(SESSION)
        except RedisUnavailable:
            pass                                 # Redis down: fails within the bound
        else:
            raise AssertionError("took the lock without Redis")
        await threads.deferToThread(private_redis.start)       # AOF: the lock is still there
        back_at = reactor.seconds()
        while True:
            attempt = process.locks.acquire(SESSION)
            attempt.addTimeout(5, reactor)
            try:
                again = await attempt
                break
            except RedisUnavailable:             # the pool is still reconnecting
                assert reactor.seconds() - back_at < 10
                await deferLater(reactor, 0.2, lambda: None)
        assert reactor.seconds() - back_at < 10   # not the 30 s lease
        await again.release()
    finally:
        await process.stop()
