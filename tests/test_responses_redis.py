"""``/v1/responses`` state shared through Redis (issue 16): a response made on one gateway
process is continued (``previous_response_id``) and referenced (``item_reference``) on
another; ``store: false`` keeps nothing anywhere; the count bound holds across processes;
Redis gone is a 503 within the command bound.

Two real gateways in the test process (two ports, two RedisLinks, one key prefix) on a real
``redis-server``, the official ``openai`` SDK, a fake upstream that records what it was sent.
"""
from __future__ import annotations

import copy

import pytest_twisted
from twisted.internet.defer import Deferred

from .chat_helpers import BETA_PROMPT, http, no_leftovers  # noqa: F401
from .test_fairness import within
from .test_responses import assert_error, post, rconfig, response_json, sdk, upstream_messages


def on_redis(raw: dict, url: str, prefix: str, **redis) -> dict:
    """``raw`` with the Redis store backend under the test's own key prefix."""
    raw = copy.deepcopy(raw)
    raw.setdefault("session", {})["store"] = {
        "backend": "redis", "redis": {"url": url, "keyPrefix": prefix, **redis}}
    return raw


async def two_gateways(start_gateway, raw, redis_url, redis_prefix, **redis):
    a = await start_gateway(on_redis(raw, redis_url, redis_prefix, **redis))
    b = await start_gateway(on_redis(raw, redis_url, redis_prefix, **redis))
    return a, b


@pytest_twisted.ensureDeferred
async def test_previous_response_id_made_on_a_continues_on_b(start_gateway, upstream,
                                                             redis_url, redis_prefix):
    a, b = await two_gateways(start_gateway, rconfig(upstream), redis_url, redis_prefix)
    upstream.queue(text="R1").queue(text="R2")
    first = await sdk(a, lambda c: c.responses.create(model="moltbot:beta", input="first"))
    second = await sdk(b, lambda c: c.responses.create(
        model="moltbot:beta", input="second", previous_response_id=first.id))
    assert second.output_text == "R2"
    assert upstream_messages(upstream) == [
        {"role": "system", "content": BETA_PROMPT},
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "second"}]


@pytest_twisted.ensureDeferred
async def test_item_reference_made_on_a_resolves_on_b(start_gateway, upstream, http,
                                                      redis_url, redis_prefix):
    a, b = await two_gateways(start_gateway, rconfig(upstream), redis_url, redis_prefix)
    upstream.queue(text="R1").queue(text="R2")
    first = await sdk(a, lambda c: c.responses.create(model="moltbot:beta", input="first"))
    _, body = await post(http, b, {"model": "moltbot:beta", "input": [
        {"role": "user", "content": "first"},
        {"type": "item_reference", "id": first.output[0].id},
        {"role": "user", "content": "more"}]})
    assert response_json(body)["output"][0]["content"][0]["text"] == "R2"
    assert upstream_messages(upstream)[1:] == [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "more"}]


@pytest_twisted.ensureDeferred
async def test_store_false_on_a_is_404_on_b(start_gateway, upstream, http, redis_url,
                                            redis_prefix):
    a, b = await two_gateways(start_gateway, rconfig(upstream), redis_url, redis_prefix)
    upstream.queue(text="R1")
    _, body = await post(http, a, {"model": "moltbot:beta", "input": "hi", "store": False})
    first = response_json(body)
    response, body = await post(http, b, {"model": "moltbot:beta", "input": "again",
                                          "previous_response_id": first["id"]})
    assert_error(response, body, 404, param="previous_response_id",
                 code="previous_response_not_found")
    assert len(upstream.requests) == 1


@pytest_twisted.ensureDeferred
async def test_the_count_bound_holds_across_processes(start_gateway, upstream, http,
                                                      redis_url, redis_prefix):
    raw = rconfig(upstream)
    raw["gateway"]["http"]["endpoints"]["responses"]["maxStoredResponses"] = 2
    a, b = await two_gateways(start_gateway, raw, redis_url, redis_prefix)
    ids = []
    for n, gw in enumerate((a, b, a)):
        upstream.queue(text=f"R{n}")
        _, body = await post(http, gw, {"model": "moltbot:beta", "input": f"q{n}"})
        ids.append(response_json(body)["id"])
    upstream.queue(text="later")
    # a made the oldest and holds two, yet the oldest of the three went for everyone ...
    response, body = await post(http, a, {"model": "moltbot:beta", "input": "x",
                                          "previous_response_id": ids[0]})
    assert_error(response, body, 404, param="previous_response_id")
    # ... and the one b made is known to a
    response, body = await post(http, a, {"model": "moltbot:beta", "input": "x",
                                          "previous_response_id": ids[1]})
    assert response.code == 200, body


@pytest_twisted.ensureDeferred
async def test_redis_down_is_a_503_within_the_command_bound(start_gateway, upstream, http,
                                                            private_redis, redis_prefix):
    gw = await start_gateway(on_redis(rconfig(upstream), private_redis.url, redis_prefix,
                                      commandTimeoutSeconds=0.5))
    upstream.queue(text="R1")
    _, body = await post(http, gw, {"model": "moltbot:beta", "input": "first"})
    first = response_json(body)
    private_redis.stop()
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "again",
                                           "previous_response_id": first["id"]})
    error = assert_error(response, body, 503, code="service_unavailable")
    assert "Redis" in error["message"] and "127.0.0.1" not in error["message"]
    assert len(upstream.requests) == 1


@pytest_twisted.ensureDeferred
async def test_redis_lost_during_a_run_still_gives_the_answer(start_gateway, upstream, http,
                                                              private_redis, redis_prefix):
    gw = await start_gateway(on_redis(rconfig(upstream), private_redis.url, redis_prefix,
                                      commandTimeoutSeconds=0.5, connectTimeoutSeconds=0.5))
    upstream.queue(text="made before Redis went", chunks=2, delay=0.5)
    answer = Deferred.fromCoroutine(post(http, gw, {"model": "moltbot:beta", "input": "hi"}))
    await within(upstream.wait_for_request(1))
    private_redis.stop()
    response, body = await answer
    assert response.code == 200, body
    assert response_json(body)["output"][0]["content"][0]["text"] == "made before Redis went"


@pytest_twisted.ensureDeferred
async def test_a_deeply_nested_body_naming_an_id_is_a_400_not_a_500(start_gateway, http):
    # the item references are looked up before the parse: that look-up must not crash on it
    gw = await start_gateway(rconfig())
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"model": "moltbot", "input": [{"id": "x", "deep": ' + deep + b"}]}"
    response, body = await post(http, gw, data=body)
    assert_error(response, body, 400, code="invalid_json")
