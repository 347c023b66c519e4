"""Runs across gateway processes (issue 16, Redis backend): two gateways in this process sharing
one Redis key prefix, real WebSocket clients on each. A run started on A is awaited, aborted and
watched from B; an idempotency key used on A and retried on B starts one run; with Redis gone
the cross-process methods answer UNAVAILABLE instead of hanging."""
from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from moltbot_gw.config import parse_config, with_overrides
from moltbot_gw.service import GatewayService

from .conftest import TOKEN
from .test_ws_protocol import Client, agent_events, in_thread, open_client, upstream_config


def redis_config(up, url: str, prefix: str, **redis) -> dict:
    return upstream_config(up, session={"store": {"backend": "redis", "redis": {
        "url": url, "keyPrefix": prefix, "commandTimeoutSeconds": 1.0,
        "connectTimeoutSeconds": 1.0, **redis}}})


async def two_gateways(start_gateway, up, url: str, prefix: str, **redis):
    config = redis_config(up, url, prefix, **redis)
    a = await start_gateway(config)
    b = await start_gateway(config)
    return a, b


def finish(client: Client, request_id: str) -> dict:
    """The second response of an ``agent`` request (its result)."""
    return client.response(request_id)


@pytest_twisted.ensureDeferred
async def test_agent_wait_on_b_answers_a_run_of_a_while_it_runs_and_after_it_ended(
        start_gateway, upstream, redis_url, redis_prefix):
    upstream.script(text="one two three four", delay=0.1)
    a, b = await two_gateways(start_gateway, upstream, redis_url, redis_prefix)
    on_a = await in_thread(open_client, a.ws_url)
    on_b = await in_thread(open_client, b.ws_url)
    request_id, accepted = await in_thread(on_a.request, "agent", {"message": "hi",
                                                                   "sessionKey": "w"})
    run_id = accepted["payload"]["runId"]
    await upstream.wait_for_request()
    waited = await in_thread(on_b.call, "agent.wait", {"runId": run_id})   # still running
    assert waited["ok"] is True, waited
    result = await in_thread(finish, on_a, request_id)
    assert waited["payload"] == result["payload"]
    assert result["payload"]["text"] == "one two three four"
    assert b.service.runner.get(run_id) is None     # B never ran it
    # After the end: answered from the stored result (B has no handle of it).
    again = await in_thread(on_b.call, "agent.wait", {"runId": run_id})
    assert again["ok"] is True and again["payload"] == result["payload"]
    unknown = await in_thread(on_b.call, "agent.wait", {"runId": "run_nope"})
    assert unknown["ok"] is False and unknown["error"]["code"] == "NOT_FOUND"
    await in_thread(on_a.close)
    await in_thread(on_b.close)


@pytest_twisted.ensureDeferred
async def test_chat_abort_on_b_aborts_a_run_on_a(start_gateway, upstream, redis_url,
                                                  redis_prefix):
    upstream.script(text="one two three four five six seven eight", delay=0.3)
    a, b = await two_gateways(start_gateway, upstream, redis_url, redis_prefix)
    on_a = await in_thread(open_client, a.ws_url)
    on_b = await in_thread(open_client, b.ws_url)
    sent = await in_thread(on_a.call, "chat.send", {"sessionKey": "slow", "message": "go"})
    run_id = sent["payload"]["runId"]
    await upstream.wait_for_request()
    aborted = await in_thread(on_b.call, "chat.abort", {"sessionKey": "slow"})
    assert aborted["payload"] == {"sessionKey": "agent:main:slow", "aborted": True,
                                  "runIds": [run_id]}
    on_a_wait = await in_thread(on_a.call, "agent.wait", {"runId": run_id})
    assert on_a_wait["ok"] is False and on_a_wait["error"]["code"] == "ABORTED"
    await upstream.requests[0].connection_lost       # A dropped the upstream request
    phases = [e["data"].get("phase") for e in agent_events(on_a, run_id)
              if e["stream"] == "lifecycle"]
    assert phases == ["start", "error"]
    on_b_wait = await in_thread(on_b.call, "agent.wait", {"runId": run_id})
    assert on_b_wait["ok"] is False and on_b_wait["error"] == on_a_wait["error"]
    assert on_b_wait["error"]["details"]["status"] == "aborted"
    nothing = await in_thread(on_b.call, "chat.abort", {"sessionKey": "slow"})
    assert nothing["payload"]["aborted"] is False and nothing["payload"]["runIds"] == []
    await in_thread(on_a.close)
    await in_thread(on_b.close)


