"""Which server tools each agent may use: ``ToolCatalog`` holds the tools the gateway has,
applies the ``tools`` section and each agent's ``agents.list[].tools`` over it (deny wins,
then allow, then the profile), and explains each decision for ``moltbot-gw tools explain``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import AgentConfig, Config, normalize_agent_id
from .base import AgentTools, ToolContext
from .catalogue import EffectivePolicy, effective_policy
from .exec import exec_tools
from .fs import fs_tools
from .web import web_tools


@dataclass(frozen=True)
class Decision:
    """One tool for one agent: allowed or not, and the config key that decided."""

    tool: str
    group: str
    allowed: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "group": self.group, "allowed": self.allowed,
                "reason": self.reason}


class ToolCatalog:
    """The server tools of a gateway and the policy choosing them per agent, built once per
    config (a reload builds a new one, so new runs see the new policy)."""

    def __init__(self, config: Config, reactor: Any = None, fetcher: Any = None,
                 mcp: Any = None):
        self._config = config
        # The live MCPServers: asked at each run, so tools listed after the (asynchronous)
        # handshake are offered to the runs that start after it.
        self._mcp = mcp
        self._reactor = reactor
        self._tools: dict[str, Any] = fs_tools()
        self._tools.update(web_tools(fetcher))   # fetcher: tests inject their own policy
        # None under tools.exec.security "deny"; BwrapMissing (a ValueError: the gateway
        # refuses to start) when its sandbox is bwrap and bwrap is not installed.
        self._tools.update(exec_tools(config.tools.exec))
        self._agents: dict[str, tuple[str, Optional[AgentConfig]]] = {}
        for i, entry in enumerate(config.agents.list):
            agent_id = normalize_agent_id(entry.id) or entry.id
            self._agents[agent_id] = (f"agents.list[{i}]", entry)
        # for_agent's answers: the catalogue lives as long as its config; MCP tool lists change
        self._for_agent: dict[tuple[Any, ...], AgentTools] = {}

    @property
    def tools(self) -> dict[str, Any]:
        """Every server tool the gateway has, by name (whatever the policy)."""
        tools = dict(self._tools)
        if self._mcp is not None:
            tools.update(self._mcp.tools())
        return tools

    def policy(self, agent_id: str) -> EffectivePolicy:
        """The effective policy of an agent (an agent not in agents.list: the global one)."""
        where, entry = self._agents.get(agent_id, ("tools", None))
        return effective_policy(self._config.tools, entry.tools if entry else None, where)

    def explain(self, agent: Any) -> list[Decision]:
        """Every tool the gateway has, allowed or not for ``agent``, and why; sorted."""
        policy = self.policy(agent.id)
        decisions = []
        tools = self.tools
        for name in sorted(tools):
            tool = tools[name]
            allowed, reason = policy.decide(name, tool.group)
            decisions.append(Decision(name, tool.group, allowed, reason))
        if "exec" not in tools:
            decisions.append(Decision("exec", "group:runtime", False,
                                      'tools.exec.security is "deny" (exec is not offered)'))
        for server, problem in (self._mcp.problems() if self._mcp is not None else {}).items():
            if not any(d.group == f"mcp:{server}" for d in decisions):
                decisions.append(Decision(f"mcp__{server}__*", f"mcp:{server}", False,
                                          f"MCP server {server}: {problem}"))
        decisions.sort(key=lambda d: d.tool)
        return decisions

    def for_agent(self, agent: Any) -> AgentTools:
        """The tools ``agent`` (an ``agents.registry.Agent``) may use in a run, with the
        context they run in. No file I/O here: the fs tools create the workspace on use.
        Worked out once per agent and MCP tool list (every run asks; the policy walk cost as
        much as a streamed reply's per-chunk work), then shared: ``AgentTools`` is immutable."""
        key = (agent.id, agent.workspace, self._mcp.version if self._mcp is not None else None)
        tools = self._for_agent.get(key)
        if tools is None:
            if len(self._for_agent) >= 1024:     # MCP servers restarting again and again
                self._for_agent.clear()
            tools = self._for_agent[key] = self._tools_for(agent)
        return tools

    def _tools_for(self, agent: Any) -> AgentTools:
        tools = self.tools
        allowed = {d.tool: tools[d.tool] for d in self.explain(agent) if d.allowed}
        workspace = Path(agent.workspace).expanduser() if agent.workspace else None
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        return AgentTools(tools=allowed, context=ToolContext(agent_id=agent.id,
                                                             workspace=workspace,
                                                             reactor=reactor))


def explain_agents(config: Config, agent_id: Optional[str] = None,
                   mcp: Any = None) -> dict[str, list[Decision]]:
    """``tools explain``: each agent's (or one agent's) decisions, by agent id; ``mcp``: the
    connected ``MCPServers`` whose tools to include. Raises
    ``agents.registry.UnknownAgent`` for an unknown ``agent_id``."""
    from ..agents.registry import AgentRegistry

    registry = AgentRegistry(config)
    catalog = ToolCatalog(config, mcp=mcp)
    agents = [registry.get(agent_id)] if agent_id is not None else list(registry)
    return {agent.id: catalog.explain(agent) for agent in agents}


def explain_text(report: dict[str, list[Decision]]) -> str:
    """The report as text: one block per agent, one ``allow|deny tool (group): reason`` line
    per tool."""
    lines = []
    for agent_id, decisions in report.items():
        allowed = [d.tool for d in decisions if d.allowed]
        lines.append(f"agent {agent_id}: {', '.join(allowed) if allowed else 'no server tools'}")
        for d in decisions:
            lines.append(f"  {'allow' if d.allowed else 'deny '} {d.tool} ({d.group}): "
                         f"{d.reason}")
    return "\n".join(lines)
