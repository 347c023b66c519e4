"""Issue 15, acceptance 1, end to end: builtin/echo asks for ``read`` / ``write`` with
``call <tool> {json}``; the gateway runs the group:fs tool in the agent's workspace and the
client gets the tool's result as the assistant's answer (stream and not), never the call."""
from __future__ import annotations

import json

import pytest
import pytest_twisted

from .chat_helpers import PATH, http, no_leftovers  # noqa: F401
from .test_chat_completions import sse_payloads


def fs_config(workspace):
    return {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "agents": {"list": [{"id": "main", "default": True, "model": "builtin/echo",
                                 "workspace": str(workspace),
                                 "tools": {"allow": ["group:fs"]}}]}}


async def ask(http, gw, text, stream=False):
    response = await http.post(gw.url + PATH, json={
        "model": "moltbot:main", "stream": stream,
        "messages": [{"role": "user", "content": text}]}, headers=gw.auth_headers)
    body = await response.content()
    assert response.code == 200, body
    if not stream:
        message = json.loads(body)["choices"][0]["message"]
        assert not message.get("tool_calls")          # server tools stay invisible
        return message["content"]
    chunks = [c for c in sse_payloads(body) if c != "[DONE]"]
    assert not any(choice["delta"].get("tool_calls") for c in chunks
                   for choice in c["choices"])
    return "".join(choice["delta"].get("content") or "" for c in chunks
                   for choice in c["choices"])


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_echo_reads_writes_and_is_kept_inside_its_workspace(start_gateway, http,
                                                                  tmp_path, stream):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("buy milk\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret\n")
    (workspace / "link.txt").symlink_to(outside)
    gw = await start_gateway(fs_config(workspace))

    assert "buy milk" in await ask(http, gw, 'call read {"path": "notes.txt"}', stream)
    await ask(http, gw, 'call write {"path": "sub/new.txt", "content": "hello"}', stream)
    assert (workspace / "sub" / "new.txt").read_text() == "hello"
    assert "hello" in await ask(http, gw, 'call read {"path": "sub/new.txt"}', stream)

    for escape in ('{"path": "../secret.txt"}', json.dumps({"path": str(outside)}),
                   '{"path": "link.txt"}'):
        answer = await ask(http, gw, "call read " + escape, stream)
        assert "top secret" not in answer and "error" in answer, answer
    answer = await ask(http, gw, 'call write {"path": "../evil.txt", "content": "x"}', stream)
    assert "error" in answer and not (tmp_path / "evil.txt").exists()
