"""Providers with client tools, images, reasoning and embeddings, against fake upstreams driven
in memory (``MemoryUpstream``; no monkeypatching); the builtin echo on the reactor."""
from __future__ import annotations

import base64
import re
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor

from moltbot_gw.providers.anthropic_messages import convert_messages
from moltbot_gw.providers.base import ModelRequest, ToolCall
from moltbot_gw.providers.builtin import BuiltinProvider
from moltbot_gw.providers.errors import ProviderAuthError, ProviderBadRequest
from moltbot_gw.providers.interface import IEmbeddingProvider
# the shared fixtures (no_leftovers is autouse: no sockets, timers or logged errors left behind)
from tests.fakes.memory_upstream import settled
from tests.test_providers import (KEY, anthropic_in, anthropic_mem,  # noqa: F401
                                  collect_earlier_garbage, no_leftovers, openai_in, openai_mem)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
OSLO = '{"city": "Oslo"}'
ASK = ({"role": "user", "content": "Weather in Oslo and the time?"},)
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJ"
       "RU5ErkJggg==")
IMAGE_PART = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


def tools_request(messages=ASK, **kw) -> ModelRequest:
    kw.setdefault("tools", (WEATHER, CLOCK))
    return ModelRequest(model="fake-model", messages=messages, **kw)


class Recorder:
    """Every callback a stream made, in order."""

    def __init__(self):
        self.events: list[tuple] = []

    def delta(self, text):
        self.events.append(("delta", text))

    def tool(self, index, call_id, name, fragment):
        self.events.append(("tool", index, call_id, name, fragment))

    def reasoning(self, text):
        self.events.append(("reasoning", text))

    def of(self, kind):
        return [e[1:] for e in self.events if e[0] == kind]

    def kinds(self):
        kinds = []
        for e in self.events:
            if not kinds or kinds[-1] != e[0]:
                kinds.append(e[0])
        return kinds

    def arguments(self, index):
        return "".join(e[3] for e in self.of("tool") if e[0] == index)

    async def run(self, provider, request):
        return await provider.stream(request, self.delta, self.tool, self.reasoning)

    def run_now(self, provider, request):
        """``run`` against an in-memory upstream: finished when ``stream`` returns."""
        return settled(provider.stream(request, self.delta, self.tool, self.reasoning))


def assert_announced_once_then_fragments(tool_events, index, call_id, name):
    mine = [e for e in tool_events if e[0] == index]
    assert mine[0][1:3] == (call_id, name)
    assert all(e[1:3] == (None, None) for e in mine[1:])
    assert len(mine) >= 3            # really streamed in pieces


# --- OpenAI chat completions ------------------------------------------------------------


def test_openai_streamed_tool_call_fragments_reach_on_tool_call_and_the_result(
        openai_mem):
    openai_mem.script(text="", tool_calls=(("get_weather", OSLO), ("get_time", "{}")),
                     tool_chunks=3)
    rec = Recorder()
    result = rec.run_now(openai_in(openai_mem), tools_request())
    tool_events = rec.of("tool")
    assert_announced_once_then_fragments(tool_events, 0, "call_fake_0", "get_weather")
    assert tool_events[0] == (0, "call_fake_0", "get_weather", "")
    assert [e[0] for e in tool_events] == sorted(e[0] for e in tool_events)   # call 0 first
    assert (rec.arguments(0), rec.arguments(1)) == (OSLO, "{}")
    assert rec.of("delta") == [] and rec.of("reasoning") == []
    assert result.tool_calls == (ToolCall("call_fake_0", "get_weather", OSLO),
                                 ToolCall("call_fake_1", "get_time", "{}"))
    assert (result.text, result.finish_reason) == ("", "tool_calls")


def test_openai_text_before_tool_calls_streams_first(openai_mem):
    openai_mem.script(text="Let me check.", tool_calls=(("get_weather", OSLO),))
    rec = Recorder()
    result = rec.run_now(openai_in(openai_mem), tools_request())
    assert rec.kinds() == ["delta", "tool"]
    assert result.text == "Let me check." and result.finish_reason == "tool_calls"


def test_openai_tool_calls_reach_the_result_without_callbacks(openai_mem):
    openai_mem.script(text="", tool_calls=(("get_weather", OSLO),))
    deltas: list[str] = []
    result = settled(openai_in(openai_mem).stream(tools_request(), deltas.append))
    assert deltas == [] and result.tool_calls == (ToolCall("call_fake_0", "get_weather", OSLO),)


