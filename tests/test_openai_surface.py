"""The wider OpenAI surface on the real gateway: client tools, images, embeddings, reasoning,
per-request model override, CORS, per-chat session headers, background task prompts and the
history cap — with the official SDK and raw HTTP, against fake upstreams on loopback."""
from __future__ import annotations

import base64
import json
from urllib.parse import urlsplit

import pytest_twisted
from twisted.internet import threads

from .chat_helpers import HI, config, http, no_leftovers  # noqa: F401
from .data import openwebui_prompts as owui
from .test_chat_completions import (assert_error, header, post, sessions_index, sse_payloads,
                                    transcript_records, upstream_messages)
from .test_openai_sdk import sdk

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
PNG_1PX = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cf00000301010018dd8db40000000049454e44ae426082")).decode()


# --- client tools ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_gets_tool_calls_non_stream_and_the_tool_result_reaches_the_upstream(
        start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.queue(text="", tool_calls=(("get_weather", '{"city": "Oslo"}'),))
    upstream.queue(text="It is sunny in Oslo.")
    question = [{"role": "user", "content": "Weather in Oslo?"}]
    first = await sdk(gw, lambda c: c.chat.completions.create(
        model="moltbot:beta", messages=question, tools=[WEATHER_TOOL]))
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert upstream.requests[0].body["tools"][0]["function"]["name"] == "get_weather"

    follow_up = question + [choice.message.model_dump(exclude_none=True),
                            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    second = await sdk(gw, lambda c: c.chat.completions.create(
        model="moltbot:beta", messages=follow_up, tools=[WEATHER_TOOL]))
    assert second.choices[0].message.content == "It is sunny in Oslo."
    sent = upstream_messages(upstream)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[2]["tool_calls"][0]["id"] == call.id
    assert sent[3] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}


@pytest_twisted.ensureDeferred
async def test_sdk_streams_tool_call_fragments_with_index_id_and_name_first(
        start_gateway, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="", tool_calls=(("get_weather", '{"city": "Oslo"}'),), tool_chunks=3)

    def collect(client):
        return list(client.chat.completions.create(
            model="moltbot:beta", messages=HI, tools=[WEATHER_TOOL], stream=True))

    chunks = await sdk(gw, collect)
    fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(fragments) >= 2
    assert fragments[0].id and fragments[0].function.name == "get_weather"
    assert all(f.index == 0 for f in fragments)
    assert all(f.id is None and f.function.name is None for f in fragments[1:])
    arguments = "".join(f.function.arguments or "" for f in fragments)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest_twisted.ensureDeferred
async def test_tool_turns_are_stored_and_replayed_in_a_user_session(start_gateway, upstream,
                                                                   state_dir, http):
    gw = await start_gateway(config(upstream))
    upstream.queue(text="", tool_calls=(("get_weather", '{"city": "Oslo"}'),))
    upstream.queue(text="Sunny.")
    upstream.queue(text="You're welcome.")
    base = {"model": "moltbot:beta", "user": "tina", "tools": [WEATHER_TOOL]}
    response, body = await post(http, gw, {**base, "messages": HI})
    call = json.loads(body)["choices"][0]["message"]["tool_calls"][0]
    history = HI + [{"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
    await post(http, gw, {**base, "messages": history})
    # the stored call is replayed before the result the client just sent
    assert [m["role"] for m in upstream_messages(upstream)] == [
        "system", "user", "assistant", "tool"]
    await post(http, gw, {**base, "messages": history + [
        {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "thanks"}]})
    roles = [(m["role"], m.get("tool_call_id")) for m in upstream_messages(upstream)]
    assert roles == [("system", None), ("user", None), ("assistant", None),
                     ("tool", call["id"]), ("assistant", None), ("user", None)]
    records = transcript_records(state_dir, "beta")
    assert [r["role"] for r in records] == ["user", "assistant", "tool", "assistant", "user",
                                            "assistant"]
    assert records[1]["tool_calls"][0]["id"] == call["id"]


@pytest_twisted.ensureDeferred
async def test_builtin_echo_answers_call_with_that_tool_call(start_gateway, http):
    gw = await start_gateway(config())
    response, body = await post(http, gw, {
        "model": "moltbot", "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": 'call get_weather {"city": "Oslo"}'}]})
    choice = json.loads(body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}


