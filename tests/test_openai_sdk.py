"""The official ``openai`` Python SDK against a real gateway: what an integrator sees.

The gateway runs in the test's reactor, so the SDK (blocking) runs in a thread via
``deferToThread``; ``AsyncOpenAI`` runs in a thread under ``asyncio.run``. Retries are off so
every status reaches the test as the SDK's typed exception.
"""
from __future__ import annotations

import asyncio
import math

import openai
import pytest
import pytest_twisted
from twisted.internet import threads

from .chat_helpers import (BETA_PROMPT, MAIN_PROMPT, config, no_leftovers)  # noqa: F401
from .conftest import TOKEN

HI = [{"role": "user", "content": "hi"}]


def client_for(gw, api_key=TOKEN, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=gw.url + "/v1", max_retries=0, timeout=10,
                         **kwargs)


def sdk(gw, work, **kwargs):
    """Run ``work(client)`` in a thread with a fresh client, closed afterwards."""
    def run():
        with client_for(gw, **kwargs) as client:
            return work(client)
    return threads.deferToThread(run)


def sdk_raises(gw, error_type, work, **kwargs):
    """Run ``work(client)`` in a thread; fires with the ``error_type`` it must raise."""
    def run():
        with client_for(gw, **kwargs) as client:
            with pytest.raises(error_type) as info:
                work(client)
            return info.value
    return threads.deferToThread(run)


def text_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- completions -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_non_streaming_completion_parses_with_headers(start_gateway):
    gw = await start_gateway(config())

    def work(client):
        raw = client.chat.completions.with_raw_response.create(
            model="moltbot", messages=HI, extra_headers={"x-moltbot-agent-id": "main"})
        return raw.status_code, raw.headers, raw.parse()

    status, headers, completion = await sdk(gw, work)
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "builtin/echo"   # agent by header: the model that answered
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "hi"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == (completion.usage.prompt_tokens
                                             + completion.usage.completion_tokens)


@pytest_twisted.ensureDeferred
async def test_sdk_stream_yields_chunks_with_sse_headers(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="streamed from beta")

    def work(client):
        raw = client.chat.completions.with_raw_response.create(
            model="moltbot:beta", messages=HI, stream=True)
        with raw.parse() as stream:
            return raw.headers, list(stream)

    headers, chunks = await sdk(gw, work)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert text_of(chunks) == "streamed from beta"
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


@pytest_twisted.ensureDeferred
async def test_sdk_stream_options_include_usage_ends_with_a_usage_chunk(start_gateway,
                                                                         upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="count me", usage=(21, 2))

    def work(client):
        with client.chat.completions.create(model="moltbot:beta", messages=HI, stream=True,
                                            stream_options={"include_usage": True}) as s:
            return list(s)

    chunks = await sdk(gw, work)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 21
    assert chunks[-1].usage.completion_tokens == 2
    assert chunks[-1].usage.total_tokens == 23
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert text_of(chunks) == "count me"


@pytest_twisted.ensureDeferred
async def test_async_sdk_streams_too(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="async works fine", delay=0.01)

    async def work():
        async with openai.AsyncOpenAI(api_key=TOKEN, base_url=gw.url + "/v1",
                                      max_retries=0, timeout=10) as client:
            stream = await client.chat.completions.create(model="agent:beta", messages=HI,
                                                          stream=True)
            return [chunk async for chunk in stream]

    chunks = await threads.deferToThread(asyncio.run, work())
    assert text_of(chunks) == "async works fine"
    assert upstream.requests[-1].body["messages"][0]["content"] == BETA_PROMPT


@pytest_twisted.ensureDeferred
async def test_sdk_sampling_parameters_reach_the_upstream(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    await sdk(gw, lambda c: c.chat.completions.create(
        model="moltbot:beta", messages=HI, temperature=0.3, top_p=0.8,
        max_completion_tokens=33, stop=["END"], seed=5, presence_penalty=0.1,
        frequency_penalty=0.2, response_format={"type": "json_object"}))
    sent = upstream.requests[-1].body
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["stop"],
            sent["seed"], sent["presence_penalty"], sent["frequency_penalty"],
            sent["response_format"]) == (0.3, 0.8, 33, ["END"], 5, 0.1, 0.2,
                                         {"type": "json_object"})


# --- agents and sessions ------------------------------------------------------------------


@pytest.mark.parametrize("model, headers", [
    ("moltbot:beta", {}), ("agent:beta", {}), ("clawdbot:beta", {}),
    ("moltbot", {"x-moltbot-agent-id": "beta"}), ("moltbot", {"x-clawdbot-agent-id": "beta"}),
])
@pytest_twisted.ensureDeferred
async def test_sdk_reaches_the_agent_named_by_model_or_header(start_gateway, upstream, model,
                                                               headers):
    gw = await start_gateway(config(upstream, main_model="up/main-model"))
    completion = await sdk(gw, lambda c: c.chat.completions.create(
        model=model, messages=HI, extra_headers=headers))
    # the model field's agent is echoed; an agent chosen by header: the model that answered
    assert completion.model == (model if ":" in model else "up/some-model")
    assert upstream.requests[-1].body["messages"][0]["content"] == BETA_PROMPT


