"""Issue 13 item 7: per-client fairness. One client's slow runs may not starve another's:
each client address has ``gateway.limits.perClientConcurrency`` runs, a FIFO queue of
``perClientQueue`` behind them and 429 + Retry-After past that, over HTTP and WebSocket
alike; WebSocket write methods are rate limited per connection."""
from __future__ import annotations

import json
import math

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError

from moltbot_gw.agents.client_slots import ClientBusy, ClientSlots
from moltbot_gw.ws.write_rate import TokenBucket

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401
from .support.waiting import hang_up, until
from .test_ws_protocol import in_thread, open_client


def within(d, seconds=10.0):
    return d.addTimeout(seconds, reactor)


# --- the mechanism, in memory ---------------------------------------------------------------

def test_slots_run_per_client_then_queue_fifo_then_refuse():
    slots = ClientSlots(per_client=2, queue_size=2)
    got = []
    first, second = (slots.acquire("a").addCallback(got.append) for _ in range(2))
    third = slots.acquire("a").addCallback(got.append)
    fourth = slots.acquire("a").addCallback(got.append)
    refused = []
    slots.acquire("a").addErrback(lambda f: refused.append(f.trap(ClientBusy)))
    assert len(got) == 2 and refused == [ClientBusy]
    other = []
    slots.acquire("b").addCallback(other.append)          # another client is not held up
    assert len(other) == 1
    got[0].release()
    got[0].release()                                      # idempotent: frees one slot only
    assert len(got) == 3 and not fourth.called            # the oldest waiter went first
    got[1].release()
    assert len(got) == 4 and third.called and fourth.called
    assert (slots.running("a"), slots.waiting("a")) == (2, 0)


def test_a_cancelled_waiter_leaves_the_queue():
    slots = ClientSlots(per_client=1, queue_size=1)
    held = []
    slots.acquire("a").addCallback(held.append)
    waiting = slots.acquire("a")
    waiting.addErrback(lambda f: f.trap(CancelledError))
    waiting.cancel()                                      # its client went away
    assert slots.waiting("a") == 0
    later = []
    slots.acquire("a").addCallback(later.append)          # queued, not refused
    held[0].release()
    assert len(later) == 1


def test_raising_the_limit_on_reload_lets_waiters_run():
    slots = ClientSlots(per_client=1, queue_size=4)
    got = []
    for _ in range(3):
        slots.acquire("a").addCallback(got.append)
    assert len(got) == 1
    slots.reconfigure(per_client=3, queue_size=4)
    assert len(got) == 3 and slots.waiting("a") == 0


def test_token_bucket_allows_a_burst_then_the_rate():
    clock = task.Clock()
    bucket = TokenBucket(clock, rate=2.0, burst=3)
    assert [bucket.take() for _ in range(3)] == [None, None, None]
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take() is None
    clock.advance(10)                                     # refills up to the burst only
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)


# --- over HTTP, end to end -------------------------------------------------------------------

def fairness_config(up, per_client=2, queue=1):
    raw = config(up, gateway={"trustedProxies": ["127.0.0.1"],
                              "limits": {"perClientConcurrency": per_client,
                                         "perClientQueue": queue}})
    raw["agents"]["defaults"] = {"maxConcurrent": 3}
    return raw


def chat(http, gw, client, text, model="moltbot:beta"):
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
    return http.post(gw.url + PATH, json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "X-Forwarded-For": client,
                              **gw.auth_headers})


