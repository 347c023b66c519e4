"""End-to-end tests of what ``/v1/responses`` keeps between calls: anonymous calls are
stateless (no session on disk; their ``previous_response_id`` chain lives in the bounded
response index), ``store: false`` keeps nothing, ``item_reference`` inputs resolve to earlier
output items, ``store`` is echoed and ``usage`` has exactly the SDK's documented fields.

Real gateways on 127.0.0.1, the official ``openai`` SDK and raw treq, a fake upstream that
records what the agent sent it.
"""
from __future__ import annotations

import openai
import pytest_twisted
from openai.types.responses import ResponseUsage
from pydantic import BaseModel

from moltbot_gw.config import parse_config, with_overrides
from moltbot_gw.openai.response_index import ResponseIndex, StoredResponse

from .chat_helpers import BETA_PROMPT, http, no_leftovers  # noqa: F401
from .conftest import TOKEN
from .test_responses import (WEATHER, OSLO, assert_error, post, rconfig, response_json, sdk,
                             sse_events, transcript_records, upstream_messages)


def session_files(state_dir):
    """Every file under the agents' session folders (index and transcripts)."""
    agents = state_dir / "agents"
    return sorted(p for p in agents.glob("*/sessions/*")) if agents.exists() else []


def with_limits(raw, **limits):
    raw["gateway"]["http"]["endpoints"]["responses"].update(limits)
    return raw


# --- item 5: anonymous calls are stateless --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_anonymous_responses_leave_no_session_on_disk(start_gateway, http, state_dir):
    gw = await start_gateway(rconfig())
    for n in range(5):
        await sdk(gw, lambda c: c.responses.create(model="moltbot", input=f"hi {n}"))
    _, body = await post(http, gw, {"model": "moltbot", "input": "streamed", "stream": True})
    assert sse_events(body)[-1]["type"] == "response.completed"
    assert session_files(state_dir) == []
    assert await gw.service.runner.store.list_sessions() == []


@pytest_twisted.ensureDeferred
async def test_previous_response_id_continues_an_anonymous_streamed_chain(start_gateway, http,
                                                                          upstream, state_dir):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="R1").queue(text="R2").queue(text="R3")
    _, body = await post(http, gw, {"model": "moltbot:beta", "input": "first", "stream": True})
    first = sse_events(body)[-1]["response"]
    second = await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", input="second", previous_response_id=first["id"]))
    await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", input=[{"role": "user", "content": "third"}],
        previous_response_id=second.id))
    assert upstream_messages(upstream) == [
        {"role": "system", "content": BETA_PROMPT},
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "second"}, {"role": "assistant", "content": "R2"},
        {"role": "user", "content": "third"}]
    assert session_files(state_dir) == []


@pytest_twisted.ensureDeferred
async def test_anonymous_chain_of_tool_calls_replays_the_call(start_gateway, upstream, state_dir):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="", tool_calls=(("get_weather", OSLO),)).queue(text="Sunny.")
    first = await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", input="Weather in Oslo?", tools=[WEATHER]))
    await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", previous_response_id=first.id, tools=[WEATHER], input=[
            {"type": "function_call_output", "call_id": "call_fake_0", "output": "sunny"}]))
    assert upstream_messages(upstream)[1:] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_fake_0", "type": "function",
             "function": {"name": "get_weather", "arguments": OSLO}}]},
        {"role": "tool", "tool_call_id": "call_fake_0", "content": "sunny"}]
    assert session_files(state_dir) == []


@pytest_twisted.ensureDeferred
async def test_store_false_keeps_nothing_and_a_later_previous_response_id_is_404(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="R1")
    _, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi", "store": False})
    first = response_json(body)
    assert first["store"] is False
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "again",
                                           "previous_response_id": first["id"]})
    error = assert_error(response, body, 404, param="previous_response_id",
                         code="previous_response_not_found")
    assert error["message"] == f"Previous response with id '{first['id']}' not found."
    # nor can its output items be referenced
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": [
        {"role": "user", "content": "hi"},
        {"type": "item_reference", "id": first["output"][0]["id"]},
        {"role": "user", "content": "more"}]})
    assert_error(response, body, 404, param="input")
    assert len(upstream.requests) == 1
    assert session_files(state_dir) == []


@pytest_twisted.ensureDeferred
async def test_store_false_in_a_user_session_reads_its_history_but_writes_nothing(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="R1").queue(text="R2")
    await post(http, gw, {"model": "moltbot:beta", "input": "one", "user": "alice"})
    _, body = await post(http, gw, {"model": "moltbot:beta", "input": "two", "user": "alice",
                                    "store": False})
    assert response_json(body)["store"] is False
    assert upstream_messages(upstream)[1:] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "two"}]
    assert [r["content"] for r in transcript_records(state_dir, "beta")] == ["one", "R1"]