@pytest_twisted.ensureDeferred
async def test_sdk_without_agent_hint_reaches_the_default_agent(start_gateway, upstream):
    gw = await start_gateway(config(upstream, main_model="up/main-model"))
    await sdk(gw, lambda c: c.chat.completions.create(model="gpt-4o", messages=HI))
    assert upstream.requests[-1].body["messages"][0]["content"] == MAIN_PROMPT


@pytest_twisted.ensureDeferred
async def test_sdk_unknown_agent_raises_not_found_error(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    error = await sdk_raises(gw, openai.NotFoundError, lambda c: c.chat.completions.create(
        model="moltbot:nope", messages=HI))
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_sdk_user_shares_a_session_and_its_absence_does_not(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.queue(text="R1").queue(text="R2").queue(text="R3")

    def ask(text, **kwargs):
        return lambda c: c.chat.completions.create(
            model="moltbot:beta", messages=[{"role": "user", "content": text}], **kwargs)

    await sdk(gw, ask("first", user="alice"))
    await sdk(gw, ask("second", user="alice"))
    assert upstream.requests[-1].body["messages"][1:] == [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "second"}]
    await sdk(gw, ask("third"))
    assert upstream.requests[-1].body["messages"][1:] == [{"role": "user", "content": "third"}]


# --- errors ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_wrong_token_raises_authentication_error(start_gateway):
    gw = await start_gateway(config())
    error = await sdk_raises(gw, openai.AuthenticationError, lambda c: c.chat.completions
                             .create(model="moltbot", messages=HI), api_key="wrong")
    assert error.status_code == 401
    assert TOKEN not in str(error.body)


@pytest.mark.parametrize("kwargs, param", [
    ({"n": 2}, "n"), ({"temperature": 3}, "temperature"), ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"response_format": {"type": "xml"}}, "response_format"),
])
@pytest_twisted.ensureDeferred
async def test_sdk_invalid_parameter_raises_bad_request_naming_param(start_gateway, kwargs,
                                                                      param):
    gw = await start_gateway(config())
    error = await sdk_raises(gw, openai.BadRequestError, lambda c: c.chat.completions.create(
        model="moltbot", messages=HI, **kwargs))
    assert error.status_code == 400
    assert error.param == param
    assert error.type == "invalid_request_error"


@pytest_twisted.ensureDeferred
async def test_sdk_sees_provider_rate_limit_as_rate_limit_error_with_retry_after(
        start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(status=429, error="slow down", headers={"Retry-After": "3"})
    error = await sdk_raises(gw, openai.RateLimitError, lambda c: c.chat.completions.create(
        model="moltbot:beta", messages=HI, stream=True))
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "3"


@pytest_twisted.ensureDeferred
async def test_sdk_sees_provider_outage_as_502_and_stall_as_504(start_gateway, upstream):
    # a non-streamed answer has no idle timeout (issue 18): the run's timeout ends the stall
    raw = config(upstream, provider={"idleTimeoutSeconds": 0.3})
    raw["agents"]["list"][1]["timeoutSeconds"] = 0.3
    gw = await start_gateway(raw)
    upstream.queue(status=503).queue(stall_before_headers=math.inf)
    create = lambda c: c.chat.completions.create(model="moltbot:beta", messages=HI)  # noqa
    outage = await sdk_raises(gw, openai.InternalServerError, create)
    assert outage.status_code == 502
    stall = await sdk_raises(gw, openai.APIStatusError, create)
    assert stall.status_code == 504
    for error in (outage, stall):
        assert "Traceback" not in str(error.body)


@pytest_twisted.ensureDeferred
async def test_sdk_raises_api_error_for_a_failure_mid_stream(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="one two three", drop_after=2)
    received = []

    def work(client):
        with client.chat.completions.create(model="moltbot:beta", messages=HI,
                                            stream=True) as stream:
            for chunk in stream:
                received.append(chunk)

    error = await sdk_raises(gw, openai.APIError, work)
    assert text_of(received) == "one two "
    assert "Traceback" not in str(error)


# --- models ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_models_list_every_agent_and_retrieve_one(start_gateway, upstream):
    gw = await start_gateway(config(upstream))

    def work(client):
        return list(client.models.list()), client.models.retrieve("moltbot:beta")

    models, beta = await sdk(gw, work)
    assert [m.id for m in models] == ["moltbot:main", "moltbot:beta"]
    assert {m.owned_by for m in models} == {"moltbot"}
    assert beta.id == "moltbot:beta" and beta.object == "model"
    error = await sdk_raises(gw, openai.NotFoundError,
                             lambda c: c.models.retrieve("moltbot:nope"))
    assert error.status_code == 404