@pytest_twisted.ensureDeferred
async def test_malformed_tools_are_400_naming_the_param(start_gateway, http):
    gw = await start_gateway(config())
    cases = [({"tools": {"x": 1}}, "tools"),
             ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
              "tools[0].function.name"),
             ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
              "tools[0].function.strict"),
             ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
              "tools[0].function.parameters"),
             ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
             ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function",
                                                         "function": {"name": "other"}}},
              "tool_choice"),
             ({"tools": [WEATHER_TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
             ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id")]
    for extra, param in cases:
        response, body = await post(http, gw, {"model": "moltbot", "messages": HI, **extra})
        assert_error(response, body, 400, param=param, type_="invalid_request_error")


# --- reasoning ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reasoning_is_passed_on_and_kept_out_of_the_content(start_gateway, http,
                                                                  upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="Answer.", reasoning="Thinking hard.")
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    message = json.loads(body)["choices"][0]["message"]
    assert message["content"] == "Answer."
    assert message["reasoning_content"] == "Thinking hard."
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI,
                                           "stream": True})
    deltas = [p["choices"][0]["delta"] for p in sse_payloads(body)[:-1] if p["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Thinking hard."
    assert "".join(d.get("content") or "" for d in deltas) == "Answer."


# --- images ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_base64_png_part_reaches_the_upstream_as_an_image_part(start_gateway, http,
                                                                    upstream):
    gw = await start_gateway(config(upstream))
    url = f"data:image/png;base64,{PNG_1PX}"
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
    assert response.code == 200, body
    content = upstream_messages(upstream)[-1]["content"]
    assert content == [{"type": "image_url", "image_url": {"url": url}}]


@pytest_twisted.ensureDeferred
async def test_loopback_image_url_is_refused_even_when_urls_are_allowed(start_gateway, http):
    gw = await start_gateway(config(chat={"images": {"allowUrl": True}}))
    for url in (f"http://127.0.0.1:{gw.port}/health", "http://localhost:1/x.png",
                "http://[::1]/x.png", "http://169.254.169.254/latest"):
        response, body = await post(http, gw, {"model": "moltbot", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "see"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]})
        error = assert_error(response, body, 400, param="messages[0].content[1]",
                             type_="invalid_request_error")
        assert error["message"] == ("image could not be fetched from "
                                    f"{urlsplit(url).hostname}"), error


@pytest_twisted.ensureDeferred
async def test_image_limits_and_bad_data_uris_are_400_naming_the_message(start_gateway, http):
    gw = await start_gateway(config(chat={"images": {"maxParts": 1, "maxBytes": 50}}))
    png = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}}
    cases = [
        [{"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}],
        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
        [{"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,AAAA"}}],
        [png, png],
        [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(b"x" * 100).decode()}}],
    ]
    for parts in cases:
        response, body = await post(http, gw, {"model": "moltbot", "messages": [
            HI[0], {"role": "assistant", "content": "ok"}, {"role": "user", "content": parts}]})
        error = assert_error(response, body, 400, type_="invalid_request_error")
        assert error["message"].startswith("messages[2]"), error


# --- embeddings --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_embeddings_return_one_vector_per_input(start_gateway, upstream):
    raw = config(upstream)
    raw["agents"]["list"][1]["embeddingModel"] = "up/embed-small"
    gw = await start_gateway(raw)
    result = await sdk(gw, lambda c: c.embeddings.create(model="up/embed-small",
                                                         input=["a", "b"]))
    assert [len(d.embedding) > 0 for d in result.data] == [True, True]
    assert [d.index for d in result.data] == [0, 1]
    assert upstream.requests[-1].path.endswith("/embeddings")
    assert upstream.requests[-1].body["model"] == "embed-small"
    by_agent = await sdk(gw, lambda c: c.embeddings.create(model="moltbot:beta", input="a"))
    assert len(by_agent.data) == 1 and upstream.requests[-1].body["model"] == "embed-small"


@pytest_twisted.ensureDeferred
async def test_embeddings_errors_say_what_is_wrong(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    cases = [({"model": "builtin/echo", "input": "a"}, "embeddings_unsupported"),
             ({"model": "moltbot:main", "input": "a"}, "invalid_value"),
             ({"model": "nope/x", "input": "a"}, "invalid_value"),
             ({"model": "up/e", "input": []}, "invalid_value"),
             ({"model": "up/e", "input": "a", "encoding_format": "hex"}, "invalid_value")]
    for body, code in cases:
        response = await http.post(gw.url + "/v1/embeddings", json.dumps(body).encode(),
                                   headers=gw.auth_headers)
        payload = await response.json()
        assert response.code == 400, payload
        assert payload["error"]["code"] == code


# --- per-request model override ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_model_header_reroutes_one_request_and_unknown_provider_is_400(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(config(upstream))
    response, body = await post(http, gw, {"model": "moltbot:main", "user": "mo",
                                           "messages": HI},
                                headers={"x-moltbot-model": "up/other-model"})
    assert response.code == 200
    assert upstream.requests[-1].body["model"] == "other-model"
    assert transcript_records(state_dir, "main")[-1]["model"] == "up/other-model"
    response, body = await post(http, gw, {"model": "moltbot:main", "messages": HI},
                                headers={"x-moltbot-model": "nowhere/x"})
    assert_error(response, body, 400, param="x-moltbot-model")


@pytest_twisted.ensureDeferred
async def test_model_header_respects_the_agent_allowlist(start_gateway, http, upstream):
    raw = config(upstream)
    raw["agents"]["list"][1]["models"] = ["up/allowed"]
    gw = await start_gateway(raw)
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI},
                                headers={"x-moltbot-model": "up/forbidden"})
    assert_error(response, body, 400, param="x-moltbot-model")
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI},
                                headers={"x-moltbot-model": "up/allowed"})
    assert response.code == 200 and upstream.requests[-1].body["model"] == "allowed"