@pytest_twisted.ensureDeferred
async def test_one_clients_slow_streams_do_not_starve_another_client(
        start_gateway, http, upstream):
    upstream.script(stall_before_headers=math.inf)
    gw = await start_gateway(fairness_config(upstream))
    slow = [chat(http, gw, "198.51.100.7", f"slow {i}") for i in range(3)]
    await within(upstream.wait_for_request(2))
    await until(lambda: gw.service.client_slots.waiting("198.51.100.7") == 1)
    # The client's 2 runs and 1 waiting: its next request is refused at once.
    refused = await within(chat(http, gw, "198.51.100.7", "one too many"))
    assert refused.code == 429
    assert refused.headers.getRawHeaders("Retry-After") == ["1"]
    error = json.loads(await refused.content())["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "too_many_concurrent_requests"
    assert "perClientConcurrency" in error["message"]
    # Another client gets its one-token answer although the gateway's cap is 3.
    upstream.script(stall_before_headers=0)
    other = await within(chat(http, gw, "203.0.113.9", "quick"))
    assert other.code == 200
    await other.content()
    assert len(upstream.requests) == 3
    for d in slow:
        hang_up(d)


@pytest_twisted.ensureDeferred
async def test_a_queued_request_whose_client_leaves_gives_up_its_place(
        start_gateway, http, upstream):
    upstream.script(stall_before_headers=math.inf)
    gw = await start_gateway(fairness_config(upstream, per_client=1, queue=1))
    running = chat(http, gw, "198.51.100.7", "running")
    await within(upstream.wait_for_request(1))
    queued = chat(http, gw, "198.51.100.7", "queued then gone")
    slots = gw.service.client_slots
    await until(lambda: slots.waiting("198.51.100.7") == 1)     # it reached the queue
    hang_up(queued)
    await until(lambda: slots.waiting("198.51.100.7") == 0)     # the gateway saw it leave
    upstream.script(stall_before_headers=0)
    replacement = chat(http, gw, "198.51.100.7", "replacement")   # queued, not refused
    hang_up(running)                                      # its slot goes to the next waiter
    answer = await within(replacement)
    assert answer.code == 200
    await answer.content()
    texts = [r.body["messages"][-1]["content"] for r in upstream.requests]
    assert texts == ["running", "replacement"]


@pytest_twisted.ensureDeferred
async def test_websocket_and_http_runs_share_the_clients_slots(start_gateway, http, upstream):
    upstream.script(stall_before_headers=math.inf)
    raw = fairness_config(upstream, per_client=1, queue=0)
    gw = await start_gateway(raw)

    def start_ws_run():
        client = open_client(gw.ws_url)
        client.send({"type": "req", "id": "r1", "method": "agent",
                     "params": {"message": "slow", "agentId": "beta", "sessionKey": "s"}})
        return client

    client = await in_thread(start_ws_run)
    await within(upstream.wait_for_request(1))
    refused = await within(chat(http, gw, "127.0.0.1", "over http"))
    assert refused.code == 429
    await refused.content()

    def second_ws_run():
        return client.request("agent", {"message": "again", "agentId": "beta",
                                        "sessionKey": "t"})[1]

    frame = await in_thread(second_ws_run)
    assert frame["ok"] is False and frame["error"]["code"] == "RATE_LIMITED"
    assert frame["error"]["retryAfterMs"] == 1000
    await in_thread(client.call, "chat.abort", {"sessionKey": "s"})
    await in_thread(client.close)


@pytest_twisted.ensureDeferred
async def test_websocket_write_methods_are_rate_limited_per_connection(start_gateway):
    gw = await start_gateway({"gateway": {"limits": {"wsWriteBurst": 2,
                                                     "wsWriteRatePerSecond": 0.01}}})

    def scenario():
        client = open_client(gw.ws_url)
        writes = [client.call("chat.abort", {"sessionKey": "s"}) for _ in range(3)]
        read = client.call("sessions.list")
        fresh = open_client(gw.ws_url)                    # another connection has its own
        other = fresh.call("sessions.reset", {"key": "s"})
        client.close()
        fresh.close()
        return writes, read, other

    writes, read, other = await in_thread(scenario)
    assert [w["ok"] for w in writes] == [True, True, False]
    error = writes[2]["error"]
    assert error["code"] == "RATE_LIMITED"
    assert 0 < error["retryAfterMs"] <= 100_000
    assert "wsWriteRatePerSecond" in error["message"]
    assert read["ok"] is True and other["ok"] is True
