"""Issue 18 item 3: per-provider concurrency. ``models.providers.<id>.maxConcurrent`` puts a
FIFO queue in front of a provider (llama.cpp serves one request and cuts a running stream when
a second arrives); the wait counts against the run's timeout, a client that leaves the queue
never reaches the upstream, a full queue (``maxQueue``) falls back or is a 429, and /metrics
shows each provider's in-flight and queued counts."""
from __future__ import annotations

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, gatherResults

from moltbot_gw.config import parse_config, with_overrides
from moltbot_gw.providers.registry import ProviderRegistry
from moltbot_gw.providers.slots import ProviderBusy, ProviderSlots

from .chat_helpers import DONE, PATH, config, http, no_leftovers  # noqa: F401
from .conftest import TOKEN
from .fakes import FakeOpenAI
from .support.waiting import hang_up, until

ONE_SLOT = {"maxConcurrent": 1}


def chat(http, gw, text, *, model="moltbot:beta", stream=False):
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
    return http.post(gw.url + PATH, json=body, headers=gw.auth_headers)


def user_texts(up) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in up.requests]


def slots(gw, provider="up") -> ProviderSlots:
    return gw.service.providers.slots(provider)


# --- the mechanism, in memory ---------------------------------------------------------------

def test_slots_run_up_to_the_limit_then_queue_fifo_then_refuse():
    slots = ProviderSlots("local", max_concurrent=1, max_queue=2)
    got = []
    slots.acquire().addCallback(got.append)
    second = slots.acquire().addCallback(got.append)
    third = slots.acquire().addCallback(got.append)
    refused = []
    slots.acquire().addErrback(lambda f: refused.append(f.trap(ProviderBusy)))
    assert len(got) == 1 and refused == [ProviderBusy]
    assert (slots.inflight, slots.queued) == (1, 2)
    got[0].release()
    got[0].release()                                   # idempotent: frees one slot only
    assert second.called and not third.called and len(got) == 2
    got[1].release()
    assert third.called and (slots.inflight, slots.queued) == (1, 0)
    got[2].release()
    assert (slots.inflight, slots.queued) == (0, 0)


def test_without_limits_nothing_waits_or_is_refused():
    slots = ProviderSlots("cloud")
    got = []
    for _ in range(100):
        slots.acquire().addCallback(got.append)
    assert len(got) == 100 and slots.queued == 0 and slots.inflight == 100


def test_a_cancelled_waiter_leaves_the_queue_at_once():
    slots = ProviderSlots("local", max_concurrent=1, max_queue=1)
    held = []
    slots.acquire().addCallback(held.append)
    waiting = slots.acquire()
    waiting.addErrback(lambda f: f.trap(CancelledError))
    waiting.cancel()
    assert slots.queued == 0
    later = []
    slots.acquire().addCallback(later.append)          # queued, not refused: the place is free
    held[0].release()
    assert len(later) == 1 and slots.inflight == 1


def test_a_full_queue_names_the_provider_and_its_limits():
    slots = ProviderSlots("local", max_concurrent=1, max_queue=0)
    slots.acquire()
    failures = []
    slots.acquire().addErrback(failures.append)
    error = failures[0].value
    assert isinstance(error, ProviderBusy) and error.retryable and error.retry_after == 1.0
    assert '"local"' in error.message and "maxConcurrent" in error.message


def test_a_reload_keeps_the_slots_in_flight_and_applies_new_limits():
    def models(limit):
        raw = {"models": {"providers": {"local": {
            "api": "openai-completions", "baseUrl": "http://127.0.0.1:9/v1",
            **({"maxConcurrent": limit} if limit else {})}}}}
        return parse_config(raw, env={}).models

    old = ProviderRegistry(models(1), reactor)
    held = []
    old.slots("local").acquire().addCallback(held.append)
    waiter = old.slots("local").acquire()
    new = ProviderRegistry(models(2), reactor, client=old.client, previous=old)
    assert waiter.called                               # the raised limit let it go
    assert new.slot_counts()["local"] == (2, 0)
    newest = ProviderRegistry(models(None), reactor, client=old.client, previous=new)
    assert newest.slots("local").acquire().called      # unlimited now
    assert newest.slot_counts()["local"] == (3, 0)


