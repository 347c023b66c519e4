"""The ``tools.mcp`` section: MCP servers whose tools agents may use, each a stdio child
(``command``, ``args``, ``env``, ``cwd``) or a Streamable HTTP endpoint (``url``,
``headers``); and the checks no single key can make (one transport, names, patterns)."""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Annotated, Any, Mapping, Optional

from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass

from .types import NULL_IS_DEFAULTS, SECTION_CONFIG, Bool, HttpUrl, PositiveFloat, Str

SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")
_READ_ONLY = AfterValidator(MappingProxyType)


@dataclass(frozen=True, config=SECTION_CONFIG)
class MCPServerConfig:
    command: Optional[Str] = Field(
        default=None, description="stdio: the program to start (one of command or url)")
    args: tuple[Str, ...] = Field(default=(), description="stdio: its arguments")
    # Secrets may live in env and headers: repr=False keeps them out of any logged Config.
    env: Annotated[Mapping[Str, Str], _READ_ONLY] = Field(
        default_factory=lambda: MappingProxyType({}), repr=False,
        description="stdio: environment added to PATH, HOME and LANG (nothing else is "
                    "inherited from the gateway)")
    cwd: Optional[Str] = Field(default=None, description="stdio: its working folder")
    url: Optional[HttpUrl] = Field(
        default=None, description="Streamable HTTP: the MCP endpoint (one of command or url)")
    headers: Annotated[Mapping[Str, Str], _READ_ONLY] = Field(
        default_factory=lambda: MappingProxyType({}), repr=False,
        description="Streamable HTTP: extra request headers (say Authorization)")
    timeoutSeconds: PositiveFloat = Field(
        default=60.0, description="longest wait for one request (a tools/call included)")
    enabled: Bool = Field(default=True, description="false: configured but not started")


@dataclass(frozen=True, config=SECTION_CONFIG)
class MCPConfig:
    servers: Annotated[Mapping[Str, Annotated[MCPServerConfig, NULL_IS_DEFAULTS]],
                       _READ_ONLY] = Field(
        default_factory=lambda: MappingProxyType({}),
        description="MCP servers by name ([A-Za-z0-9-]+); their tools are "
                    "mcp__<server>__<tool>")


def mcp_server_of(pattern: str) -> Optional[str]:
    """The server an ``mcp__<server>__...`` policy entry names (server names hold no
    ``__``), else None."""
    if not pattern.startswith("mcp__"):
        return None
    server, sep, _rest = pattern[len("mcp__"):].partition("__")
    return server if sep else None


def mcp_problems(config: Any) -> list[str]:
    """``path: problem`` lines: bad server names, not exactly one of command/url, and
    allow/deny patterns naming a server that is not configured."""
    servers = config.tools.mcp.servers
    errors = []
    for name, server in servers.items():
        where = f"tools.mcp.servers.{name}"
        if not SERVER_NAME_RE.match(name):
            errors.append(f"{where}: a server name must match [A-Za-z0-9-]+")
        if (server.command is None) == (server.url is None):
            errors.append(f"{where}: needs exactly one of command (stdio) or url "
                          "(Streamable HTTP)")
    places = [("tools", config.tools)] + [(f"agents.list[{i}].tools", agent.tools)
                                          for i, agent in enumerate(config.agents.list)]
    for where, tools in places:
        for key in ("allow", "deny"):
            for i, entry in enumerate(getattr(tools, key, None) or ()):
                server = mcp_server_of(entry)
                if server is not None and server not in servers:
                    errors.append(f'{where}.{key}[{i}]: "{entry}" names MCP server '
                                  f'"{server}", which is not in tools.mcp.servers '
                                  f"(configured: {', '.join(sorted(servers)) or 'none'})")
    return errors