def test_openai_tool_call_without_arguments_has_an_empty_object(openai_mem):
    openai_mem.script(text="", tool_calls=(("get_time", ""),))
    result = Recorder().run_now(openai_in(openai_mem), tools_request())
    assert result.tool_calls == (ToolCall("call_fake_0", "get_time", "{}"),)


def test_openai_sends_tools_tool_choice_and_parallel_tool_calls_as_given(openai_mem):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    Recorder().run_now(openai_in(openai_mem),
                         tools_request(tool_choice=choice, parallel_tool_calls=False))
    body = openai_mem.requests[-1].body
    assert body["tools"] == [WEATHER, CLOCK]
    assert body["tool_choice"] == choice and body["parallel_tool_calls"] is False


def test_openai_sends_no_tool_fields_when_no_tools_are_offered(openai_mem):
    Recorder().run_now(openai_in(openai_mem),
                         tools_request(tools=(), tool_choice="none", parallel_tool_calls=True))
    body = openai_mem.requests[-1].body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)


def test_openai_passes_tool_turns_and_image_parts_through_unchanged(openai_mem):
    messages = (
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE_PART]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": OSLO}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12°C, rain"})
    Recorder().run_now(openai_in(openai_mem), tools_request(messages))
    assert openai_mem.requests[-1].body["messages"] == [dict(m) for m in messages]


def test_openai_reasoning_content_goes_to_on_reasoning_and_never_into_text(
        openai_mem):
    openai_mem.script(text="It is 42.", reasoning="Let me think about it.")
    rec = Recorder()
    result = rec.run_now(openai_in(openai_mem), tools_request(tools=()))
    assert rec.kinds() == ["reasoning", "delta"]
    assert "".join(t for (t,) in rec.of("reasoning")) == "Let me think about it."
    assert (result.text, result.reasoning) == ("It is 42.", "Let me think about it.")
    assert result.finish_reason == "stop"


def test_openai_reasoning_under_the_name_reasoning_is_recognised(openai_mem):
    openai_mem.script(text="ok", reasoning="quietly", reasoning_key="reasoning")
    rec = Recorder()
    result = rec.run_now(openai_in(openai_mem), tools_request(tools=()))
    assert (result.text, result.reasoning, rec.of("reasoning")) == ("ok", "quietly",
                                                                    [("quietly",)])


def test_openai_non_streamed_answer_carries_tool_calls_and_reasoning(openai_mem):
    openai_mem.script(text="", tool_calls=(("get_weather", OSLO),), reasoning="need data")
    result = settled(openai_in(openai_mem).complete(tools_request()))
    assert openai_mem.requests[-1].body["stream"] is False
    assert result.tool_calls == (ToolCall("call_fake_0", "get_weather", OSLO),)
    assert (result.text, result.reasoning, result.finish_reason) == ("", "need data",
                                                                     "tool_calls")


def test_openai_json_answer_to_a_stream_request_still_calls_the_callbacks(
        openai_mem):
    openai_mem.script(text="Checking.", tool_calls=(("get_weather", OSLO),), reasoning="hmm",
                     force_json=True)
    rec = Recorder()
    result = rec.run_now(openai_in(openai_mem), tools_request())
    assert rec.events == [("reasoning", "hmm"), ("delta", "Checking."),
                          ("tool", 0, "call_fake_0", "get_weather", OSLO)]
    assert result.finish_reason == "tool_calls"


# --- Anthropic messages ---------------------------------------------------------------


def test_anthropic_streamed_tool_use_blocks_reach_on_tool_call_and_the_result(
        anthropic_mem):
    anthropic_mem.script(text="Checking.", tool_calls=(("get_weather", OSLO), ("get_time", "")),
                        tool_chunks=3)
    rec = Recorder()
    result = rec.run_now(anthropic_in(anthropic_mem), tools_request())
    assert rec.kinds() == ["delta", "tool"]
    tool_events = rec.of("tool")
    assert_announced_once_then_fragments(tool_events, 0, "toolu_fake_0", "get_weather")
    assert tool_events[0] == (0, "toolu_fake_0", "get_weather", "")
    assert (1, "toolu_fake_1", "get_time", "") in tool_events
    assert rec.arguments(0) == OSLO and rec.arguments(1) == ""
    assert result.tool_calls == (ToolCall("toolu_fake_0", "get_weather", OSLO),
                                 ToolCall("toolu_fake_1", "get_time", "{}"))
    assert (result.text, result.finish_reason) == ("Checking.", "tool_calls")


