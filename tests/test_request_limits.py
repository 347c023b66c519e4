"""Issue 13 item 6: request size limits. Too many messages (or Responses input items), too
many content parts in one message, or too much text in one request is a 400 naming the
limit, checked on a real gateway before anything is run or stored."""
from __future__ import annotations

import json

import pytest_twisted

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401


async def post(http, gw, path, body):
    headers = {"Content-Type": "application/json", **gw.auth_headers}
    response = await http.post(gw.url + path, json.dumps(body).encode(), headers=headers)
    return response.code, json.loads(await response.content())


def small_limits_config(**chat):
    raw = config(chat={"maxMessages": 5, "maxContentParts": 3, "maxTotalChars": 100, **chat})
    raw["gateway"]["http"]["endpoints"]["responses"] = {
        "enabled": True, "maxInputItems": 5, "maxContentParts": 3, "maxTotalChars": 100}
    return raw


def user(text):
    return {"role": "user", "content": text}


@pytest_twisted.ensureDeferred
async def test_too_many_messages_is_400_naming_max_messages(start_gateway, http):
    gw = await start_gateway(small_limits_config())
    code, body = await post(http, gw, PATH, {"messages": [user("hi")] * 6})
    assert code == 400
    assert body["error"]["param"] == "messages"
    assert body["error"]["code"] == "too_many_messages"
    assert "chatCompletions.maxMessages" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    code, _ = await post(http, gw, PATH, {"messages": [user("hi")] * 5})
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_too_many_content_parts_is_400_naming_the_message(start_gateway, http):
    gw = await start_gateway(small_limits_config())
    parts = [{"type": "text", "text": "a"}] * 4
    code, body = await post(http, gw, PATH, {"messages": [user("x"), user(parts)]})
    assert code == 400
    assert body["error"]["param"] == "messages[1].content"
    assert body["error"]["code"] == "too_many_content_parts"
    assert "chatCompletions.maxContentParts" in body["error"]["message"]
    code, _ = await post(http, gw, PATH, {"messages": [user(parts[:3])]})
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_too_much_text_is_400_naming_max_total_chars(start_gateway, http):
    gw = await start_gateway(small_limits_config())
    code, body = await post(http, gw, PATH, {"messages": [user("a" * 60), user("b" * 60)]})
    assert code == 400
    assert body["error"]["param"] == "messages"
    assert body["error"]["code"] == "too_many_characters"
    assert "chatCompletions.maxTotalChars" in body["error"]["message"]
    code, _ = await post(http, gw, PATH, {"messages": [user("a" * 40), user("b" * 40)]})
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_default_limits_refuse_a_body_of_thousands_of_tiny_parts(start_gateway, http):
    """The issue's 2 MiB body of tiny parts: refused by the default 200 parts per message."""
    gw = await start_gateway(config())
    parts = [{"type": "text", "text": "a"}] * 100_000
    code, body = await post(http, gw, PATH, {"messages": [user(parts)]})
    assert code == 400
    assert body["error"]["code"] == "too_many_content_parts"
    code, body = await post(http, gw, PATH, {"messages": [user("hi")] * 2001})
    assert (code, body["error"]["code"]) == (400, "too_many_messages")


@pytest_twisted.ensureDeferred
async def test_responses_input_has_its_own_limits(start_gateway, http):
    gw = await start_gateway(small_limits_config())
    code, body = await post(http, gw, "/v1/responses", {"input": [user("hi")] * 6})
    assert code == 400
    assert (body["error"]["param"], body["error"]["code"]) == ("input", "too_many_input_items")
    assert "responses.maxInputItems" in body["error"]["message"]
    parts = [{"type": "input_text", "text": "a"}] * 4
    code, body = await post(http, gw, "/v1/responses", {"input": [user(parts)]})
    assert code == 400
    assert body["error"]["param"] == "input[0].content"
    assert "responses.maxContentParts" in body["error"]["message"]
    code, body = await post(http, gw, "/v1/responses",
                            {"input": "hello", "instructions": "x" * 100})
    assert code == 400
    assert (body["error"]["param"], body["error"]["code"]) == ("input", "too_many_characters")
    code, _ = await post(http, gw, "/v1/responses", {"input": [user("hi")] * 5})
    assert code == 200