@pytest_twisted.ensureDeferred
async def test_the_oldest_responses_are_forgotten_beyond_max_stored_responses(start_gateway,
                                                                               http):
    gw = await start_gateway(with_limits(rconfig(), maxStoredResponses=2))
    ids = []
    for n in range(3):
        _, body = await post(http, gw, {"model": "moltbot", "input": f"turn {n}"})
        ids.append(response_json(body)["id"])
    response, body = await post(http, gw, {"model": "moltbot", "input": "x",
                                           "previous_response_id": ids[0]})
    assert_error(response, body, 404, param="previous_response_id")
    response, body = await post(http, gw, {"model": "moltbot", "input": "x",
                                           "previous_response_id": ids[2]})
    assert response.code == 200, body


@pytest_twisted.ensureDeferred
async def test_an_anonymous_chain_keeps_no_more_than_the_agents_history_limit(start_gateway,
                                                                               upstream):
    raw = rconfig(upstream)
    raw["agents"]["defaults"] = {"history": {"maxMessages": 3}}
    gw = await start_gateway(raw)
    previous = None
    for n in range(4):
        upstream.queue(text=f"R{n}")
        response = await sdk(gw, lambda c: c.responses.create(
            model="moltbot:beta", input=f"turn {n}", previous_response_id=previous))
        previous = response.id
    assert upstream_messages(upstream)[1:] == [
        {"role": "user", "content": "turn 2"}, {"role": "assistant", "content": "R2"},
        {"role": "user", "content": "turn 3"}]
    stored = gw.service.openai.responses_endpoint.responses.get(previous)
    assert [m["content"] for m in stored.conversation] == ["turn 3", "R3"]


@pytest_twisted.ensureDeferred
async def test_a_config_reload_keeps_stored_responses_under_the_new_limits(start_gateway,
                                                                            http, state_dir):
    gw = await start_gateway(rconfig())
    ids = []
    for n in range(3):
        _, body = await post(http, gw, {"model": "moltbot", "input": f"turn {n}"})
        ids.append(response_json(body)["id"])
    gw.service.reload(with_overrides(parse_config(
        with_limits(rconfig(), maxStoredResponses=2), env={"CLAWDBOT_GATEWAY_TOKEN": TOKEN},
        state_dir=state_dir), port=gw.port))
    response, body = await post(http, gw, {"model": "moltbot", "input": "x",
                                           "previous_response_id": ids[0]})
    assert_error(response, body, 404, param="previous_response_id")
    _, body = await post(http, gw, {"model": "moltbot", "input": "x",
                                    "previous_response_id": ids[2]})
    assert response_json(body)["output"][0]["content"][0]["text"] == "x"


# --- item 12: item_reference ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_item_reference_to_earlier_output_resolves_as_the_vercel_sdk_sends_it(
        start_gateway, upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="R1", reasoning="Hmm.").queue(text="R2")
    first = await sdk(gw, lambda c: c.responses.create(model="moltbot:beta", input="Hi"))
    assert [item.type for item in first.output] == ["reasoning", "message"]
    # turn 2 the way @ai-sdk/openai sends it with store: true (its default)
    second = await sdk(gw, lambda c: c.responses.create(model="moltbot:beta", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        *({"type": "item_reference", "id": item.id} for item in first.output),
        {"role": "user", "content": [{"type": "input_text", "text": "And then?"}]}]))
    assert second.output_text == "R2"
    assert upstream_messages(upstream)[1:] == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "And then?"}]


@pytest_twisted.ensureDeferred
async def test_item_reference_to_a_function_call_precedes_its_output(start_gateway, upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="", tool_calls=(("get_weather", OSLO),)).queue(text="Sunny.")
    first = await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", input="Oslo?", tools=[WEATHER]))
    [call] = first.output
    await sdk(gw, lambda c: c.responses.create(model="moltbot:beta", tools=[WEATHER], input=[
        {"role": "user", "content": "Oslo?"}, {"id": call.id},   # type is optional
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]))
    assert [(m["role"], [c["id"] for c in m.get("tool_calls") or []])
            for m in upstream_messages(upstream)[1:]] == [
        ("user", []), ("assistant", ["call_fake_0"]), ("tool", [])]


