"""Issue 18 item 2, end to end: a non-streamed upstream answer is silent until it is whole,
so the provider's ``idleTimeoutSeconds`` must not cut it; the run's ``timeoutSeconds`` is its
deadline. Streams keep the idle timeout (their silence means a fault)."""
from __future__ import annotations

import json

import pytest_twisted

from .chat_helpers import HI, config, http, no_leftovers  # noqa: F401
from .test_chat_completions import assert_error, post, sse_payloads, within


@pytest_twisted.ensureDeferred
async def test_slow_whole_answer_outlasts_the_idle_timeout(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream, provider={"idleTimeoutSeconds": 1}))
    # one piece, sent only when complete, 2.5 s after the request: longer than the idle timeout
    upstream.script(text="a slow but healthy answer", chunks=1, delay=2.5)
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    assert response.code == 200, body
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"] == "a slow but healthy answer"
    assert upstream.requests[-1].body["stream"] is False    # the fast path is unchanged


@pytest_twisted.ensureDeferred
async def test_a_silent_whole_answer_still_ends_at_the_run_timeout(start_gateway, http,
                                                                   upstream):
    raw = config(upstream, provider={"idleTimeoutSeconds": 1})
    raw["agents"]["list"][1]["timeoutSeconds"] = 1
    gw = await start_gateway(raw)
    upstream.script(text="too late", chunks=1, delay=3)
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    error = assert_error(response, body, 504, type_="timeout_error", code="upstream_timeout")
    assert "timeout" in error["message"]
    await within(upstream.requests[-1].connection_lost)      # the upstream call was abandoned


@pytest_twisted.ensureDeferred
async def test_a_stream_that_stalls_still_fails_after_the_idle_timeout(start_gateway, http,
                                                                      upstream):
    raw = config(upstream, provider={"idleTimeoutSeconds": 0.5})
    raw["agents"]["list"][1]["timeoutSeconds"] = 30
    gw = await start_gateway(raw)
    upstream.script(text="one two three", stall_after=1)
    response, body = await post(http, gw, {"model": "moltbot:beta", "stream": True,
                                           "messages": HI})
    payloads = sse_payloads(body)
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["error"]["type"] == "timeout_error"
    assert "sent nothing for 0.5s" in payloads[-2]["error"]["message"]
    await within(upstream.requests[-1].connection_lost)
