"""End-to-end tests of ``POST /v1/responses`` (the OpenAI Responses API): the official
``openai`` SDK in a thread and raw treq for exact SSE bytes, against real gateways on
127.0.0.1 and a fake OpenAI-compatible upstream that records what the agents sent it.

Every response body is validated against the SDK's ``Response`` model and every SSE event
against its ``ResponseStreamEvent`` union, so a missing required field fails the test.
"""
from __future__ import annotations

import base64
import json

import openai
import pytest
import pytest_twisted
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from moltbot_gw.openai.response_index import ResponseIndex, StoredResponse

from .chat_helpers import BETA_PROMPT, config, http, no_leftovers  # noqa: F401
from .conftest import TOKEN

PATH = "/v1/responses"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
OSLO = '{"city":"Oslo"}'
PNG_1PX = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cf00000301010018dd8db40000000049454e44ae426082")).decode()
EVENT = TypeAdapter(ResponseStreamEvent)


# --- helpers ---------------------------------------------------------------------------------


def rconfig(up=None, *, enabled=True, chat_enabled=False, **kwargs):
    raw = config(up, enabled=chat_enabled, **kwargs)
    if enabled is not None:
        raw["gateway"]["http"]["endpoints"]["responses"] = {"enabled": enabled}
    return raw


def sdk(gw, work, api_key=TOKEN):
    """Run ``work(client)`` with the blocking SDK in a thread."""
    def run():
        with openai.OpenAI(api_key=api_key, base_url=gw.url + "/v1", max_retries=0,
                           timeout=10) as client:
            return work(client)
    return threads.deferToThread(run)


async def post(http, gw, body=None, headers=None, *, auth=True, method="POST", data=None):
    all_headers = {"Content-Type": "application/json"}
    if auth:
        all_headers.update(gw.auth_headers)
    all_headers.update(headers or {})
    if data is None and body is not None:
        data = json.dumps(body).encode()
    response = await http.request(method, gw.url + PATH, data=data, headers=all_headers)
    return response, await response.content()


def header(response, name):
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def assert_error(response, body, status, param="unset", code=None):
    assert response.code == status, body
    assert header(response, "content-type") == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param != "unset":
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert b"Traceback" not in body
    return error


def response_json(body: bytes) -> dict:
    data = json.loads(body)
    Response.model_validate(data)          # nothing the SDK requires is missing
    return data


def sse_events(body: bytes) -> list[dict]:
    """The events of a Responses SSE body: each ``event: <type>`` + ``data: <json>`` whose
    ``type`` matches, valid for the SDK, numbered 0, 1, 2, ..."""
    events = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block or block.startswith(":"):
            continue
        lines = block.split("\n")
        assert len(lines) == 2, block
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][len("data: "):])
        assert data["type"] == lines[0][len("event: "):]
        EVENT.validate_python(data)
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def upstream_messages(up, index=-1):
    return up.requests[index].body["messages"]


def transcript_records(state_dir, agent_id):
    files = sorted((state_dir / "agents" / agent_id / "sessions").glob("*.jsonl"))
    records = [json.loads(line) for path in files
               for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("type") == "message"]


def sessions_index(state_dir, agent_id):
    """The session index as the gateway reads it (sessions.json plus its journal)."""
    from moltbot_gw.sessions.index import load_index_document
    return load_index_document(state_dir / "agents" / agent_id / "sessions", agent_id)


# --- enabling, methods, auth ---------------------------------------------------------------


@pytest.mark.parametrize("enabled", [None, False], ids=["absent", "false"])
@pytest_twisted.ensureDeferred
async def test_disabled_endpoint_is_404_for_any_method_as_if_absent(start_gateway, http, enabled):
    gw = await start_gateway(rconfig(enabled=enabled, chat_enabled=True))
    for method in ("POST", "GET", "DELETE"):
        response, body = await post(http, gw, {"model": "moltbot", "input": "hi"},
                                    method=method)
        assert_error(response, body, 404, code="not_found")


