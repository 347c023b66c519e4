"""Issue 15, MCP servers as agent tools, end to end: a real MCP server (the official ``mcp``
package, tests/fakes/mcp_server.py) over stdio and over Streamable HTTP; builtin/echo calls
``mcp__demo__<tool>`` through the gateway's chat completions; a server killed mid-call gives
the model a tool error and is restarted; ``tools explain`` lists the server's tools."""
from __future__ import annotations

import json
import os
import signal

import pytest_twisted

from .conftest import TOKEN
from .support.mcp import chat_config, start_http_server, stdio_server
from .support.waiting import until
from .test_tool_policy import tools_explain
from .test_workspace_tools_e2e import ask


async def ready_gateway(start_gateway, servers, **tools):
    gw = await start_gateway(chat_config(servers, **tools))
    await gw.service.mcp.started()
    for name in servers:
        assert gw.service.mcp.servers[name].ready, gw.service.mcp.problems()
    return gw


@pytest_twisted.ensureDeferred
async def test_stdio_server_tools_are_listed_and_called(start_gateway, http):
    gw = await ready_gateway(start_gateway, {"demo": stdio_server()})
    tools = gw.service.mcp.tools()
    assert {"mcp__demo__add", "mcp__demo__sleep", "mcp__demo__env"} <= set(tools)
    assert "mcp__demo__bad.name" not in tools           # not an OpenAI function name
    add = tools["mcp__demo__add"]
    assert add.group == "mcp:demo" and add.parameters["required"] == ["a", "b"]

    assert await ask(http, gw, 'call mcp__demo__add {"a": 1, "b": 2}') == "3"
    assert await ask(http, gw, 'call mcp__demo__add {"a": 40, "b": 2}', stream=True) == "42"
    failed = await ask(http, gw, 'call mcp__demo__fail {"message": "it broke"}')
    assert "error" in failed, failed


@pytest_twisted.ensureDeferred
async def test_stdio_server_gets_a_fresh_environment(start_gateway, http, monkeypatch):
    monkeypatch.setenv("MOLTBOT_TEST_SECRET", "s3cret-value")
    server = stdio_server()
    server["env"] = {"GIVEN": "yes"}
    gw = await ready_gateway(start_gateway, {"demo": server})
    assert await ask(http, gw, 'call mcp__demo__env {"name": "GIVEN"}') == "yes"
    assert await ask(http, gw, 'call mcp__demo__env {"name": "MOLTBOT_TEST_SECRET"}') == "<unset>"
    assert await ask(http, gw, 'call mcp__demo__env {"name": "CLAWDBOT_GATEWAY_TOKEN"}') == \
        "<unset>"


@pytest_twisted.ensureDeferred
async def test_killed_server_gives_a_tool_error_and_is_restarted(start_gateway, http, tmp_path):
    pid_file = tmp_path / "mcp.pid"
    gw = await ready_gateway(start_gateway, {"demo": stdio_server(pid_file)})
    connection = gw.service.mcp.servers["demo"]
    first_pid = int(pid_file.read_text())

    answer = http.post(gw.url + "/v1/chat/completions", json={
        "model": "moltbot:main",
        "messages": [{"role": "user", "content": 'call mcp__demo__sleep {"seconds": 30}'}]},
        headers=gw.auth_headers)
    await until(lambda: connection._rpc is not None and connection._rpc.pending == 1)
    os.kill(first_pid, signal.SIGKILL)
    response = await answer
    body = json.loads(await response.content())
    text = body["choices"][0]["message"]["content"]
    assert response.code == 200 and "exited" in text and "error" in text, text

    # the next call waits for the restart (backoff 0.5 s) and works
    assert await ask(http, gw, 'call mcp__demo__add {"a": 2, "b": 3}') == "5"
    assert connection.ready and int(pid_file.read_text()) != first_pid


@pytest_twisted.ensureDeferred
async def test_call_timeout_is_a_tool_error(start_gateway, http):
    gw = await ready_gateway(start_gateway, {"demo": stdio_server(timeoutSeconds=0.5)})
    answer = await ask(http, gw, 'call mcp__demo__sleep {"seconds": 20}')
    assert "timed out" in answer, answer
    assert await ask(http, gw, 'call mcp__demo__add {"a": 1, "b": 1}') == "2"