@pytest_twisted.ensureDeferred
async def test_a_session_subscriber_on_b_gets_the_events_of_a_run_on_a(
        start_gateway, upstream, redis_url, redis_prefix):
    upstream.script(text="alpha beta gamma delta", chunks=4, delay=0.05)
    a, b = await two_gateways(start_gateway, upstream, redis_url, redis_prefix)
    on_a = await in_thread(open_client, a.ws_url)
    on_b = await in_thread(open_client, b.ws_url)
    first = await in_thread(on_b.call, "chat.send", {"sessionKey": "s", "message": "one"})
    await in_thread(on_b.call, "agent.wait", {"runId": first["payload"]["runId"]})
    request_id, accepted = await in_thread(on_a.request, "agent", {"message": "two",
                                                                   "sessionKey": "s"})
    run_id = accepted["payload"]["runId"]
    await in_thread(finish, on_a, request_id)
    seen_on_a = agent_events(on_a, run_id)
    assert [e["data"].get("phase") for e in seen_on_a if e["stream"] == "lifecycle"] == [
        "start", "end"]
    # B's client gets the same payloads, seq numbers included, in order.
    deadline = reactor.seconds() + 5
    while len(agent_events(on_b, run_id)) < len(seen_on_a) and reactor.seconds() < deadline:
        await in_thread(on_b.call, "health")     # reads (and keeps) the events that came
        await deferLater(reactor, 0.05, lambda: None)
    assert agent_events(on_b, run_id) == seen_on_a
    assert [e["seq"] for e in seen_on_a] == list(range(1, len(seen_on_a) + 1))
    await in_thread(on_a.close)
    await in_thread(on_b.close)