@pytest_twisted.ensureDeferred
async def test_get_is_405_once_enabled(start_gateway, http):
    gw = await start_gateway(rconfig())
    response, body = await post(http, gw, method="GET")
    assert_error(response, body, 405)
    assert header(response, "allow") == "POST"


@pytest.mark.parametrize("token", [None, "wrong-token"])
@pytest_twisted.ensureDeferred
async def test_missing_or_wrong_token_is_401(start_gateway, http, upstream, token):
    gw = await start_gateway(rconfig(upstream))
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi"}, headers,
                                auth=False)
    assert_error(response, body, 401, code="invalid_api_key")
    assert header(response, "www-authenticate").startswith("Bearer")
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_sdk_wrong_token_raises_authentication_error(start_gateway):
    gw = await start_gateway(rconfig())

    def work(client):
        with pytest.raises(openai.AuthenticationError):
            client.responses.create(model="moltbot", input="hi")
    await sdk(gw, work, api_key="nope")


# --- non-streaming -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_create_returns_a_response_whose_output_text_is_the_echo(start_gateway, http):
    gw = await start_gateway(rconfig())
    response = await sdk(gw, lambda c: c.responses.create(model="moltbot", input="hi"))
    assert response.output_text == "hi"
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert response.model == "moltbot"
    [message] = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant",
                                                            "completed")
    assert message.id.startswith("msg_")
    assert response.usage.total_tokens == (response.usage.input_tokens
                                           + response.usage.output_tokens)
    # the raw body: exactly the documented shapes
    raw, body = await post(http, gw, {"model": "moltbot:main", "input": "hello there"})
    assert raw.code == 200 and header(raw, "content-type") == "application/json"
    data = response_json(body)
    assert data["output"] == [{"type": "message", "id": data["output"][0]["id"],
                               "status": "completed", "role": "assistant",
                               "content": [{"type": "output_text", "text": "hello there",
                                            "annotations": []}]}]
    assert data["usage"]["input_tokens_details"]["cached_tokens"] == 0
    assert data["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert {k: data[k] for k in ("error", "incomplete_details", "instructions", "metadata",
                                 "parallel_tool_calls", "previous_response_id", "tools",
                                 "tool_choice", "text", "truncation", "user", "store")} == {
        "error": None, "incomplete_details": None, "instructions": None, "metadata": {},
        "parallel_tool_calls": True, "previous_response_id": None, "tools": [],
        "tool_choice": "auto", "text": {"format": {"type": "text"}}, "truncation": "disabled",
        "user": None, "store": True}


@pytest_twisted.ensureDeferred
async def test_previous_response_id_continues_an_anonymous_chain(start_gateway, upstream, state_dir):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="R1").queue(text="R2").queue(text="R3")
    first = await sdk(gw, lambda c: c.responses.create(model="moltbot:beta", input="first"))
    assert first.output_text == "R1"
    assert upstream_messages(upstream) == [{"role": "system", "content": BETA_PROMPT},
                                           {"role": "user", "content": "first"}]
    # "moltbot" names no agent: the previous response's agent answers
    second = await sdk(gw, lambda c: c.responses.create(
        model="moltbot", input="second", previous_response_id=first.id))
    assert second.output_text == "R2" and second.previous_response_id == first.id
    assert second.id != first.id
    assert upstream_messages(upstream) == [{"role": "system", "content": BETA_PROMPT},
                                           {"role": "user", "content": "first"},
                                           {"role": "assistant", "content": "R1"},
                                           {"role": "user", "content": "second"}]
    # anonymous calls are stateless: the chain lives in the response index, not a session
    assert sessions_index(state_dir, "beta") == {}
    assert transcript_records(state_dir, "beta") == []
    # a response without previous_response_id starts afresh
    await sdk(gw, lambda c: c.responses.create(model="moltbot:beta", input="third"))
    assert upstream_messages(upstream)[1:] == [{"role": "user", "content": "third"}]