def test_anthropic_thinking_goes_to_on_reasoning_and_never_into_text(
        anthropic_mem):
    anthropic_mem.script(text="Answer.", reasoning="Thinking it over.")
    rec = Recorder()
    result = rec.run_now(anthropic_in(anthropic_mem), tools_request(tools=()))
    assert rec.kinds() == ["reasoning", "delta"]
    assert (result.text, result.reasoning) == ("Answer.", "Thinking it over.")
    assert result.finish_reason == "stop"


def test_anthropic_non_streamed_answer_carries_tool_use_and_thinking(
        anthropic_mem):
    anthropic_mem.script(text="", tool_calls=(("get_weather", OSLO),), reasoning="need data")
    result = settled(anthropic_in(anthropic_mem).complete(tools_request()))
    assert anthropic_mem.requests[-1].body["stream"] is False
    assert result.tool_calls == (ToolCall("toolu_fake_0", "get_weather", '{"city":"Oslo"}'),)
    assert (result.text, result.reasoning, result.finish_reason) == ("", "need data",
                                                                     "tool_calls")


def test_anthropic_tools_are_translated_to_input_schemas(anthropic_mem):
    Recorder().run_now(anthropic_in(anthropic_mem), tools_request())
    body = anthropic_mem.requests[-1].body
    assert body["tools"] == [
        {"name": "get_weather", "description": "Current weather for a city",
         "input_schema": WEATHER["function"]["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]
    assert "tool_choice" not in body


@pytest.mark.parametrize("choice, parallel, expected", [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_time"}}, None,
     {"type": "tool", "name": "get_time"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("auto", True, {"type": "auto"}),
])
def test_anthropic_tool_choice_and_parallel_tool_calls_are_translated(
        anthropic_mem, choice, parallel, expected):
    Recorder().run_now(anthropic_in(anthropic_mem),
                         tools_request(tool_choice=choice, parallel_tool_calls=parallel))
    assert anthropic_mem.requests[-1].body["tool_choice"] == expected


def test_anthropic_sends_no_tools_or_tool_choice_when_none_are_offered(
        anthropic_mem):
    Recorder().run_now(anthropic_in(anthropic_mem),
                         tools_request(tools=(), tool_choice="required"))
    assert not {"tools", "tool_choice"} & set(anthropic_mem.requests[-1].body)


def test_anthropic_unknown_tool_choice_is_bad_request_without_network(anthropic_mem):
    provider = anthropic_in(anthropic_mem)
    with pytest.raises(ProviderBadRequest, match="tool_choice"):
        Recorder().run_now(provider, tools_request(tool_choice={"type": "magic"}))
    assert anthropic_mem.requests == []


def assert_alternates_from_user(messages):
    roles = [m["role"] for m in messages]
    assert roles[0] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:])), roles


def test_anthropic_tool_turns_become_tool_use_then_one_merged_tool_result_message(
        anthropic_mem):
    messages = (
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": OSLO}},
            {"id": "call.2", "type": "function",
             "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12°C, rain"},
        {"role": "tool", "tool_call_id": "call.2",
         "content": [{"type": "text", "text": "09:30"}]},
        {"role": "user", "content": "Thanks! Umbrella?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_3", "type": "function",
             "function": {"name": "get_weather", "arguments": OSLO}}]},
        {"role": "tool", "tool_call_id": "call_3", "content": ""})
    Recorder().run_now(anthropic_in(anthropic_mem), tools_request(messages))
    sent = anthropic_mem.requests[-1].body["messages"]
    assert sent == [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather",
             "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "12°C, rain"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "09:30"},
            {"type": "text", "text": "Thanks! Umbrella?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_3", "name": "get_weather",
             "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_3"}]}]
    assert_alternates_from_user(sent)


def test_anthropic_invalid_tool_arguments_become_an_empty_input_object():
    _, messages = convert_messages([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{not json"}},
            {"id": "c2", "type": "function",
             "function": {"name": "get_time", "arguments": "[1, 2]"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "?"},
        {"role": "tool", "tool_call_id": "c2", "content": "?"}])
    assert [b["input"] for b in messages[1]["content"]] == [{}, {}]


def test_anthropic_results_of_a_dropped_leading_assistant_tool_call_are_dropped_too():
    _, messages = convert_messages([
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c0", "content": "09:30"},
        {"role": "user", "content": "hello"}])
    assert messages == [{"role": "user", "content": "hello"}]


def test_anthropic_image_data_uri_becomes_a_base64_image_block(anthropic_mem):
    messages = ({"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             IMAGE_PART]},)
    Recorder().run_now(anthropic_in(anthropic_mem), tools_request(messages))
    assert anthropic_mem.requests[-1].body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PNG}}]}]