# --- end to end ----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_single_slot_fake_cuts_a_running_stream_without_max_concurrent(
        start_gateway, upstream, http):
    """What the limit protects against: the fake, like llama.cpp, cuts the first stream."""
    upstream.single_slot = True
    upstream.script(text="one two three four five six", chunks=6, delay=0.05)
    gw = await start_gateway(config(upstream))
    responses = await gatherResults([chat(http, gw, f"q{i}", stream=True) for i in range(2)])
    bodies = await gatherResults([r.content() for r in responses])
    assert upstream.max_concurrency == 2
    assert any(r.cut for r in upstream.requests)
    assert any(b'"error"' in body for body in bodies)


@pytest_twisted.ensureDeferred
async def test_max_concurrent_1_four_streams_all_complete_one_at_a_time(
        start_gateway, upstream, http):
    upstream.single_slot = True
    upstream.script(text="one two three four five six", chunks=6, delay=0.02)
    gw = await start_gateway(config(upstream, provider=ONE_SLOT))
    responses = await gatherResults([chat(http, gw, f"q{i}", stream=True) for i in range(4)])
    bodies = await gatherResults([r.content() for r in responses])
    for response, body in zip(responses, bodies, strict=True):
        assert response.code == 200
        assert body.endswith(DONE) and b'"error"' not in body
        assert b"six" in body
    assert len(upstream.requests) == 4
    assert upstream.max_concurrency == 1
    assert not any(r.cut for r in upstream.requests)
    assert (slots(gw).inflight, slots(gw).queued) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_queued_client_that_disconnects_never_reaches_the_upstream(
        start_gateway, upstream, http):
    upstream.queue(text="held", stall_after=0)         # the first answer holds the slot
    gw = await start_gateway(config(upstream, provider=ONE_SLOT))
    first = chat(http, gw, "first", stream=True)
    await upstream.wait_for_request(1)
    second = chat(http, gw, "second", stream=True)
    await until(lambda: len(gw.service.runner.active) == 2 or len(upstream.requests) > 1)
    await task.deferLater(reactor, 0.1, lambda: None)  # as far as the second run gets
    assert len(upstream.requests) == 1
    assert slots(gw).queued == 1
    hang_up(second)
    await until(lambda: slots(gw).queued == 0)         # it left the queue at once
    assert slots(gw).inflight == 1
    hang_up(first)
    await until(lambda: slots(gw).inflight == 0)
    third = await chat(http, gw, "third")
    assert third.code == 200
    await third.content()
    assert user_texts(upstream) == ["first", "third"]


def _two_upstream_config(up, backup, *, fallback: bool, timeout=None):
    raw = config(up, provider={"maxConcurrent": 1, "maxQueue": 0})
    raw["models"]["providers"]["backup"] = {"api": "openai-completions",
                                            "baseUrl": backup.base_url}
    beta = raw["agents"]["list"][1]
    if fallback:
        beta["model"] = {"primary": "up/some-model", "fallbacks": ["backup/other-model"]}
    raw["agents"]["list"].append({"id": "holder", "model": "up/some-model"})
    if timeout is not None:
        beta["timeoutSeconds"] = timeout
    return raw


@pytest_twisted.ensureDeferred
async def test_a_full_queue_goes_to_the_fallback_model(start_gateway, upstream, http):
    backup = await FakeOpenAI.start(reactor, text="from the backup")
    try:
        upstream.queue(text="held", stall_after=0)
        gw = await start_gateway(_two_upstream_config(upstream, backup, fallback=True))
        holder = chat(http, gw, "first", model="moltbot:holder", stream=True)
        await upstream.wait_for_request(1)
        response = await chat(http, gw, "second")
        body = await response.json()
        assert response.code == 200
        assert body["choices"][0]["message"]["content"] == "from the backup"
        assert len(upstream.requests) == 1 and len(backup.requests) == 1
        hang_up(holder)
        await until(lambda: slots(gw).inflight == 0)
    finally:
        await backup.stop()


@pytest_twisted.ensureDeferred
async def test_a_full_queue_without_fallback_is_429_with_retry_after(
        start_gateway, upstream, http):
    upstream.queue(text="held", stall_after=0)
    gw = await start_gateway(config(upstream, provider={"maxConcurrent": 1, "maxQueue": 0}))
    first = chat(http, gw, "first", stream=True)
    await upstream.wait_for_request(1)
    response = await chat(http, gw, "second")
    error = (await response.json())["error"]
    assert response.code == 429
    assert response.headers.getRawHeaders("retry-after") == ["1"]
    assert error["type"] == "rate_limit_error" and error["code"] == "provider_busy"
    assert '"up"' in error["message"] and "maxConcurrent" in error["message"]
    streamed = await chat(http, gw, "third", stream=True)   # a stream is refused alike
    assert streamed.code == 429
    assert b"provider_busy" in await streamed.content()
    assert len(upstream.requests) == 1
    hang_up(first)
    await until(lambda: slots(gw).inflight == 0)


