"""OpenAI response fields of ``/v1/chat/completions`` (issue 13, item 16, chat part):
``system_fingerprint``, the upstream's usage token details passed through, ``usage: null``
on non-final chunks with ``include_usage``, and ``model`` naming the model that answered when
the agent was chosen by header or by default. Checked raw and through the openai SDK."""
from __future__ import annotations

import json

import openai
import pytest
import pytest_twisted

from .chat_helpers import HI, PATH, config, http, no_leftovers  # noqa: F401
from .conftest import TOKEN
from .test_chat_completions import sse_payloads
from .test_openai_sdk import sdk

DETAILS = {"prompt_tokens_details": {"cached_tokens": 5, "audio_tokens": 0},
           "completion_tokens_details": {"reasoning_tokens": 7}}


async def _post(http, gw, body, headers=None):
    response = await http.post(gw.url + PATH, json=body,
                               headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_body_has_system_fingerprint_and_the_upstream_usage_details(
        start_gateway, upstream, http):
    gw = await start_gateway(config(upstream))
    upstream.script(text="cached answer", usage=(20, 9), usage_details=DETAILS)
    code, raw = await _post(http, gw, {"model": "moltbot:beta", "messages": HI})
    assert code == 200
    body = json.loads(raw)
    assert "system_fingerprint" in body and body["system_fingerprint"] is None
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29,
                             **DETAILS}
    completion = openai.types.chat.ChatCompletion.model_validate(body)
    assert completion.usage.prompt_tokens_details.cached_tokens == 5
    assert completion.usage.completion_tokens_details.reasoning_tokens == 7

    upstream.script(text="plain")                     # no details reported: none invented
    code, raw = await _post(http, gw, {"model": "moltbot:beta", "messages": HI})
    assert set(json.loads(raw)["usage"]) == {"prompt_tokens", "completion_tokens",
                                             "total_tokens"}


@pytest_twisted.ensureDeferred
async def test_stream_with_include_usage_has_null_usage_until_the_final_chunk(
        start_gateway, upstream, http):
    gw = await start_gateway(config(upstream))
    upstream.script(text="one two three", reasoning="hmm", usage=(20, 9),
                    usage_details=DETAILS)
    code, raw = await _post(http, gw, {"model": "moltbot:beta", "messages": HI, "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert code == 200
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert all("system_fingerprint" in c and c["system_fingerprint"] is None for c in chunks)
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1]), chunks[:-1]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens_details"] == DETAILS["prompt_tokens_details"]
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 7}
    for chunk in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)

    # without include_usage no chunk carries usage at all
    code, raw = await _post(http, gw, {"model": "moltbot:beta", "messages": HI, "stream": True})
    assert not any("usage" in c for c in sse_payloads(raw)[:-1])


@pytest_twisted.ensureDeferred
async def test_sdk_stream_sees_usage_only_on_the_final_chunk(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="one two three", usage=(20, 9), usage_details=DETAILS)
    chunks = await sdk(gw, lambda c: list(c.chat.completions.create(
        model="moltbot:beta", messages=HI, stream=True,
        stream_options={"include_usage": True})))
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 5
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 7


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model, headers, expected", [
    ("moltbot:beta", {}, "moltbot:beta"),                          # named: echoed
    ("moltbot", {"x-moltbot-agent-id": "beta"}, "up/some-model"),  # by header: who answered
    ("gpt-4o-mini", {}, "builtin/echo"),                           # the default agent
])
@pytest_twisted.ensureDeferred
async def test_model_names_the_model_that_answered_unless_the_model_field_named_the_agent(
        start_gateway, upstream, http, stream, model, headers, expected):
    gw = await start_gateway(config(upstream))
    code, raw = await _post(http, gw, {"model": model, "messages": HI, "stream": stream},
                            headers)
    assert code == 200
    if stream:
        assert {c["model"] for c in sse_payloads(raw)[:-1]} == {expected}
    else:
        assert json.loads(raw)["model"] == expected


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_model_names_the_fallback_that_answered(start_gateway, upstream, http, stream):
    raw_config = config(upstream)
    raw_config["agents"]["list"][1]["model"] = {"primary": "up/broken",
                                                "fallbacks": ["up/spare"]}
    gw = await start_gateway(raw_config)
    upstream.queue(status=503).queue()
    code, raw = await _post(http, gw, {"model": "moltbot", "messages": HI, "stream": stream},
                            {"x-moltbot-agent-id": "beta"})
    assert code == 200
    assert [r.body["model"] for r in upstream.requests] == ["broken", "spare"]
    if stream:
        assert {c["model"] for c in sse_payloads(raw)[:-1]} == {"up/spare"}
    else:
        assert json.loads(raw)["model"] == "up/spare"


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_anthropic_cache_reads_become_cached_tokens(start_gateway, http, stream):
    from twisted.internet import reactor

    from .fakes import FakeAnthropic

    claude = await FakeAnthropic.start(reactor)
    try:
        raw_config = config(claude, provider={"api": "anthropic-messages"})
        gw = await start_gateway(raw_config)
        claude.script(text="from the cache", usage=(10, 3),
                      usage_details={"cache_read_input_tokens": 8,
                                     "cache_creation_input_tokens": 0})
        code, raw = await _post(http, gw, {"model": "moltbot:beta", "messages": HI,
                                           "stream": stream,
                                           "stream_options": {"include_usage": True}})
        assert code == 200
        usage = sse_payloads(raw)[-2]["usage"] if stream else json.loads(raw)["usage"]
        assert usage["prompt_tokens"] == 18                      # input + cache reads
        assert usage["prompt_tokens_details"] == {"cached_tokens": 8}
        assert "completion_tokens_details" not in usage
    finally:
        await claude.stop()