@pytest_twisted.ensureDeferred
async def test_unknown_previous_response_id_is_404(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi",
                                           "previous_response_id": "resp_nope"})
    assert_error(response, body, 404, param="previous_response_id",
                 code="previous_response_not_found")
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_previous_response_of_another_agent_is_400(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    _, body = await post(http, gw, {"model": "moltbot:main", "input": "hi"})
    first = json.loads(body)["id"]
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi",
                                           "previous_response_id": first})
    assert_error(response, body, 400, param="previous_response_id")
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_user_and_session_key_header_pick_sessions_as_for_chat(start_gateway, http, upstream,
                                                                     state_dir):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="R")
    for text in ("one", "two"):
        await post(http, gw, {"model": "moltbot:beta", "user": "alice", "input": text})
    assert upstream_messages(upstream)[1:] == [{"role": "user", "content": "one"},
                                               {"role": "assistant", "content": "R"},
                                               {"role": "user", "content": "two"}]
    assert "agent:beta:openai-user:alice" in sessions_index(state_dir, "beta")
    # the header overrides user
    await post(http, gw, {"model": "moltbot:beta", "user": "alice", "input": "three"},
               {"x-moltbot-session-key": "my-chat"})
    assert upstream_messages(upstream)[1:] == [{"role": "user", "content": "three"}]
    assert "agent:beta:my-chat" in sessions_index(state_dir, "beta")
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "x"},
                                {"x-moltbot-session-key": "agent:main:stolen"})
    assert_error(response, body, 400, param="x-moltbot-session-key")


@pytest.mark.parametrize("how", ["model", "header"])
@pytest_twisted.ensureDeferred
async def test_agent_choice_and_unknown_agent_404(start_gateway, http, upstream, how):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="from beta")
    if how == "model":
        ok = {"model": "agent:beta", "input": "hi"}, {}
        bad = {"model": "clawdbot:ghost", "input": "hi"}, {}
    else:
        ok = {"model": "moltbot", "input": "hi"}, {"x-moltbot-agent-id": "beta"}
        bad = {"model": "moltbot", "input": "hi"}, {"x-moltbot-agent-id": "ghost"}
    response, body = await post(http, gw, *ok)
    assert response_json(body)["output"][0]["content"][0]["text"] == "from beta"
    response, body = await post(http, gw, *bad)
    assert_error(response, body, 404, param="model", code="model_not_found")


