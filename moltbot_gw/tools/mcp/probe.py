"""``moltbot-gw tools explain`` with MCP servers: connect every configured server (start,
initialize, tools/list), explain each agent's tools with theirs, stop them. Bounded: a
server that does not answer in time is reported as not connected, not waited for."""
from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer

from .manager import MCPServers

EXPLAIN_TIMEOUT = 30.0   # seconds for every MCP server to start and list its tools


async def explain_with_mcp(reactor: Any, config: Any, agent_id: Optional[str]) -> Any:
    """``policy.explain_agents`` over the tools the configured servers list right now."""
    from ..policy import explain_agents

    servers = MCPServers(config.tools.mcp, reactor)
    servers.startService()
    try:
        started = servers.started()
        started.addTimeout(EXPLAIN_TIMEOUT, reactor)
        try:
            await started
        except defer.TimeoutError:
            pass
        return explain_agents(config, agent_id, mcp=servers)
    finally:
        await servers.stopService()
