"""Per-session ordering across gateway processes (issue 16): two GatewayServices sharing one
Redis (same keyPrefix) in this process, a slow fake upstream, real HTTP clients. Two requests
for one session, one on each gateway, run one after the other; a run that lost its lease to
another process does not record its turn and fails 503 ``session_taken_over``."""
from __future__ import annotations

import importlib.util
import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from moltbot_gw.redis import RedisLink

from .chat_helpers import PATH, config, http  # noqa: F401

SESSION = "agent:beta:openai-user:alice"
HAS_REDIS_STORE = importlib.util.find_spec("moltbot_gw.sessions.redis_store") is not None


def redis_config(up, url: str, prefix: str, lease: float = 30) -> dict:
    raw = config(up)
    raw["session"] = {"store": {"backend": "redis", "redis": {
        "url": url, "keyPrefix": prefix, "lockLeaseSeconds": lease}}}
    return raw


async def ask(http, gw, text: str, user: str = "alice"):  # noqa: F811
    body = {"model": "moltbot:beta", "user": user,
            "messages": [{"role": "user", "content": text}]}
    response = await http.post(gw.url + PATH, json.dumps(body).encode(),
                               headers={"Content-Type": "application/json", **gw.auth_headers})
    return response.code, json.loads(await response.content())


async def two_concurrent_turns(start_gateway, http, upstream, redis_url, redis_prefix):  # noqa: F811
    """One request on each of two gateways for one session, sent together; the upstream's
    records in the order they arrived."""
    a = await start_gateway(redis_config(upstream, redis_url, redis_prefix))
    b = await start_gateway(redis_config(upstream, redis_url, redis_prefix))
    upstream.script(text="a slow answer", chunks=3, delay=0.25)
    answers = await gatherResults([Deferred.fromCoroutine(ask(http, a, "from A")),
                                    Deferred.fromCoroutine(ask(http, b, "from B"))])
    assert [code for code, _ in answers] == [200, 200], answers
    assert len(upstream.requests) == 2
    return sorted(upstream.requests, key=lambda r: r.received_at)


@pytest_twisted.ensureDeferred
async def test_one_session_on_two_gateways_runs_one_turn_after_the_other(
        start_gateway, http, upstream, redis_url, redis_prefix):  # noqa: F811
    first, second = await two_concurrent_turns(start_gateway, http, upstream, redis_url,
                                               redis_prefix)
    first_done = await first.completed
    assert second.received_at >= first_done, "the second turn started before the first ended"


@pytest.mark.skipif(not HAS_REDIS_STORE, reason=(
    "needs the Redis session store (moltbot_gw.sessions.redis_store, issue 16); with a file "
    "store per process the second gateway cannot see the first's turn"))
@pytest_twisted.ensureDeferred
async def test_the_second_turn_on_another_gateway_sees_the_first(
        start_gateway, http, upstream, redis_url, redis_prefix):  # noqa: F811
    first, second = await two_concurrent_turns(start_gateway, http, upstream, redis_url,
                                               redis_prefix)
    asked_first = first.body["messages"][-1]
    assert asked_first["role"] == "user"
    seen = [(m["role"], m["content"]) for m in second.body["messages"]]
    assert ("user", asked_first["content"]) in seen
    assert ("assistant", "a slow answer") in seen
    assert seen.index(("user", asked_first["content"])) < seen.index(
        ("assistant", "a slow answer")) < len(seen) - 1


@pytest_twisted.ensureDeferred
async def test_a_run_whose_session_was_taken_over_records_nothing_and_fails_503(
        start_gateway, http, upstream, redis_url, redis_prefix):  # noqa: F811
    gw = await start_gateway(redis_config(upstream, redis_url, redis_prefix, lease=1))
    link = RedisLink(redis_url, reactor, key_prefix=redis_prefix)
    await link.connect()
    try:
        upstream.script(text="too late to keep", chunks=4, delay=0.5)   # a 2 s answer
        asking = Deferred.fromCoroutine(ask(http, gw, "first"))
        await upstream.wait_for_request()
        lock = link.key("lock", SESSION)
        held = await link.execute("GET", lock)
        assert held is not None and held.split(":", 1)[0].isdigit()   # "<fence>:..."
        # the lease ran out and another process took the session
        await link.execute("SET", lock, "999:another-process:x", "PX", 60_000)
        code, body = await asking
        assert code == 503, body
        assert body["error"]["code"] == "session_taken_over"
        assert "taken over" in body["error"]["message"]
        assert await link.execute("GET", lock) == "999:another-process:x"   # left alone
        await link.execute("DEL", lock)
        upstream.script(text="fine", chunks=1, delay=0)
        code, _ = await ask(http, gw, "second")
        assert code == 200
        contents = [m["content"] for m in upstream.requests[-1].body["messages"]]
        assert "first" not in contents and "too late to keep" not in contents
        for _ in range(100):       # the release reaches Redis just after the answer
            if not await link.execute("EXISTS", lock):
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert await link.execute("EXISTS", lock) == 0
    finally:
        await link.disconnect()


@pytest_twisted.ensureDeferred
async def test_the_file_backend_takes_no_session_lock(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    assert gw.service.session_locks is None and gw.service.runner.session_locks is None


@pytest_twisted.ensureDeferred
async def test_without_redis_a_run_fails_instead_of_running_unordered(
        start_gateway, http, upstream, private_redis, redis_prefix):  # noqa: F811
    raw = redis_config(upstream, private_redis.url, redis_prefix)
    raw["session"]["store"]["redis"].update(commandTimeoutSeconds=0.5, connectTimeoutSeconds=0.5)
    gw = await start_gateway(raw)
    private_redis.stop()
    code, body = await ask(http, gw, "anyone there?")
    assert code >= 500 and "error" in body, body      # 503 service_unavailable (store's row)
    assert "Traceback" not in json.dumps(body)
    assert upstream.requests == []                      # the model was never asked


@pytest_twisted.ensureDeferred
async def test_a_run_waiting_for_another_gateway_holds_no_global_slot(
        start_gateway, http, upstream, redis_url, redis_prefix):  # noqa: F811
    a = await start_gateway(redis_config(upstream, redis_url, redis_prefix))
    raw = redis_config(upstream, redis_url, redis_prefix)
    raw["agents"]["defaults"] = {"maxConcurrent": 1}       # one run at a time on B
    b = await start_gateway(raw)
    upstream.script(text="a slow answer", chunks=3, delay=0.4)
    on_a = Deferred.fromCoroutine(ask(http, a, "alice on A"))
    alice_first = await upstream.wait_for_request()
    on_b = Deferred.fromCoroutine(ask(http, b, "alice on B"))    # waits for A's lock
    await deferLater(reactor, 0.3, lambda: None)
    bob = Deferred.fromCoroutine(ask(http, b, "bob on B", user="bob"))
    bob_request = await upstream.wait_for_request(2)
    assert bob_request.body["messages"][-1]["content"] == "bob on B"
    assert not alice_first.completed.called    # bob did not wait for alice's turn on A
    answers = await gatherResults([on_a, on_b, bob])
    assert [code for code, _ in answers] == [200, 200, 200]
