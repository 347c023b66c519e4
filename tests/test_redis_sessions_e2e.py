"""Sessions in Redis, end to end: two gateways sharing one Redis continue each other's
conversations (issue 16, acceptance 1); Redis stopped answers 503 within the bound and
``/health`` says so; Redis back, the same gateways recover and no acknowledged turn is lost
(acceptance 5)."""
from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from moltbot_gw.redis import RedisLink
from moltbot_gw.ws.client import GatewayClient, GatewayError

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401  (fixtures)
from .conftest import TOKEN

COMMAND_TIMEOUT = 0.5


def redis_config(up, url, prefix):
    raw = config(up)
    raw["session"] = {"store": {"backend": "redis", "redis": {
        "url": url, "keyPrefix": prefix, "commandTimeoutSeconds": COMMAND_TIMEOUT,
        "connectTimeoutSeconds": 1}}}
    return raw


def turn(text):
    return {"model": "moltbot:beta", "user": "alice",
            "messages": [{"role": "user", "content": text}]}


async def chat(http, gw, body):
    response = await http.post(gw.url + PATH, json=body, headers=gw.auth_headers)
    return response.code, await response.json()


async def list_sessions(gw):
    client = await GatewayClient.connect(reactor, gw.ws_url, {"token": TOKEN}, timeout=10)
    try:
        return (await client.call("sessions.list", {}))["sessions"]
    finally:
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_two_gateways_on_one_redis_continue_one_conversation(
        start_gateway, upstream, http, redis_url, redis_prefix):
    a = await start_gateway(redis_config(upstream, redis_url, redis_prefix))
    b = await start_gateway(redis_config(upstream, redis_url, redis_prefix))
    assert a.port != b.port
    code, _ = await chat(http, a, turn("my name is Alice"))
    assert code == 200
    code, _ = await chat(http, b, turn("what is my name?"))
    assert code == 200
    sent = upstream.requests[-1].body["messages"]
    said = [(m["role"], m["content"]) for m in sent if m["role"] != "system"]
    assert said[0] == ("user", "my name is Alice")
    assert said[-1] == ("user", "what is my name?")
    assert said[1][0] == "assistant"
    for gw in (a, b):
        sessions = await list_sessions(gw)
        assert [s["key"] for s in sessions] == ["agent:beta:openai-user:alice"]
    # and nothing reached the state dir: the transcript is a stream in Redis
    assert not list(a.service.config.state_dir.glob("agents/*/sessions/*.jsonl"))


@pytest_twisted.ensureDeferred
async def test_redis_lost_answers_503_within_the_bound_and_recovers_without_restart(
        start_gateway, upstream, http, private_redis):
    prefix = "e2e:"
    gw = await start_gateway(redis_config(upstream, private_redis.url, prefix))
    acknowledged = []
    for i in range(3):
        code, _ = await chat(http, gw, turn(f"turn {i}"))
        assert code == 200
        acknowledged.append(f"turn {i}")
    health = await http.get(gw.url + "/health")
    assert health.code == 200 and await health.json() == {"ok": True}

    private_redis.stop()
    started = reactor.seconds()
    code, body = await chat(http, gw, turn("while down"))
    elapsed = reactor.seconds() - started
    assert code == 503, body
    assert body["error"]["type"] == "api_error"
    assert body["error"]["code"] == "service_unavailable"
    assert body["error"]["message"].startswith("the gateway's shared state (Redis) is unavailable")
    # history read, then the failed turn's record: two bounded commands at most
    assert elapsed < 4 * COMMAND_TIMEOUT + 2
    await deferLater(reactor, 1.1, lambda: None)   # past /health's once-a-second cache
    health = await http.get(gw.url + "/health")
    assert health.code == 503
    reported = await health.json()
    assert reported["ok"] is False and reported["redis"]
    try:
        await list_sessions(gw)
    except GatewayError as error:
        assert error.code == "UNAVAILABLE"
        assert "shared state (Redis) is unavailable" in error.message
    else:
        raise AssertionError("sessions.list succeeded without Redis")

    private_redis.start()
    for _attempt in range(40):      # the pool reconnects by itself (at most every 2 s)
        code, body = await chat(http, gw, turn("back again"))
        if code == 200:
            break
        assert code == 503, body
        await deferLater(reactor, 0.25, lambda: None)
    assert code == 200, body
    acknowledged.append("back again")

    link = RedisLink(private_redis.url, reactor, key_prefix=prefix)
    await link.connect()
    try:
        raw = await link.execute("HGET", link.key("sessions", "beta"),
                                 "agent:beta:openai-user:alice")
        session_id = json.loads(raw)["sessionId"]
        stream = await link.execute("XRANGE", link.key("transcript", session_id), "-", "+")
    finally:
        await link.disconnect()
    users = [json.loads(item[1][1]) for item in stream]
    users = [r["content"] for r in users if r.get("role") == "user"]
    # every acknowledged turn is stored, in order (a turn answered 503 may be stored too:
    # Redis may have applied a write whose answer came after the bound)
    remaining = iter(users)
    assert all(any(u == wanted for u in remaining) for wanted in acknowledged), users
    await deferLater(reactor, 1.1, lambda: None)   # past /health's once-a-second cache
    health = await http.get(gw.url + "/health")
    assert health.code == 200


@pytest_twisted.ensureDeferred
async def test_file_backend_health_is_unchanged(start_gateway, http):
    gw = await start_gateway(config())
    health = await http.get(gw.url + "/health")
    assert health.code == 200 and await health.json() == {"ok": True}
    assert gw.service.redis_health is None


@pytest_twisted.ensureDeferred
async def test_a_turn_redis_did_not_store_is_not_acknowledged(
        start_gateway, upstream, http, private_redis):
    gw = await start_gateway(redis_config(upstream, private_redis.url, "unstored:"))
    upstream.queue(stall_before_headers=1.0)
    answer = Deferred.fromCoroutine(chat(http, gw, turn("stored?")))
    await upstream.wait_for_request(1)     # history read; the model is answering
    private_redis.stop()
    code, body = await answer
    assert code == 503, body
    assert body["error"]["code"] == "service_unavailable"
