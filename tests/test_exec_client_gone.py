"""Issue 15, acceptance 2, end to end: with ``tools.exec.security: "full"`` a ``sleep 600``
that builtin/echo started through ``exec`` is killed when the client goes away — an HTTP
client hanging up (streaming or not) or a WebSocket ``chat.abort`` — checked by its PID, and
the gateway answers the next request."""
from __future__ import annotations

import json
import os
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from .chat_helpers import PATH
from .test_chat_completions import raw_request, within
from .test_ws_protocol import in_thread, open_client

# The shell writes its own PID, then becomes ``sleep`` (same PID): that PID is the command.
SLEEPER = 'call exec {"command": "echo $$ > pid.txt; exec sleep 600"}'


def exec_config(workspace) -> dict:
    return {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "tools": {"exec": {"security": "full"}},
            "agents": {"list": [{"id": "main", "default": True, "model": "builtin/echo",
                                 "workspace": str(workspace),
                                 "tools": {"allow": ["group:runtime"]}}]}}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def pid_written(workspace, tries: int = 100) -> int:
    """The PID the command wrote to pid.txt, polled every 0.1 s (at most ``tries`` times)."""
    path = workspace / "pid.txt"
    for _ in range(tries):
        text = path.read_text() if path.exists() else ""
        if text.strip().isdigit():
            return int(text)
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("the exec command never wrote pid.txt")


async def gone(pid: int, tries: int = 50) -> bool:
    """True once ``pid`` no longer exists (killed and reaped), polled every 0.1 s."""
    for _ in range(tries):
        if not alive(pid):
            return True
        await deferLater(reactor, 0.1, lambda: None)
    return False


def kill_leftover(pid: int) -> None:
    """A failing test must not leave a ``sleep 600`` behind on a shared machine."""
    if pid and alive(pid):
        os.kill(pid, signal.SIGKILL)


async def answer(http, gw, text: str) -> str:
    response = await http.post(gw.url + PATH, json={
        "model": "moltbot:main", "messages": [{"role": "user", "content": text}]},
        headers=gw.auth_headers)
    body = await response.content()
    assert response.code == 200, body
    return json.loads(body)["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_http_client_hanging_up_kills_the_exec_command(start_gateway, http, tmp_path,
                                                             stream):
    workspace = tmp_path / "ws"
    gw = await start_gateway(exec_config(workspace))
    client = await raw_request(gw, {"model": "moltbot:main", "stream": stream,
                                    "messages": [{"role": "user", "content": SLEEPER}]})
    pid = 0
    try:
        pid = await pid_written(workspace)
        assert alive(pid)
        assert b"sleep" not in client.data      # the run is still waiting on the command
        client.transport.loseConnection()
        await within(client.closed)
        assert await gone(pid), f"exec's sleep (pid {pid}) outlived its client"
    finally:
        kill_leftover(pid)
    assert await answer(http, gw, "still there?") == "still there?"
    assert "exit code 0" in await answer(http, gw, 'call exec {"command": "true"}')


@pytest_twisted.ensureDeferred
async def test_ws_chat_abort_kills_the_exec_command(start_gateway, http, tmp_path):
    workspace = tmp_path / "ws"
    gw = await start_gateway(exec_config(workspace))
    client = await in_thread(open_client, gw.ws_url)
    pid = 0
    try:
        sent = await in_thread(client.call, "chat.send", {"sessionKey": "sleepy",
                                                          "message": SLEEPER})
        assert sent["ok"], sent
        run_id = sent["payload"]["runId"]
        pid = await pid_written(workspace)
        assert alive(pid)
        aborted = await in_thread(client.call, "chat.abort", {"sessionKey": "sleepy"})
        assert aborted["payload"]["aborted"] is True
        assert aborted["payload"]["runIds"] == [run_id]
        assert await gone(pid), f"exec's sleep (pid {pid}) outlived chat.abort"
        waited = await in_thread(client.call, "agent.wait", {"runId": run_id})
        assert waited["ok"] is False and waited["error"]["code"] == "ABORTED"
    finally:
        kill_leftover(pid)
        await in_thread(client.close)
    assert await answer(http, gw, "still there?") == "still there?"
