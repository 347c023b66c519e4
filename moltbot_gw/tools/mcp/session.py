"""One MCP session over a connected transport, as the specification orders it: the
``initialize`` handshake, ``notifications/initialized``, ``tools/list`` (following
``nextCursor``), then ``tools/call``. What the server sends is validated with the official
``mcp`` package's types (``InitializeResult``, ``ListToolsResult``, ``CallToolResult``)."""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

import mcp.types as mcp_types
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError
from twisted.internet import defer
from twisted.python.failure import Failure

from ... import __version__
from ..base import ToolError
from .jsonrpc import RPCClient

MAX_LIST_PAGES = 100       # tools/list pages followed before giving up on a server
# A server may take a while to start (an interpreter, npx): the handshake and tools/list get
# at least this long, whatever the per-call timeoutSeconds.
MIN_STARTUP_SECONDS = 30.0


class MCPSession:
    """Requests on one live connection, each bounded by ``timeout`` seconds."""

    def __init__(self, server: str, rpc: RPCClient, reactor: Any, timeout: float):
        self.server = server
        self.rpc = rpc
        self.reactor = reactor
        self.timeout = timeout
        self.protocol_version: Optional[str] = None

    def _request(self, method: str, params: Optional[dict[str, Any]] = None,
                 timeout: Optional[float] = None) -> defer.Deferred:
        """``rpc.request`` failing with a ToolError after ``timeout`` (the server is told
        the request is cancelled)."""
        def timed_out(result: Any, timeout: float) -> Any:
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                return Failure(ToolError(f"MCP server {self.server}: {method} timed out "
                                         f"after {timeout:g} s"))
            return result

        waiter = self.rpc.request(method, params)
        return waiter.addTimeout(timeout or self.timeout, self.reactor,
                                 onTimeoutCancel=timed_out)

    @property
    def _startup(self) -> float:
        return max(self.timeout, MIN_STARTUP_SECONDS)

    def _parse(self, model: Any, result: Any, method: str) -> Any:
        try:
            return model.model_validate(result)
        except ValidationError:
            raise ToolError(f"MCP server {self.server} sent an invalid {method} "
                            "result") from None

    async def initialize(self) -> Any:
        """The handshake; returns the server's ``InitializeResult``."""
        params = mcp_types.InitializeRequestParams(
            protocol_version=LATEST_HANDSHAKE_VERSION,
            capabilities=mcp_types.ClientCapabilities(),
            client_info=mcp_types.Implementation(name="moltbot-gw", version=__version__))
        result = self._parse(mcp_types.InitializeResult,
                             await self._request("initialize", dump(params), self._startup),
                             "initialize")
        if result.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise ToolError(f"MCP server {self.server} speaks protocol version "
                            f"{str(result.protocol_version)[:40]!r}, which this gateway "
                            "does not")
        self.protocol_version = result.protocol_version
        self.rpc.notify("notifications/initialized")
        return result

    async def list_tools(self) -> list[Any]:
        """Every tool the server has (``mcp.types.Tool``), all pages."""
        tools: list[Any] = []
        cursor: Optional[str] = None
        for _page in range(MAX_LIST_PAGES):
            page = self._parse(mcp_types.ListToolsResult,
                               await self._request("tools/list",
                                                   {"cursor": cursor} if cursor else None,
                                                   self._startup),
                               "tools/list")
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tools
        raise ToolError(f"MCP server {self.server}: tools/list has over {MAX_LIST_PAGES} "
                        "pages")

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> str:
        """``tools/call``: the result's text; a ToolError when the tool reports an error."""
        raw = await self._request("tools/call", {"name": name, "arguments": dict(arguments)})
        result = self._parse(mcp_types.CallToolResult, raw, "tools/call")
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or f"MCP tool {name} failed")
        return text


def dump(model: Any) -> dict[str, Any]:
    """A model in the wire format (camelCase keys, no nulls)."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def result_text(result: Any) -> str:
    """The text parts of a ``CallToolResult`` joined; other parts named; the structured
    content as JSON when there is no text at all."""
    parts = []
    for item in result.content:
        if getattr(item, "type", None) == "text":
            parts.append(item.text)
        else:
            parts.append(f"[{getattr(item, 'type', 'unknown')} content not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)