@pytest_twisted.ensureDeferred
async def test_a_run_that_times_out_in_the_queue_says_it_waited_for_the_provider(
        start_gateway, upstream, http):
    upstream.queue(text="held", stall_after=0)
    raw = config(upstream, provider=ONE_SLOT)
    raw["agents"]["list"][1]["timeoutSeconds"] = 0.3
    raw["agents"]["list"].append({"id": "holder", "model": "up/some-model"})
    gw = await start_gateway(raw)
    holder = chat(http, gw, "first", model="moltbot:holder", stream=True)
    await upstream.wait_for_request(1)
    response = await chat(http, gw, "second")
    error = (await response.json())["error"]
    assert response.code == 504 and error["type"] == "timeout_error"
    assert 'while waiting for provider "up" (maxConcurrent 1)' in error["message"]
    assert "0.3 s" in error["message"]
    assert slots(gw).queued == 0 and len(upstream.requests) == 1
    hang_up(holder)
    await until(lambda: slots(gw).inflight == 0)


@pytest_twisted.ensureDeferred
async def test_metrics_show_each_providers_inflight_and_queued(start_gateway, upstream, http):
    upstream.queue(text="held", stall_after=0)
    raw = config(upstream, provider=ONE_SLOT, gateway={"metrics": {"enabled": True}})
    gw = await start_gateway(raw)
    first = chat(http, gw, "first", stream=True)
    await upstream.wait_for_request(1)
    second = chat(http, gw, "second", stream=True)
    await until(lambda: slots(gw).queued == 1)
    scrape = await http.get(gw.url + "/metrics", headers=gw.auth_headers)
    text = (await scrape.content()).decode()
    samples = {(s.name, s.labels.get("provider")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("moltbot_provider_inflight", "up")] == 1
    assert samples[("moltbot_provider_queued", "up")] == 1
    assert samples[("moltbot_provider_inflight", "builtin")] == 0
    hang_up(second)
    hang_up(first)
    await until(lambda: slots(gw).inflight == 0 and slots(gw).queued == 0)



@pytest_twisted.ensureDeferred
async def test_a_reload_keeps_counting_the_request_in_flight(start_gateway, upstream, http,
                                                             state_dir):
    upstream.queue(text="held", stall_after=0)
    raw = config(upstream, provider=ONE_SLOT)
    gw = await start_gateway(raw)
    first = chat(http, gw, "first", stream=True)
    await upstream.wait_for_request(1)
    raw["agents"]["list"][0]["systemPrompt"] = "reloaded"
    gw.service.reload(with_overrides(parse_config(
        raw, env={"CLAWDBOT_GATEWAY_TOKEN": TOKEN}, state_dir=state_dir), port=0))
    second = chat(http, gw, "second", stream=True)
    await until(lambda: slots(gw).queued == 1)        # the slot held before the reload counts
    assert len(upstream.requests) == 1
    hang_up(first)
    await upstream.wait_for_request(2)                 # the waiter goes when the slot is free
    hang_up(second)
    await until(lambda: slots(gw).inflight == 0)


@pytest_twisted.ensureDeferred
async def test_embeddings_wait_for_the_providers_slot_too(start_gateway, upstream, http):
    upstream.queue(text="held", stall_after=0)
    gw = await start_gateway(config(upstream, provider={"maxConcurrent": 1, "maxQueue": 1}))
    first = chat(http, gw, "first", stream=True)
    await upstream.wait_for_request(1)
    body = {"model": "up/embedder", "input": "hello"}
    leaving = http.post(gw.url + "/v1/embeddings", json=body, headers=gw.auth_headers)
    await until(lambda: slots(gw).queued == 1)
    hang_up(leaving)
    await until(lambda: slots(gw).queued == 0)         # its client left: so did it
    waiting = http.post(gw.url + "/v1/embeddings", json=body, headers=gw.auth_headers)
    await until(lambda: slots(gw).queued == 1)
    refused = await http.post(gw.url + "/v1/embeddings", json=body, headers=gw.auth_headers)
    assert refused.code == 429
    assert (await refused.json())["error"]["code"] == "provider_busy"
    assert len(upstream.requests) == 1
    hang_up(first)
    response = await waiting
    assert response.code == 200 and len((await response.json())["data"]) == 1
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions", "/v1/embeddings"]
