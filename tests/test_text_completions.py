"""Legacy ``POST /v1/completions`` served on the agent path (issue 13, item 17), through the
official openai SDK: stream and non-stream, one user turn from the prompt, and 400s for
what an agent cannot do (echo, logprobs, suffix, several prompts)."""
from __future__ import annotations

import json

import openai
import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from moltbot_gw.openai.completions import parse_completion_request
from moltbot_gw.openai.errors import APIError

from .chat_helpers import BETA_PROMPT, config, http, no_leftovers  # noqa: F401
from .conftest import TOKEN
from .test_chat_completions import sse_payloads
from .test_openai_sdk import sdk, sdk_raises


@pytest_twisted.ensureDeferred
async def test_sdk_text_completion_runs_the_agent_with_the_prompt_as_one_user_turn(
        start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="Paris is the capital.", usage=(12, 4))
    completion = await sdk(gw, lambda c: c.completions.create(
        model="moltbot:beta", prompt="What is the capital of France?", max_tokens=50))
    assert isinstance(completion, openai.types.Completion)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == "moltbot:beta"
    [choice] = completion.choices
    assert (choice.text, choice.index, choice.finish_reason) == (
        "Paris is the capital.", 0, "stop")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 4)
    sent = upstream.requests[-1].body
    assert sent["messages"] == [{"role": "system", "content": BETA_PROMPT},
                                {"role": "user", "content": "What is the capital of France?"}]
    assert sent["max_tokens"] == 50


@pytest_twisted.ensureDeferred
async def test_sdk_text_completion_streams_text_completion_chunks(start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="one two three", reasoning="thinking", usage=(3, 3))
    chunks = await sdk(gw, lambda c: list(c.completions.create(
        model="moltbot", prompt=["count"], stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-moltbot-agent-id": "beta"})))
    assert all(isinstance(c, openai.types.Completion) for c in chunks)
    assert {c.object for c in chunks} == {"text_completion"}
    assert {c.model for c in chunks} == {"up/some-model"}     # agent by header
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert upstream.requests[-1].body["messages"][-1] == {"role": "user", "content": "count"}


@pytest_twisted.ensureDeferred
async def test_raw_text_completion_stream_ends_with_done(start_gateway, http):
    gw = await start_gateway(config())
    response = await http.post(gw.url + "/v1/completions",
                               json={"model": "moltbot", "prompt": "hello there",
                                     "stream": True},
                               headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    payloads = sse_payloads(await response.content())
    assert payloads[-1] == "[DONE]"
    assert "".join(p["choices"][0]["text"] for p in payloads[:-1]) == "hello there"
    assert {p["model"] for p in payloads[:-1]} == {"builtin/echo"}


@pytest.mark.parametrize("extra, param", [
    ({"echo": True}, "echo"),
    ({"logprobs": 2}, "logprobs"),
    ({"suffix": "-- end"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
])
@pytest_twisted.ensureDeferred
async def test_what_an_agent_cannot_do_is_a_400_naming_the_param(start_gateway, upstream,
                                                                    extra, param):
    gw = await start_gateway(config(upstream))
    body = {"prompt": "hi", **extra}
    error = await sdk_raises(gw, openai.BadRequestError, lambda c: c.completions.create(
        model="moltbot:beta", **body))
    assert error.status_code == 400
    assert error.body["param"] == param and error.body["type"] == "invalid_request_error"
    assert param in error.body["message"]
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_completions_need_auth_and_the_chat_switch(start_gateway, http):
    gw = await start_gateway(config())
    response = await http.post(gw.url + "/v1/completions", json={"prompt": "hi"})
    assert response.code == 401
    await response.content()
    off = await start_gateway(config(enabled=False))
    response = await http.post(off.url + "/v1/completions", json={"prompt": "hi"},
                               headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.code == 404
    assert json.loads(await response.content())["error"]["type"] == "not_found_error"
    # switched off, it is absent even to a client without the secret
    response = await http.post(off.url + "/v1/completions", json={"prompt": "hi"})
    assert response.code == 404
    await response.content()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=10)
_fields = st.sampled_from(["model", "prompt", "stream", "stream_options", "echo", "logprobs",
                           "suffix", "best_of", "n", "max_tokens", "temperature", "stop",
                           "user", "seed"])


@given(st.dictionaries(_fields, _json_values, max_size=6))
def test_any_json_object_parses_or_is_a_400_naming_a_param(body):
    try:
        parsed = parse_completion_request(json.dumps(body).encode(), 1_000_000)
    except APIError as e:
        assert e.status == 400 and e.param is not None
    else:
        assert isinstance(parsed.prompt, str) and parsed.prompt.strip()


@pytest_twisted.ensureDeferred
async def test_a_prompt_past_max_total_chars_is_a_400_naming_the_limit(start_gateway, upstream):
    raw = config(upstream, chat={"maxTotalChars": 100})
    gw = await start_gateway(raw)
    error = await sdk_raises(gw, openai.BadRequestError, lambda c: c.completions.create(
        model="moltbot:beta", prompt="x" * 101))
    assert error.body["param"] == "prompt" and error.body["code"] == "too_many_characters"
    assert "chatCompletions.maxTotalChars" in error.body["message"]
    assert upstream.requests == []
