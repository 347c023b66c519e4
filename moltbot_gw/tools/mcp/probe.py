"""The configured MCP servers for one command run outside the daemon (``tools explain``,
``agent --local``): start every server (start, initialize, tools/list), use them, stop them.
Bounded: a server that does not answer in time is reported as not connected, not waited for."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional

from twisted.internet import defer

from .manager import MCPServers

EXPLAIN_TIMEOUT = 30.0   # seconds for every MCP server to start and list its tools


@asynccontextmanager
async def started_servers(reactor: Any, settings: Any,
                          timeout: float = EXPLAIN_TIMEOUT) -> AsyncIterator[MCPServers]:
    """The servers of ``settings`` (``config.tools.mcp``), each connected or given up on
    after ``timeout``; stopped when the block ends."""
    servers = MCPServers(settings, reactor)
    servers.startService()
    try:
        started = servers.started()
        started.addTimeout(timeout, reactor)
        try:
            await started
        except defer.TimeoutError:
            pass
        yield servers
    finally:
        await servers.stopService()


async def explain_with_mcp(reactor: Any, config: Any, agent_id: Optional[str]) -> Any:
    """``policy.explain_agents`` over the tools the configured servers list right now."""
    from ..policy import explain_agents

    async with started_servers(reactor, config.tools.mcp) as servers:
        return explain_agents(config, agent_id, mcp=servers)
