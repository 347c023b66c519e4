"""What a server tool is to the agent loop: an ``IServerTool`` (name, group, JSON-schema
parameters, ``call``), the ``ToolContext`` a call runs in, and ``AgentTools``, the tools one
agent may use in a run. Failures are ``ToolError``: their message goes back to the model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from zope.interface import Attribute, Interface


class ToolError(Exception):
    """A tool call failed (bad arguments, refused, not found, timed out, non-zero exit): the
    model gets ``{"error": message}`` as the call's result; the run goes on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class IServerTool(Interface):
    """A tool the gateway owns and runs for the model."""

    name = Attribute("the function name the model calls, [a-zA-Z0-9_-]{1,64}")
    group = Attribute('its policy group: "group:fs", "group:runtime", "group:web" or '
                      '"mcp:<server>"')
    description = Attribute("what it does, for the model")
    parameters = Attribute("JSON Schema (an object schema) of its arguments")

    def call(arguments: Mapping[str, Any], context: "ToolContext") -> Any:
        """Run with ``arguments`` (a JSON object already checked against ``parameters``'
        required fields); a Deferred firing with the result text, or failing with
        ``ToolError``. Cancelling the Deferred stops the work (kills a child process,
        aborts a fetch). Never blocks the reactor."""


@dataclass(frozen=True)
class ToolContext:
    """Where one run's tool calls happen."""

    agent_id: str
    workspace: Optional[Path]     # the agent's workspace folder (required by group:fs)
    reactor: Any


@dataclass(frozen=True)
class AgentTools:
    """The server tools one agent may use in a run (already filtered by its policy)."""

    tools: Mapping[str, Any] = field(default_factory=dict)   # name -> IServerTool
    context: Optional[ToolContext] = None

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.tools)

    def get(self, name: str) -> Optional[Any]:
        return self.tools.get(name)

    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI function-tool definitions, in a stable order."""
        return [function_schema(self.tools[name]) for name in sorted(self.tools)]


NO_TOOLS = AgentTools()


def function_schema(tool: Any) -> dict[str, Any]:
    """An ``IServerTool`` as an OpenAI ``{"type": "function", "function": {...}}`` tool."""
    return {"type": "function", "function": {"name": tool.name,
                                             "description": tool.description,
                                             "parameters": dict(tool.parameters)}}
