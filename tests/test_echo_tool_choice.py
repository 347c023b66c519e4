"""``builtin/echo`` honours ``tool_choice`` (issue 13, item 13), seen through the openai SDK:
``"none"`` allows no call, a named function allows only that one, and echo never invents a
call the message did not ask for."""
from __future__ import annotations

import pytest
import pytest_twisted

from .chat_helpers import config, no_leftovers  # noqa: F401
from .test_openai_sdk import sdk

TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                            "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "get_time",
                                            "parameters": {"type": "object"}}}]
ASK_WEATHER = 'call get_weather {"city": "Oslo"}'


def ask(gw, tool_choice, text=ASK_WEATHER, stream=False):
    def work(client):
        kwargs = {} if tool_choice is None else {"tool_choice": tool_choice}
        if not stream:
            return client.chat.completions.create(
                model="moltbot", tools=TOOLS, messages=[{"role": "user", "content": text}],
                **kwargs)
        chunks = list(client.chat.completions.create(
            model="moltbot", tools=TOOLS, messages=[{"role": "user", "content": text}],
            stream=True, **kwargs))
        return chunks
    return sdk(gw, work)


@pytest.mark.parametrize("choice", [None, "auto", "required",
                                    {"type": "function", "function": {"name": "get_weather"}}])
@pytest_twisted.ensureDeferred
async def test_echo_calls_the_tool_the_message_asks_for_when_tool_choice_allows_it(
        start_gateway, choice):
    gw = await start_gateway(config())
    completion = await ask(gw, choice)
    call, = completion.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Oslo"}')
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_echo_with_tool_choice_none_answers_text_instead_of_the_call(
        start_gateway, stream):
    gw = await start_gateway(config())
    answer = await ask(gw, "none", stream=stream)
    if stream:
        assert not any(c.choices[0].delta.tool_calls for c in answer if c.choices)
        assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices) \
            == ASK_WEATHER
        assert answer[-1].choices[0].finish_reason == "stop"
    else:
        message = answer.choices[0].message
        assert message.tool_calls is None and message.content == ASK_WEATHER
        assert answer.choices[0].finish_reason == "stop"


@pytest_twisted.ensureDeferred
async def test_echo_forced_to_one_function_never_calls_another(start_gateway):
    gw = await start_gateway(config())
    completion = await ask(gw, {"type": "function", "function": {"name": "get_time"}})
    message = completion.choices[0].message
    assert message.tool_calls is None and message.content == ASK_WEATHER
    assert completion.choices[0].finish_reason == "stop"


@pytest_twisted.ensureDeferred
async def test_echo_with_tool_choice_required_and_no_call_asked_echoes_the_text(
        start_gateway):
    gw = await start_gateway(config())
    completion = await ask(gw, "required", text="just chatting")
    assert completion.choices[0].message.content == "just chatting"
    assert completion.choices[0].message.tool_calls is None
