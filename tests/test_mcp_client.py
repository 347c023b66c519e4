"""The MCP client's JSON-RPC and session logic in memory (task.Clock): ``tools/list`` follows
``nextCursor``; a timed-out or cancelled request sends ``notifications/cancelled`` and a late
answer is dropped; a closed connection fails every waiting request at once."""
from __future__ import annotations

import pytest
import pytest_twisted
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


@pytest_twisted.ensureDeferred
async def test_an_http_answer_past_the_cap_is_cut_off_while_reading(monkeypatch):
    """A server that answers with more than MAX_BODY_BYTES is refused as the bytes come,
    not after the whole body was buffered."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    from moltbot_gw.tools.mcp import http as mcp_http

    monkeypatch.setattr(mcp_http, "MAX_BODY_BYTES", 4096)
    written: list[int] = []

    class Endless(Resource):
        isLeaf = True

        def render_POST(self, request):
            request.setHeader(b"content-type", b"application/json")

            def more():
                if request.finished or request.channel is None:
                    return
                request.write(b" " * 1024)
                written.append(1024)
                if len(written) < 1000:
                    reactor.callLater(0, more)
                else:
                    request.finish()
            more()
            return NOT_DONE_YET

    port = reactor.listenTCP(0, Site(Endless()), interface="127.0.0.1")
    transport = mcp_http.HttpTransport(reactor, "big", f"http://127.0.0.1:{port.getHost().port}/",
                                       {}, on_message=lambda _m: None)
    try:
        with pytest.raises(ToolError, match="over 4096 bytes"):
            await transport.send({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert sum(written) < 1000 * 1024    # the server was stopped well before its end
    finally:
        await transport.close()
        await port.stopListening()
