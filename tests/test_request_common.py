"""Fields Chat Completions, legacy completions and the Responses API read the same way
(openai/request_common.py, openai/conversation.py): one rule, one error, in all three."""
from __future__ import annotations

import json

import pytest
from twisted.web.test.requesthelper import DummyRequest

from moltbot_gw.openai.chat_request import parse_chat_request
from moltbot_gw.openai.completions import parse_completion_request
from moltbot_gw.openai.conversation import Conversation
from moltbot_gw.openai.errors import APIError
from moltbot_gw.openai.headers import session_from_headers, user_session
from moltbot_gw.openai.request_common import agent_from_model
from moltbot_gw.openai.responses_request import parse_responses_request


def _chat(**fields):
    return parse_chat_request(json.dumps(
        {"messages": [{"role": "user", "content": "hi"}], **fields}).encode())


def _text(**fields):
    return parse_completion_request(json.dumps({"prompt": "hi", **fields}).encode(), 10_000)


def _responses(**fields):
    return parse_responses_request(json.dumps({"input": "hi", **fields}).encode())


PARSERS = [_chat, _text, _responses]


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("fields, param, message", [
    ({"model": ""}, "model", 'model must be a non-empty string, e.g. "moltbot:main"'),
    ({"temperature": 3}, "temperature", "temperature must be a number between 0 and 2"),
    ({"top_p": True}, "top_p", "top_p must be a number between 0 and 1"),
    ({"stream": "yes"}, "stream", "stream must be a boolean"),
])
def test_shared_fields_are_refused_alike(parse, fields, param, message):
    with pytest.raises(APIError) as refused:
        parse(**fields)
    assert (refused.value.status, refused.value.param, refused.value.message) == (
        400, param, message)


@pytest.mark.parametrize("parse, cap", [(_chat, "max_tokens"),
                                        (_chat, "max_completion_tokens"),
                                        (_text, "max_tokens"),
                                        (_responses, "max_output_tokens")])
def test_each_api_names_its_token_cap_and_the_run_gets_max_tokens(parse, cap):
    assert parse(**{cap: 7, "temperature": 0.5}).options == {"max_tokens": 7,
                                                             "temperature": 0.5}
    with pytest.raises(APIError) as refused:
        parse(**{cap: 0})
    assert refused.value.param == cap


@pytest.mark.parametrize("model, agent", [("moltbot:main", "main"), (" Agent:beta ", "beta"),
                                          ("clawdbot:x", "x"), ("gpt-4o", None),
                                          ("moltbot", None)])
def test_agent_from_model(model, agent):
    assert agent_from_model(model) == agent


def test_the_same_model_names_the_same_agent_in_every_api():
    assert {parse(model="moltbot:beta").agent_id for parse in PARSERS} == {"beta"}


def test_a_conversation_splits_after_the_last_assistant_message():
    conversation = Conversation()
    conversation.add("system", "be brief", "messages[0]")
    conversation.add("user", "one", "messages[1]")
    conversation.add("assistant", "", "messages[2]")          # says nothing: dropped
    conversation.add("assistant", [{"type": "text", "text": "two"}], "messages[3]")
    conversation.add_tool_result("call_1", "42")
    conversation.add("user", "three", "messages[5]")
    turn, history = conversation.split()
    assert conversation.system == ["be brief"]
    assert history == [{"role": "user", "content": "one"},
                       {"role": "assistant", "content": "two"}]
    assert turn == [{"role": "tool", "tool_call_id": "call_1", "content": "42"},
                    {"role": "user", "content": "three"}]


def test_an_empty_user_message_is_refused_naming_its_place():
    with pytest.raises(APIError) as refused:
        Conversation().add("user", [], "input[3]")
    assert (refused.value.param, refused.value.code) == ("input[3].content", "empty_message")


def _request(**headers):
    request = DummyRequest([b""])
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value.encode()])
    return request


def test_the_session_key_header_wins_and_leaves_history_to_the_store():
    chosen = session_from_headers(_request(x_moltbot_session_key="agent:main:k",
                                           x_chat_id="c1"), "main", (b"x-chat-id",))
    assert (chosen.key, chosen.client_owns_history) == ("agent:main:k", False)


def test_a_configured_session_header_names_a_chat_session_the_client_owns():
    chosen = session_from_headers(_request(x_chat_id="c1"), "main", (b"x-other", b"x-chat-id"))
    assert (chosen.key, chosen.client_owns_history) == ("agent:main:openai-chat:c1", True)
    assert session_from_headers(_request(), "main", (b"x-chat-id",)) is None
    assert user_session("main", "ann") == "agent:main:openai-user:ann"
