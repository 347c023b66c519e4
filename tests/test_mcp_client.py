"""The MCP client's JSON-RPC and session logic in memory (task.Clock): ``tools/list`` follows
``nextCursor``; a timed-out or cancelled request sends ``notifications/cancelled`` and a late
answer is dropped; a closed connection fails every waiting request at once."""
from __future__ import annotations

from twisted.internet import defer, task

from moltbot_gw.tools.base import ToolError
from moltbot_gw.tools.mcp.jsonrpc import RPCClient
from moltbot_gw.tools.mcp.session import MCPSession

TOOL = {"name": "t{}", "inputSchema": {"type": "object"}}


class PagedServer:
    """Answers tools/list in two pages; records every message; keeps tools/call waiting."""

    def __init__(self):
        self.sent = []
        self.rpc = RPCClient("demo", self.receive)

    def receive(self, message):
        self.sent.append(message)
        if message.get("method") != "tools/list":
            return
        cursor = (message.get("params") or {}).get("cursor")
        page = {"tools": [dict(TOOL, name="second")]} if cursor == "p2" else {
            "tools": [dict(TOOL, name="first")], "nextCursor": "p2"}
        self.rpc.received({"jsonrpc": "2.0", "id": message["id"], "result": page})


def test_tools_list_follows_next_cursor():
    server = PagedServer()
    session = MCPSession("demo", server.rpc, task.Clock(), timeout=5)
    listed = []
    defer.ensureDeferred(session.list_tools()).addCallback(listed.append)
    assert [t.name for t in listed[0]] == ["first", "second"]
    assert server.sent[1]["params"] == {"cursor": "p2"}


def test_a_timed_out_call_is_a_tool_error_and_the_server_is_told():
    server, clock = PagedServer(), task.Clock()
    session = MCPSession("demo", server.rpc, clock, timeout=5)
    failures = []
    call = defer.ensureDeferred(session.call_tool("slow", {}))
    call.addErrback(failures.append)
    clock.advance(5)
    assert failures and failures[0].check(ToolError)
    assert "timed out after 5 s" in failures[0].value.message
    cancelled = server.sent[-1]
    assert cancelled["method"] == "notifications/cancelled"
    assert cancelled["params"]["requestId"] == server.sent[0]["id"]
    assert server.rpc.pending == 0
    server.rpc.received({"jsonrpc": "2.0", "id": server.sent[0]["id"], "result": {}})  # late


def test_closing_fails_waiting_requests_at_once():
    server = PagedServer()
    session = MCPSession("demo", server.rpc, task.Clock(), timeout=60)
    failures = []
    defer.ensureDeferred(session.call_tool("slow", {})).addErrback(failures.append)
    server.rpc.close("MCP server demo exited (signal 9)")
    assert failures[0].value.message == "MCP server demo exited (signal 9)"
    after = []
    server.rpc.request("tools/list").addErrback(after.append)
    assert after[0].check(ToolError)
