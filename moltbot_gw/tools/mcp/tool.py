"""A tool of an MCP server as a server tool: ``mcp__<server>__<tool>`` in policy group
``mcp:<server>``, the server's input schema as its parameters; a call is a ``tools/call``.
Names an OpenAI function cannot carry are skipped (logged)."""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from twisted.logger import Logger
from zope.interface import implementer

from ..base import IServerTool, ToolContext

log = Logger()
FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def tool_name(server: str, tool: str) -> str:
    return f"mcp__{server}__{tool}"


@implementer(IServerTool)
class MCPTool:
    """One listed tool of one server; ``connection`` (a ``manager.ServerConnection``) runs
    the call on whatever session the server has at that moment."""

    def __init__(self, connection: Any, server: str, tool: Any):
        self.connection = connection
        self.server_tool = tool.name
        self.name = tool_name(server, tool.name)
        self.group = f"mcp:{server}"
        self.description = tool.description or f"{tool.name} (MCP server {server})"
        schema = dict(tool.input_schema)
        schema.setdefault("type", "object")
        self.parameters = schema

    def call(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        return self.connection.call(self.server_tool, arguments)


def server_tools(connection: Any, server: str, listed: list[Any]) -> dict[str, MCPTool]:
    """The listed tools usable as OpenAI functions, by gateway name."""
    tools: dict[str, MCPTool] = {}
    for tool in listed:
        name: Optional[str] = tool_name(server, tool.name)
        if not FUNCTION_NAME_RE.match(name or ""):
            log.warn("MCP server {server}: tool {tool!r} skipped: its name {name!r} is not an "
                     "OpenAI function name ([A-Za-z0-9_-], at most 64 characters)",
                     server=server, tool=tool.name[:100], name=name[:100] if name else "")
            continue
        tools[tool_name(server, tool.name)] = MCPTool(connection, server, tool)
    return tools