@pytest_twisted.ensureDeferred
async def test_instructions_and_system_items_join_the_agent_prompt(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    response, body = await post(http, gw, {
        "model": "moltbot:beta", "instructions": "Answer in French.",
        "input": [{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]})
    assert response_json(body)["instructions"] == "Answer in French."
    assert upstream_messages(upstream) == [
        {"role": "system", "content": f"{BETA_PROMPT}\n\nAnswer in French.\n\nBe brief."},
        {"role": "user", "content": "hi"}]


@pytest_twisted.ensureDeferred
async def test_input_items_become_history_and_the_turn(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    await post(http, gw, {"model": "moltbot:beta", "tools": [WEATHER], "input": [
        {"type": "message", "role": "user", "content": "Weather in Oslo?"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": OSLO},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "It is sunny.", "annotations": []}]},
        {"role": "user", "content": [
            {"type": "input_text", "text": "And this?"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_1PX}"}]}]})
    assert upstream_messages(upstream)[1:] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": OSLO}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": [
            {"type": "text", "text": "And this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}}]}]


@pytest_twisted.ensureDeferred
async def test_sampling_fields_reach_the_upstream_and_length_is_incomplete(start_gateway, http,
                                                                           upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="cut", finish_reason="length")
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi",
                                           "temperature": 0.5, "top_p": 0.9,
                                           "max_output_tokens": 7, "metadata": {"k": "v"}})
    sent = upstream.requests[-1].body
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.5, 0.9, 7)
    data = response_json(body)
    assert data["status"] == "incomplete"
    assert data["incomplete_details"] == {"reason": "max_output_tokens"}
    assert (data["temperature"], data["top_p"], data["max_output_tokens"]) == (0.5, 0.9, 7)
    assert data["metadata"] == {"k": "v"}
    assert data["output"][0]["status"] == "incomplete"


@pytest_twisted.ensureDeferred
async def test_reasoning_is_a_reasoning_item_placed_first(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="Answer.", reasoning="Let me think.")
    _, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi"})
    output = response_json(body)["output"]
    assert [item["type"] for item in output] == ["reasoning", "message"]
    assert output[0]["id"].startswith("rs_")
    assert output[0]["summary"] == [{"type": "summary_text", "text": "Let me think."}]


# --- function tools ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_function_call_then_function_call_output_with_previous_response_id(
        start_gateway, upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="", tool_calls=(("get_weather", OSLO),))
    upstream.queue(text="Sunny in Oslo.")
    first = await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", input="Weather in Oslo?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}))
    sent = upstream.requests[-1].body
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": WEATHER["parameters"]}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    [call] = first.output
    assert call.type == "function_call" and call.id.startswith("fc_")
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_fake_0", "get_weather", OSLO, "completed")
    assert first.output_text == ""
    assert first.tools[0].name == "get_weather"
    second = await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", previous_response_id=first.id, tools=[WEATHER], input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]))
    assert second.output_text == "Sunny in Oslo."
    assert upstream_messages(upstream)[-1] == {"role": "tool", "tool_call_id": "call_fake_0",
                                               "content": "sunny"}


@pytest_twisted.ensureDeferred
async def test_function_call_output_follows_its_call_in_what_the_upstream_gets(start_gateway,
                                                                               upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.queue(text="", tool_calls=(("get_weather", OSLO),))
    upstream.queue(text="Sunny in Oslo.")
    first = await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", input="Weather in Oslo?", tools=[WEATHER]))
    await sdk(gw, lambda c: c.responses.create(
        model="moltbot:beta", previous_response_id=first.id, tools=[WEATHER], input=[
            {"type": "function_call_output", "call_id": "call_fake_0", "output": "sunny"}]))
    roles = [(m["role"], m.get("tool_call_id"),
              [c["id"] for c in m.get("tool_calls") or []]) for m in upstream_messages(upstream)]
    assert roles == [("system", None, []), ("user", None, []),
                     ("assistant", None, ["call_fake_0"]), ("tool", "call_fake_0", [])]


@pytest_twisted.ensureDeferred
async def test_streamed_function_call_events(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="", tool_calls=(("get_weather", OSLO),), tool_chunks=3)
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "Oslo?",
                                           "tools": [WEATHER], "stream": True})
    events = sse_events(body)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    added, done, completed = events[2], events[7], events[8]["response"]
    assert added["item"] == {"type": "function_call", "id": added["item"]["id"],
                             "call_id": "call_fake_0", "name": "get_weather", "arguments": "",
                             "status": "in_progress"}
    assert "".join(e["delta"] for e in events[3:6]) == OSLO == events[6]["arguments"]
    assert all(e["item_id"] == added["item"]["id"] and e["output_index"] == 0
               for e in events[3:7])
    assert done["item"] == {**added["item"], "arguments": OSLO, "status": "completed"}
    assert completed["output"] == [done["item"]]
    Response.model_validate(completed)

    def work(client):   # the SDK's stream helper accepts the same events
        with client.responses.stream(model="moltbot:beta", input="Oslo?",
                                     tools=[WEATHER]) as stream:
            types = [e.type for e in stream]
            return types, stream.get_final_response()
    types, final = await sdk(gw, work)
    assert types == [e["type"] for e in events]
    assert [(o.type, o.call_id, o.arguments) for o in final.output] == [
        ("function_call", "call_fake_0", OSLO)]


# --- streaming -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_stream_yields_the_documented_event_sequence(start_gateway, upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="Hello there friend")

    def work(client):
        with client.responses.stream(model="moltbot:beta", input="hi") as stream:
            events = list(stream)
            return events, stream.get_final_response()
    events, final = await sdk(gw, work)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [
        "Hello ", "there ", "friend"]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[2].item.status == "in_progress" and events[2].item.content == []
    assert events[7].text == "Hello there friend"
    assert final.output_text == "Hello there friend" and final.status == "completed"
    assert final.id == events[0].response.id
    assert final.output[0].id == events[2].item.id


@pytest_twisted.ensureDeferred
async def test_raw_stream_bytes_headers_and_item_fields(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="Answer.", reasoning="Hmm.")
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi",
                                           "stream": True})
    assert response.code == 200
    assert header(response, "content-type").startswith("text/event-stream")
    assert header(response, "cache-control") == "no-cache"
    assert header(response, "x-accel-buffering") == "no"
    assert body.startswith(b"event: response.created\ndata: {")
    events = sse_events(body)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    reasoning, message = events[7]["item"], events[13]["item"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Hmm."}]
    for e in events[9:13]:
        assert (e["item_id"], e["output_index"], e["content_index"]) == (message["id"], 1, 0)
    assert events[9]["part"] == {"type": "output_text", "text": "", "annotations": []}
    assert events[12]["part"] == {"type": "output_text", "text": "Answer.", "annotations": []}
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"] == [reasoning, message]
    assert final["usage"]["total_tokens"] > 0
    assert {e["response"]["id"] for e in (events[0], events[1], events[-1])} == {final["id"]}


@pytest_twisted.ensureDeferred
async def test_stream_cut_at_max_output_tokens_ends_with_response_incomplete(start_gateway, http,
                                                                            upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="a b", finish_reason="length")
    _, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi", "stream": True,
                                    "max_output_tokens": 2})
    events = sse_events(body)
    assert [e["type"] for e in events][-2:] == ["response.output_item.done",
                                                "response.incomplete"]
    final = events[-1]["response"]
    assert (final["status"], final["incomplete_details"]) == ("incomplete",
                                                              {"reason": "max_output_tokens"})
    assert final["output"][0]["status"] == "incomplete"
    assert not any(e["type"] == "response.completed" for e in events)