@pytest_twisted.ensureDeferred
async def test_one_idempotency_key_on_a_then_b_starts_one_run(start_gateway, upstream,
                                                               redis_url, redis_prefix):
    upstream.script(text="only once", delay=0.2)
    a, b = await two_gateways(start_gateway, upstream, redis_url, redis_prefix)
    on_a = await in_thread(open_client, a.ws_url)
    on_b = await in_thread(open_client, b.ws_url)      # same address and client.id
    params = {"message": "do it", "sessionKey": "idem", "idempotencyKey": "k-1"}
    request_a, accepted_a = await in_thread(on_a.request, "agent", params)
    request_b, accepted_b = await in_thread(on_b.request, "agent", params)
    assert accepted_b["ok"] is True, accepted_b
    assert accepted_b["payload"]["runId"] == accepted_a["payload"]["runId"]
    assert accepted_b["payload"]["deduplicated"] is True
    result_a = await in_thread(finish, on_a, request_a)
    result_b = await in_thread(finish, on_b, request_b)
    assert result_b["ok"] is True and result_b["payload"] == result_a["payload"]
    assert len(upstream.requests) == 1
    # B's client got the rest of the run's events, relayed from A, before the result.
    relayed = agent_events(on_b, accepted_a["payload"]["runId"])
    assert relayed and relayed[-1]["data"].get("phase") == "end"
    assert relayed == agent_events(on_a, accepted_a["payload"]["runId"])[-len(relayed):]
    conflict = await in_thread(on_b.call, "agent", {**params, "message": "something else"})
    assert conflict["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert conflict["error"]["details"]["runId"] == accepted_a["payload"]["runId"]
    # Once ended, a retry on B still names the run and answers its result.
    late = await in_thread(on_b.call, "chat.send", {**params, "idempotencyKey": "k-2"})
    request_c, late_again = await in_thread(on_a.request, "chat.send",
                                            {**params, "idempotencyKey": "k-2"})
    assert late_again["payload"]["runId"] == late["payload"]["runId"]
    assert late_again["payload"]["deduplicated"] is True
    await in_thread(on_a.close)
    await in_thread(on_b.close)


@pytest_twisted.ensureDeferred
async def test_with_redis_gone_cross_process_methods_answer_unavailable_without_hanging(
        start_gateway, upstream, private_redis, redis_prefix):
    upstream.script(text="fine", delay=0.0)
    a, b = await two_gateways(start_gateway, upstream, private_redis.url, redis_prefix,
                              commandTimeoutSeconds=0.5)
    on_b = await in_thread(open_client, b.ws_url)
    private_redis.stop()
    waited = await in_thread(on_b.call, "agent.wait", {"runId": "run_elsewhere"})
    aborted = await in_thread(on_b.call, "chat.abort", {"sessionKey": "x"})
    keyed = await in_thread(on_b.call, "agent", {"message": "m", "idempotencyKey": "k"})
    # Each answered (the client gives up after 5 s: no hang), each saying why.
    for answer in (waited, aborted, keyed):
        assert answer["ok"] is False and answer["error"]["code"] == "UNAVAILABLE", answer
        assert "Redis" in answer["error"]["message"]
    # A run without a key needs Redis too (its session's lock, its client's slot, its
    # history): it is refused the same way, not run unordered and unrecorded.
    plain = await in_thread(on_b.call, "chat.send", {"message": "m", "sessionKey": "p"})
    assert plain["ok"] is False and plain["error"]["code"] == "UNAVAILABLE", plain
    await in_thread(on_b.close)


@pytest_twisted.ensureDeferred
async def test_a_run_cut_short_by_its_gateway_stopping_is_answered_aborted_on_the_other(
        start_gateway, state_dir, upstream, redis_url, redis_prefix):
    upstream.script(text="one two three four five six seven eight", delay=0.3)
    config = redis_config(upstream, redis_url, redis_prefix)
    b = await start_gateway(config)
    a = GatewayService(with_overrides(parse_config(
        config, env={"CLAWDBOT_GATEWAY_TOKEN": TOKEN}, state_dir=state_dir), port=0), reactor)
    a.startService()
    a_port = (await a.when_listening()).getHost().port
    on_a = await in_thread(open_client, f"ws://127.0.0.1:{a_port}/")
    on_b = await in_thread(open_client, b.ws_url)
    sent = await in_thread(on_a.call, "chat.send", {"sessionKey": "cut", "message": "go"})
    run_id = sent["payload"]["runId"]
    await upstream.wait_for_request()
    waiting = in_thread(on_b.call, "agent.wait", {"runId": run_id})
    await deferLater(reactor, 0.3, lambda: None)      # B's wait is subscribed by now
    await a.stopService()          # cancels the run and stores its outcome before closing
    waited = await waiting
    assert waited["ok"] is False and waited["error"]["code"] == "ABORTED", waited
    assert waited["error"]["details"]["runId"] == run_id
    await in_thread(on_b.close)


@pytest_twisted.ensureDeferred
async def test_a_run_whose_gateway_lost_redis_is_answered_unavailable_after_its_lease(
        start_gateway, upstream, redis_url, redis_prefix):
    upstream.script(text="one two three four five six seven eight nine ten", delay=0.3)
    a, b = await two_gateways(start_gateway, upstream, redis_url, redis_prefix,
                              lockLeaseSeconds=1.0)
    on_a = await in_thread(open_client, a.ws_url)
    on_b = await in_thread(open_client, b.ws_url)
    sent = await in_thread(on_a.call, "chat.send", {"sessionKey": "lost", "message": "go"})
    run_id = sent["payload"]["runId"]
    await upstream.wait_for_request()
    await a.service.run_bus.stop()       # as if A died: it renews and stores nothing more
    await a.service.redis.disconnect()
    waited = await in_thread(on_b.call, "agent.wait", {"runId": run_id})
    assert waited["ok"] is False and waited["error"]["code"] == "UNAVAILABLE", waited
    assert run_id in waited["error"]["message"]
    assert waited["error"]["details"] == {"runId": run_id, "status": "error"}
    await in_thread(on_a.call, "chat.abort", {"sessionKey": "lost"})
    await in_thread(on_a.close)
    await in_thread(on_b.close)


@pytest_twisted.ensureDeferred
async def test_aborts_reach_the_other_gateway_again_after_redis_restarts(
        start_gateway, upstream, private_redis, redis_prefix):
    upstream.script(text=" ".join(["word"] * 40), delay=0.3)   # 12 s unless aborted
    a, b = await two_gateways(start_gateway, upstream, private_redis.url, redis_prefix)
    on_a = await in_thread(open_client, a.ws_url)
    on_b = await in_thread(open_client, b.ws_url)
    private_redis.stop()
    private_redis.start()               # both gateways' connections must come back alone
    for _ in range(100):                # a run needs Redis: wait until A has it back
        sent = await in_thread(on_a.call, "chat.send", {"sessionKey": "back", "message": "go"})
        if sent["ok"]:
            break
        assert sent["error"]["code"] == "UNAVAILABLE", sent
        await deferLater(reactor, 0.1, lambda: None)
    run_id = sent["payload"]["runId"]
    for _ in range(100):
        await in_thread(on_b.call, "chat.abort", {"sessionKey": "back"})
        if a.service.runner.get(run_id) is None:
            break
        await deferLater(reactor, 0.1, lambda: None)
    waited = await in_thread(on_a.call, "agent.wait", {"runId": run_id})
    assert waited["ok"] is False and waited["error"]["code"] == "ABORTED", waited
    await in_thread(on_a.close)
    await in_thread(on_b.close)