@pytest_twisted.ensureDeferred
async def test_policy_chooses_mcp_tools(start_gateway, http):
    gw = await ready_gateway(start_gateway, {"demo": stdio_server()},
                             profile="coding", allow=["mcp__demo__*"],
                             deny=["mcp__demo__sleep"])
    assert await ask(http, gw, 'call mcp__demo__add {"a": 1, "b": 2}') == "3"
    # a denied tool is not offered: echo cannot call it and answers with the text
    denied = await ask(http, gw, 'call mcp__demo__sleep {"seconds": 0}')
    assert "slept" not in denied


@pytest_twisted.ensureDeferred
async def test_http_server_json_and_sse(start_gateway, http):
    url_sse, stop_sse = await start_http_server()
    url_json, stop_json = await start_http_server("--json")
    gw = None
    try:
        gw = await ready_gateway(start_gateway, {"sse": {"url": url_sse},
                                                 "plain": {"url": url_json}})
        assert gw.service.mcp.servers["sse"]._http.session_id
        assert await ask(http, gw, 'call mcp__sse__add {"a": 1, "b": 2}') == "3"
        assert await ask(http, gw, 'call mcp__plain__add {"a": 3, "b": 4}') == "7"
        failed = await ask(http, gw, 'call mcp__plain__fail {"message": "nope"}')
        assert "error" in failed
    finally:
        if gw is not None:
            await gw.service.mcp.stopService()
        await stop_sse()
        await stop_json()


@pytest_twisted.ensureDeferred
async def test_reload_starts_and_stops_servers(start_gateway, http):
    gw = await ready_gateway(start_gateway, {"demo": stdio_server()})
    from moltbot_gw.config import parse_config, with_overrides
    demo = gw.service.mcp.servers["demo"]

    def reload(servers):
        config = with_overrides(parse_config(chat_config(servers),
                                             env={"CLAWDBOT_GATEWAY_TOKEN": TOKEN},
                                             state_dir=gw.service.config.state_dir), port=0)
        gw.service.reload(config)

    reload({"demo": stdio_server(), "other": stdio_server()})      # demo unchanged: kept
    assert gw.service.mcp.servers["demo"] is demo and demo.ready
    await until(lambda: gw.service.mcp.servers["other"].ready)
    reload({"other": stdio_server()})                               # demo removed: stopped
    assert "demo" not in gw.service.mcp.servers
    await until(lambda: demo.pid is None)
    assert await ask(http, gw, 'call mcp__other__add {"a": 1, "b": 2}') == "3"
    assert await ask(http, gw, 'call mcp__demo__add {"a": 1, "b": 2}') != "3"  # not offered


@pytest_twisted.ensureDeferred
async def test_tools_explain_lists_the_servers_tools(tmp_path):
    document = {"tools": {"profile": "minimal", "allow": ["mcp__demo__add"],
                          "mcp": {"servers": {"demo": stdio_server(),
                                              "gone": {"command": "/nonexistent/mcp"}}}},
                "agents": {"list": [{"id": "main"}]}}
    code, out, err = await tools_explain(tmp_path, document, "--json")
    assert code == 0, err
    decisions = {d["tool"]: d for d in json.loads(out)["agents"]["main"]}
    assert decisions["mcp__demo__add"]["allowed"] is True
    assert decisions["mcp__demo__add"]["reason"] == "tools.allow"
    assert decisions["mcp__demo__sleep"]["allowed"] is False
    assert decisions["mcp__demo__sleep"]["group"] == "mcp:demo"
    assert decisions["mcp__gone__*"]["allowed"] is False
    assert "MCP server gone" in decisions["mcp__gone__*"]["reason"]


@pytest_twisted.ensureDeferred
async def test_a_run_started_before_the_server_is_ready_and_one_after_see_its_tools(
        start_gateway, http):
    """The catalogue works an agent's tools out once, but a server's tools that arrive after
    the first run (the handshake is asynchronous) still reach the next run."""
    gw = await start_gateway(chat_config({"demo": stdio_server()}))
    # the handshake has not finished yet (the server is a Python process importing mcp):
    # this run's echo has no MCP tool to call
    assert not gw.service.mcp.servers["demo"].ready
    early = await ask(http, gw, 'call mcp__demo__add {"a": 1, "b": 2}')
    assert early != "3"
    await gw.service.mcp.started()
    assert gw.service.mcp.servers["demo"].ready
    assert await ask(http, gw, 'call mcp__demo__add {"a": 1, "b": 2}') == "3"