@pytest_twisted.ensureDeferred
async def test_keepalive_comments_flow_while_the_upstream_is_slow(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream, chat={"keepaliveSeconds": 0.1}))
    upstream.script(text="late", stall_before_headers=0.35)
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi",
                                           "stream": True})
    assert response.code == 200
    assert body.count(b": keepalive\n\n") >= 2
    assert body.index(b"event: response.created") < body.index(b": keepalive")
    events = sse_events(body)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "late"


@pytest_twisted.ensureDeferred
async def test_failure_mid_stream_ends_with_exactly_one_response_failed(start_gateway, http,
                                                                       upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="one two three", drop_after=1)
    response, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi",
                                           "stream": True})
    assert response.code == 200
    events = sse_events(body)
    types = [e["type"] for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta",
                     "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["id"] == events[0]["response"]["id"]
    assert failed["error"]["code"] == "server_error" and failed["error"]["message"]
    assert failed["output"][0]["content"][0]["text"] == "one "
    assert failed["output"][0]["status"] == "incomplete"
    assert b"Traceback" not in body


@pytest_twisted.ensureDeferred
async def test_failure_before_any_output_is_a_plain_http_error(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(status=503)
    for stream in (True, False):
        response, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi",
                                               "stream": stream})
        assert_error(response, body, 502, code="upstream_error")

    def work(client):
        with pytest.raises(openai.APIStatusError) as info:
            with client.responses.stream(model="moltbot:beta", input="hi") as stream:
                list(stream)
        return info.value.status_code
    assert await sdk(gw, work) == 502


