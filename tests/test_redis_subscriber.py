"""The gateway's pub/sub connection (moltbot_gw/redis/subscriber.py) against a real
redis-server: a listener is subscribed when ``listen`` returns, even when another listener of
the channel started the subscription; and a listener gone stops getting messages."""
from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from moltbot_gw.redis import RedisLink
from moltbot_gw.redis.subscriber import RedisSubscriber


@pytest_twisted.ensureDeferred
async def test_every_listener_is_subscribed_when_listen_returns(redis_url, redis_prefix):
    link = RedisLink(redis_url, reactor, key_prefix=redis_prefix, command_timeout=2)
    await link.connect()
    subscriber = RedisSubscriber(link, reactor)
    subscriber.start()
    channel = link.key("news")
    first, second = [], []
    try:
        # The second joins the subscription the first is still making; when its listen
        # returns, Redis has confirmed it.
        making = Deferred.fromCoroutine(subscriber.listen(channel, first.append))
        await subscriber.listen(channel, second.append)
        assert await link.execute("PUBLISH", channel, json.dumps({"n": 1})) == 1
        await making
        for _ in range(100):
            if first and second:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert first == second == [{"n": 1}]
        subscriber.unlisten(channel, first.append)
        subscriber.unlisten(channel, second.append)
        for _ in range(100):
            if await link.execute("PUBLISH", channel, json.dumps({"n": 2})) == 0:
                break
            await deferLater(reactor, 0.02, lambda: None)
        else:
            raise AssertionError("still subscribed after every listener left")
        assert first == second == [{"n": 1}]
    finally:
        await subscriber.stop()
        await link.disconnect()
