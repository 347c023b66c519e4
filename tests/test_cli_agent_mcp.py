"""``moltbot-gw agent --local`` with MCP servers configured (issue 15): the command starts the
configured servers for its run (the real MCP server of tests/fakes/mcp_server.py over stdio),
builtin/echo calls one of their tools, and the server is stopped when the command ends."""
from __future__ import annotations

import json
import os
import sys

import pytest_twisted
from twisted.internet import reactor, utils
from twisted.internet.task import deferLater

from .support.mcp import chat_config, stdio_server


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:     # a zombie (exited, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest_twisted.ensureDeferred
async def test_agent_local_calls_a_tool_of_a_configured_mcp_server_and_stops_it(tmp_path):
    pid_file = tmp_path / "mcp.pid"
    config = tmp_path / "cli.json5"
    config.write_text(json.dumps(chat_config({"demo": stdio_server(pid_file)},
                                             workspace=tmp_path / "ws")))
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable, ["-m", "moltbot_gw.cli", "agent", "--local", "--config", str(config),
                         "--message", 'call mcp__demo__add {"a": 40, "b": 2}'],
        env={"MOLTBOT_STATE_DIR": str(tmp_path / "st"), "PATH": "/usr/bin:/bin"})
    assert (code, out.decode().strip()) == (0, "42"), err
    assert "[tool mcp__demo__add: ok" in err.decode()
    pid = int(pid_file.read_text())
    for _ in range(500):                 # stopped with the command, not left running
        if not alive(pid):
            break
        await deferLater(reactor, 0.02, lambda: None)
    else:
        raise AssertionError(f"the MCP server {pid} outlived the command")