# --- clients in the wild -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cors_preflight_from_an_allowed_origin_only(start_gateway, http):
    gw = await start_gateway(config(gateway={"http": {
        "endpoints": {"chatCompletions": {"enabled": True}},
        "cors": {"allowedOrigins": ["https://app.example"]}}}))
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    allowed = await http.request("OPTIONS", gw.url + "/v1/chat/completions",
                                 headers={"Origin": "https://app.example", **preflight})
    assert allowed.code == 204
    assert header(allowed, "access-control-allow-origin") == "https://app.example"
    assert "POST" in header(allowed, "access-control-allow-methods")
    assert "authorization" in header(allowed, "access-control-allow-headers")
    assert "x-moltbot-agent-id" in header(allowed, "access-control-allow-headers")
    other = await http.request("OPTIONS", gw.url + "/v1/chat/completions",
                               headers={"Origin": "https://evil.example", **preflight})
    assert other.headers.getRawHeaders("access-control-allow-origin") is None
    response, _ = await post(http, gw, {"model": "moltbot", "messages": HI},
                             headers={"Origin": "https://app.example"})
    assert header(response, "access-control-allow-origin") == "https://app.example"
    response, _ = await post(http, gw, {"model": "moltbot", "messages": HI},
                             headers={"Origin": "https://evil.example"})
    assert response.headers.getRawHeaders("access-control-allow-origin") is None


@pytest_twisted.ensureDeferred
async def test_configured_session_header_maps_one_ui_chat_to_one_session(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(config(upstream, gateway={"http": {
        "endpoints": {"chatCompletions": {"enabled": True}},
        "sessionHeaders": ["x-openwebui-chat-id"]}}))
    upstream.script(echo=True)
    chat = {"x-openwebui-chat-id": "chat-42"}
    await post(http, gw, {"model": "moltbot:beta", "messages": [
        {"role": "user", "content": "first"}]}, headers=chat)
    # the UI resends the whole conversation every turn (the client owns the history)
    await post(http, gw, {"model": "moltbot:beta", "messages": [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "first"},
        {"role": "user", "content": "second"}]}, headers=chat)
    assert [m["content"] for m in upstream_messages(upstream)[1:]] == [
        "first", "first", "second"]
    await post(http, gw, {"model": "moltbot:beta", "messages": [
        {"role": "user", "content": "elsewhere"}]}, headers={"x-openwebui-chat-id": "chat-7"})
    assert [m["content"] for m in upstream_messages(upstream)[1:]] == ["elsewhere"]
    assert len(sessions_index(state_dir, "beta")) == 2


@pytest_twisted.ensureDeferred
async def test_task_prompt_leaves_no_trace_in_any_session(start_gateway, http, upstream,
                                                          state_dir):
    gw = await start_gateway(config(upstream))
    await post(http, gw, {"model": "moltbot:beta", "user": "ann", "messages": HI})
    before = (state_dir / "agents" / "beta" / "sessions").glob("*.jsonl")
    before = {p.name: p.read_bytes() for p in before}
    task = [{"role": "user", "content": owui.fill(owui.TITLE, HI)}]
    response, _ = await post(http, gw, {"model": "moltbot:beta", "user": "ann",
                                        "messages": task})
    assert response.code == 200
    assert upstream_messages(upstream)[1:] == task  # no chat history mixed in
    after = {p.name: p.read_bytes()
             for p in (state_dir / "agents" / "beta" / "sessions").glob("*.jsonl")}
    assert after == before


@pytest_twisted.ensureDeferred
async def test_long_session_sends_at_most_max_messages_of_history(start_gateway, http,
                                                                  upstream):
    raw = config(upstream)
    raw["agents"]["defaults"] = {"history": {"maxMessages": 10}}
    gw = await start_gateway(raw)
    upstream.script(text="ok")
    for i in range(200):
        response, _ = await post(http, gw, {"model": "moltbot:beta", "user": "long",
                                            "messages": [{"role": "user",
                                                          "content": f"turn {i}"}]})
        assert response.code == 200
    sent = upstream_messages(upstream)
    assert len(sent) == 1 + 10 + 1            # system, capped history, the new turn
    assert sent[-1]["content"] == "turn 199"
    assert sent[1] == {"role": "user", "content": "turn 194"}
