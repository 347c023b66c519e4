"""The access line of a refused request says why: the error's ``code`` and ``param`` as
structured fields and in the text (issue 13, item 15), never the message or the content."""
from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401
from .conftest import TOKEN
from .test_observability import access_log  # noqa: F401

MARKER = "private-words-of-the-user-7731"


async def _post(http, gw, body, token=TOKEN, request_id=None):
    headers = {"Authorization": f"Bearer {token}"}
    if request_id:
        headers["x-request-id"] = request_id
    response = await http.post(gw.url + PATH, json=body, headers=headers)
    await response.content()
    return response.code


@pytest_twisted.ensureDeferred
async def test_access_line_of_a_refused_request_carries_code_and_param_not_content(
        start_gateway, http, access_log):
    gw = await start_gateway(config())
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    assert await _post(http, gw, {
        "model": "moltbot", "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": MARKER}},
        "messages": [{"role": "user", "content": MARKER}]}, request_id="bad-choice") == 400
    assert await _post(http, gw, {"model": f"moltbot:{MARKER[:20]}",
                                  "messages": [{"role": "user", "content": MARKER}]},
                       request_id="no-agent") == 404
    assert await _post(http, gw, {"model": "moltbot", "messages": []},
                       token="wrong-token-000000000", request_id="no-auth") == 401
    assert await _post(http, gw, {"model": "moltbot",
                                  "messages": [{"role": "user", "content": "hi"}]},
                       request_id="fine") == 200
    await deferLater(reactor, 0, lambda: None)
    by_id = {event["request_id"]: event for event in access_log.events}

    refused = by_id["bad-choice"]
    assert (refused["status"], refused["error_code"], refused["error_param"]) == (
        400, "invalid_value", "tool_choice")
    assert formatEvent(refused).endswith(" error=invalid_value param=tool_choice")
    assert (by_id["no-agent"]["error_code"], by_id["no-agent"]["error_param"]) == (
        "model_not_found", "model")
    assert by_id["no-auth"]["status"] == 401 and by_id["no-auth"]["error_code"] is not None
    assert "error=" in formatEvent(by_id["no-auth"])
    fine = by_id["fine"]
    assert (fine["error_code"], fine["error_param"]) == (None, None)
    assert "error=" not in formatEvent(fine)
    for event in access_log.events:
        assert MARKER not in repr(event) and MARKER[:20] not in formatEvent(event)