@pytest_twisted.ensureDeferred
async def test_unknown_item_reference_is_openais_404(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))

    def work(client):
        try:
            client.responses.create(model="moltbot:beta", input=[
                {"role": "user", "content": "Hi"},
                {"type": "item_reference", "id": "msg_nope"},
                {"role": "user", "content": "more"}])
        except openai.NotFoundError as e:
            return e.body
        raise AssertionError("no 404")
    error = await sdk(gw, work)
    assert error["message"] == "Item with id 'msg_nope' not found."
    assert (error["param"], error["type"]) == ("input", "invalid_request_error")
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": [
        {"type": "item_reference", "id": "rs_gone"}, {"role": "user", "content": "x"}]})
    assert assert_error(response, body, 404, param="input")["message"] == (
        "Item with id 'rs_gone' not found.")
    assert upstream.requests == []


# --- store echoed, usage fields --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_store_is_echoed_in_bodies_and_stream_events(start_gateway, http):
    gw = await start_gateway(rconfig())
    for sent, echoed in ((None, True), (True, True), (False, False)):
        request = {"model": "moltbot", "input": "hi"}
        if sent is not None:
            request["store"] = sent
        _, body = await post(http, gw, request)
        assert response_json(body)["store"] is echoed
        _, body = await post(http, gw, {**request, "stream": True})
        events = sse_events(body)
        assert {e["response"]["store"] for e in events if "response" in e} == {echoed}


def documented_keys(model: type[BaseModel]) -> dict:
    """The SDK model's required fields, nested models as dicts of their own."""
    keys = {}
    for name, info in model.model_fields.items():
        if not info.is_required():
            continue
        nested = info.annotation
        keys[name] = (documented_keys(nested) if isinstance(nested, type)
                      and issubclass(nested, BaseModel) else None)
    return keys


def shape(value) -> dict:
    return {k: shape(v) if isinstance(v, dict) else None for k, v in value.items()}


@pytest_twisted.ensureDeferred
async def test_usage_has_exactly_the_sdks_documented_fields(start_gateway, http):
    gw = await start_gateway(rconfig())
    expected = documented_keys(ResponseUsage)
    _, body = await post(http, gw, {"model": "moltbot", "input": "hi there"})
    usage = response_json(body)["usage"]
    assert shape(usage) == expected
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    _, body = await post(http, gw, {"model": "moltbot", "input": "hi", "stream": True})
    assert shape(sse_events(body)[-1]["response"]["usage"]) == expected


# --- the index's bounds ------------------------------------------------------------------------


def test_response_index_is_bounded_in_bytes_and_forgets_items_with_their_response():
    def stored(text):
        return StoredResponse("main", None, ({"role": "user", "content": text},),
                              {f"msg_{text[:3]}": {"type": "message", "id": f"msg_{text[:3]}"}})
    index = ResponseIndex(capacity=100, max_bytes=1500)
    index.add("resp_a", stored("aaa" + "x" * 300))
    index.add("resp_b", stored("bbb" + "x" * 300))
    assert index.item("msg_aaa") is not None       # a is now the most recently used
    index.add("resp_c", stored("ccc" + "x" * 300))
    assert len(index) == 2 and index.bytes <= 1500
    assert index.get("resp_b") is None and index.item("msg_bbb") is None
    assert index.item("msg_ccc") == {"type": "message", "id": "msg_ccc"}
    # a conversation larger than the whole budget keeps its newest messages
    long = StoredResponse("main", None, tuple(
        {"role": role, "content": str(n) * 200} for n in range(10)
        for role in ("user", "assistant")))
    index.add("resp_long", long)
    kept = index.get("resp_long").conversation
    assert kept and kept[-1] == long.conversation[-1] and kept[0]["role"] == "user"
    assert index.bytes <= 1500
    index.resize(capacity=1, max_bytes=1500)
    assert len(index) == 1 and index.get("resp_long") is not None



@pytest_twisted.ensureDeferred
async def test_usage_passes_the_upstreams_cached_and_reasoning_tokens_through(start_gateway,
                                                                              upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="cached answer", usage=(20, 9), usage_details={
        "prompt_tokens_details": {"cached_tokens": 5},
        "completion_tokens_details": {"reasoning_tokens": 7}})
    answer = await sdk(gw, lambda c: c.responses.create(model="moltbot:beta", input="Hi"))
    assert answer.usage.input_tokens == 20 and answer.usage.output_tokens == 9
    assert answer.usage.input_tokens_details.cached_tokens == 5
    assert answer.usage.output_tokens_details.reasoning_tokens == 7
