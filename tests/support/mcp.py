"""The real MCP server of tests/fakes/mcp_server.py as the gateway config runs it (stdio) or
as a Streamable HTTP server started on 127.0.0.1 port 0 in a child process."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.internet import defer, protocol, reactor

SERVER_SCRIPT = str(Path(__file__).resolve().parent.parent / "fakes" / "mcp_server.py")


def stdio_server(pid_file=None, **extra):
    """A ``tools.mcp.servers`` entry starting the demo server over stdio."""
    env = {"MCP_PID_FILE": str(pid_file)} if pid_file else {}
    return {"command": sys.executable, "args": [SERVER_SCRIPT], "env": env, **extra}


def chat_config(servers, workspace=None, **tools):
    """Chat completions on, one builtin/echo agent, the given MCP servers and policy."""
    return {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "tools": {"profile": "full", "mcp": {"servers": servers}, **tools},
            "agents": {"list": [{"id": "main", "default": True, "model": "builtin/echo",
                                 "workspace": str(workspace) if workspace else "ws"}]}}


class _PortReader(protocol.ProcessProtocol):
    def __init__(self):
        self.port: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self._out = b""

    def outReceived(self, data):
        self._out += data
        if b"\n" in self._out and not self.port.called:
            line = self._out.split(b"\n")[0].decode()
            assert line.startswith("PORT "), line
            self.port.callback(int(line.split()[1]))

    def errReceived(self, data):
        pass

    def processEnded(self, reason):
        if not self.port.called:
            self.port.errback(RuntimeError("the MCP HTTP server did not start"))
        self.ended.callback(None)


async def start_http_server(*extra_args):
    """(url, stop) of the demo server over Streamable HTTP."""
    reader = _PortReader()
    child = reactor.spawnProcess(reader, sys.executable,
                                 [sys.executable, SERVER_SCRIPT, "--http", *extra_args],
                                 env={**os.environ})
    port = await reader.port

    async def stop():
        if not reader.ended.called:
            child.signalProcess("KILL")
        await reader.ended

    return f"http://127.0.0.1:{port}/mcp", stop
