"""A gateway on Redis listens to the other processes through ONE pub/sub connection
(moltbot_gw/redis/subscriber.py), shared by auth locks, freed client slots, session lock
releases and run aborts, and that connection subscribes to all of them again after Redis
restarts. Counted on a real ``redis-server`` of the test's own (``CLIENT LIST``)."""
from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from moltbot_gw.redis import RedisLink

from .support.waiting import until
from .test_auth_limiter_redis import limited_config

CHANNELS = ("auth-locks", "slot-free", "lock-released", "run-abort")


async def subscriber_connections(link: RedisLink) -> list[str]:
    """The ``CLIENT LIST`` lines of connections subscribed to a channel or pattern."""
    listing = await link.execute("CLIENT", "LIST")
    if isinstance(listing, bytes):
        listing = listing.decode()
    fields = [dict(f.split("=", 1) for f in line.split() if "=" in f)
              for line in listing.splitlines()]
    return [f["addr"] for f in fields
            if int(f.get("sub", 0)) > 0 or int(f.get("psub", 0)) > 0]


async def all_channels_heard(link: RedisLink, prefix: str) -> None:
    """Wait until every channel of the gateway has a subscriber."""
    for _ in range(500):
        try:
            answer = await link.execute("PUBSUB", "NUMSUB",
                                        *[prefix + name for name in CHANNELS])
        except Exception:
            answer = None
        if answer and all(int(n) >= 1 for n in answer[1::2]):
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"not every channel is subscribed: {answer}")


@pytest_twisted.ensureDeferred
async def test_a_gateway_on_redis_holds_one_subscriber_connection_also_after_a_restart(
        start_gateway, private_redis, redis_prefix):
    gw = await start_gateway(limited_config(private_redis.url, redis_prefix,
                                            commandTimeoutSeconds=1,
                                            connectTimeoutSeconds=1))
    link = RedisLink(private_redis.url, reactor, command_timeout=2, pool_size=1)
    await link.connect()
    try:
        prefix = gw.service.redis.key("")
        await all_channels_heard(link, prefix)
        await until(lambda: gw.service.redis_subscriber.connected)
        assert len(await subscriber_connections(link)) == 1

        private_redis.stop()
        await until(lambda: not gw.service.redis_subscriber.connected)
        private_redis.start()
        await all_channels_heard(link, prefix)
        await until(lambda: gw.service.redis_subscriber.connected)
        assert len(await subscriber_connections(link)) == 1
    finally:
        await link.disconnect()