# --- builtin -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_builtin_call_command_answers_with_that_tool_call():
    rec = Recorder()
    d = rec.run(BuiltinProvider(reactor), ModelRequest(
        model="echo", tools=(WEATHER,),
        messages=({"role": "user", "content": '  call get_weather {"city":  "Oslo"} \n'},)))
    result = await d
    [(index, call_id, name, arguments)] = rec.of("tool")
    assert re.fullmatch(r"call_[0-9a-f]{24}", call_id)
    assert (index, name, arguments) == (0, "get_weather", '{"city":"Oslo"}')
    assert rec.of("delta") == []
    assert result.tool_calls == (ToolCall(call_id, "get_weather", '{"city":"Oslo"}'),)
    assert (result.text, result.finish_reason) == ("", "tool_calls")


@pytest.mark.parametrize("tools, text", [
    ((), 'call get_weather {"city": "Oslo"}'),                  # no tools offered
    ((CLOCK,), 'call get_weather {"city": "Oslo"}'),            # not this tool
    ((WEATHER,), "call get_weather {city: Oslo}"),              # not JSON
    ((WEATHER,), 'call get_weather ["Oslo"]'),                  # not an object
    ((WEATHER,), 'please call get_weather {"city": "Oslo"}'),   # not exactly the command
])
@pytest_twisted.ensureDeferred
async def test_builtin_echoes_text_that_is_not_a_call_of_an_offered_tool(tools, text):
    rec = Recorder()
    result = await rec.run(BuiltinProvider(reactor), ModelRequest(
        model="echo", tools=tools, messages=({"role": "user", "content": text},)))
    assert rec.of("tool") == [] and result.tool_calls == ()
    assert "".join(t for (t,) in rec.of("delta")) == text == result.text
    assert result.finish_reason == "stop"


@pytest_twisted.ensureDeferred
async def test_builtin_echoes_the_newest_tool_result():
    rec = Recorder()
    result = await rec.run(BuiltinProvider(reactor), ModelRequest(
        model="echo", tools=(WEATHER,), messages=(
            {"role": "user", "content": 'call get_weather {"city": "Oslo"}'},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": OSLO}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12°C and rain"})))
    assert rec.of("tool") == []
    assert (result.text, result.finish_reason) == ("12°C and rain", "stop")


# --- embeddings ------------------------------------------------------------------------


def test_openai_embeddings_return_the_upstream_answer_with_one_vector_per_input(
        openai_mem):
    provider = openai_in(openai_mem, apiKey=KEY, headers={"X-Org": "acme"})
    assert IEmbeddingProvider.providedBy(provider)
    answer = settled(provider.embeddings("text-embedding-3-small", ["first text", "second"]))
    seen = openai_mem.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/v1/embeddings")
    assert seen.header("authorization") == f"Bearer {KEY}" and seen.header("x-org") == "acme"
    assert seen.body == {"model": "text-embedding-3-small", "input": ["first text", "second"]}
    assert answer["object"] == "list" and answer["model"] == "text-embedding-3-small"
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert all(len(item["embedding"]) == 8 for item in answer["data"])
    assert answer["data"][0]["embedding"] != answer["data"][1]["embedding"]
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_openai_embeddings_forward_base64_encoding_and_dimensions(openai_mem):
    provider = openai_in(openai_mem)
    plain = settled(provider.embeddings("emb", "hello", None, 4))
    packed = settled(provider.embeddings("emb", "hello", encoding_format="base64", dimensions=4))
    assert openai_mem.requests[-1].body == {"model": "emb", "input": "hello",
                                           "encoding_format": "base64", "dimensions": 4}
    [item] = packed["data"]
    floats = struct.unpack("<4f", base64.b64decode(item["embedding"]))
    assert floats == pytest.approx(plain["data"][0]["embedding"], abs=1e-6)


def test_openai_embeddings_upstream_errors_are_typed(openai_mem):
    openai_mem.queue(status=400, error="input too long").queue(status=401, error="bad key")
    provider = openai_in(openai_mem)
    with pytest.raises(ProviderBadRequest, match="input too long"):
        settled(provider.embeddings("emb", ["x"]))
    with pytest.raises(ProviderAuthError):
        settled(provider.embeddings("emb", ["x"]))


def test_anthropic_and_builtin_do_not_offer_embeddings(anthropic_mem):
    providers = [anthropic_in(anthropic_mem), BuiltinProvider(reactor)]
    for provider in providers:
        assert not IEmbeddingProvider.providedBy(provider)
        with pytest.raises(ProviderBadRequest) as info:
            settled(provider.embeddings("any", ["x"], None, None))
        assert info.value.message == f'provider "{provider.name}" does not offer embeddings'