class _Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.closed = Deferred()
        self.waiter = None

    def dataReceived(self, data):
        self.data += data
        if self.waiter is not None and b"output_text.delta" in self.data:
            waiter, self.waiter = self.waiter, None
            waiter.callback(None)

    def connectionLost(self, reason):
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_client_disconnect_cancels_the_run_and_its_upstream_request(start_gateway, upstream,
                                                                         state_dir):
    gw = await start_gateway(rconfig(upstream))
    upstream.script(text="one two three four five six", delay=0.2)
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", gw.port),
                                   _Collect())
    client.waiter = Deferred()
    # a session (user) so that the aborted turn is recorded; anonymous calls keep none
    data = json.dumps({"model": "moltbot:beta", "input": "hi", "stream": True,
                       "user": "alice"}).encode()
    client.transport.write(
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    await client.waiter.addTimeout(3, reactor)
    client.transport.loseConnection()
    await client.closed
    await upstream.requests[-1].connection_lost.addTimeout(3, reactor)
    for _ in range(300):
        if not gw.service.runner.active:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert not gw.service.runner.active
    records = [r for r in transcript_records(state_dir, "beta") if r["role"] == "assistant"]
    assert [r["status"] for r in records] == ["aborted"]
    assert records[0]["content"].startswith("one ") and "six" not in records[0]["content"]


# --- validation ----------------------------------------------------------------------------


INVALID = [
    ({"model": "moltbot"}, "input"),
    ({"input": 5}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 3}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"type": "item_reference", "id": 5}]}, "input[0].id"),
    ({"input": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "input"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,@@@"}]}]},
     "input[0].content[0]"),
    ({"input": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tools[0].name"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}},
     "tool_choice"),
    ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ({"input": "hi", "temperature": 3}, "temperature"),
    ({"input": "hi", "top_p": "high"}, "top_p"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "stream": "yes"}, "stream"),
    ({"input": "hi", "instructions": ["x"]}, "instructions"),
    ({"input": "hi", "previous_response_id": 7}, "previous_response_id"),
    ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "hi", "metadata": {"k": 1}}, "metadata"),
    ({"input": "hi", "background": True}, "background"),
    ({"model": "", "input": "hi"}, "model"),
]


@pytest_twisted.ensureDeferred
async def test_invalid_request_is_400_naming_the_param(start_gateway, http, upstream):
    gw = await start_gateway(rconfig(upstream))
    for body, param in INVALID:
        response, raw = await post(http, gw, {"model": "moltbot:beta", **body})
        assert_error(response, raw, 400, param=param)
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_body_that_is_not_json_is_400(start_gateway, http):
    gw = await start_gateway(rconfig())
    response, body = await post(http, gw, data=b"{nope")
    assert_error(response, body, 400, param=None, code="invalid_json")


@pytest_twisted.ensureDeferred
async def test_sdk_bad_request_names_the_param(start_gateway):
    gw = await start_gateway(rconfig())

    def work(client):
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="moltbot", input="hi", temperature=5)
        return info.value.body
    assert (await sdk(gw, work))["param"] == "temperature"


@pytest_twisted.ensureDeferred
async def test_text_format_json_schema_reaches_the_upstream_as_response_format(start_gateway, http,
                                                                               upstream):
    gw = await start_gateway(rconfig(upstream))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    _, body = await post(http, gw, {"model": "moltbot:beta", "input": "hi", "text": {
        "format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}}})
    assert upstream.requests[-1].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema,
                                               "strict": True}}
    assert response_json(body)["text"]["format"]["name"] == "thing"


# --- the response index --------------------------------------------------------------------


def test_response_index_forgets_the_least_recently_used_beyond_capacity():
    index = ResponseIndex(capacity=2)
    a, b, c = (StoredResponse("main", f"agent:main:{n}") for n in "abc")
    index.add("resp_a", a)
    index.add("resp_b", b)
    assert index.get("resp_a") == a        # a is now the most recently used
    index.add("resp_c", c)
    assert (index.get("resp_a"), index.get("resp_b"), index.get("resp_c")) == (a, None, c)
    assert len(index) == 2
