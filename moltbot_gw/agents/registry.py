"""The agents a gateway serves, built once from config: normalized ids, the default agent,
and each agent's effective settings (its own values over ``agents.defaults``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import AgentConfig, Config, HistoryConfig, ModelChoice, normalize_agent_id
from ..config.agents import ToolLoopConfig

DEFAULT_AGENT_ID = "main"


class UnknownAgent(LookupError):
    def __init__(self, agent_id: str):
        super().__init__(f'unknown agent "{agent_id}"')
        self.agent_id = agent_id


@dataclass(frozen=True)
class Agent:
    """One agent with defaults applied; what a run reads, never re-derived per request."""

    id: str
    name: Optional[str]
    system_prompt: Optional[str]
    model: ModelChoice
    allowed_models: tuple[str, ...]
    embedding_model: Optional[str]
    workspace: Optional[str]
    timeout_seconds: float
    history: HistoryConfig
    max_reply_chars: int
    tool_limits: ToolLoopConfig = ToolLoopConfig()   # agents.defaults.tools


def _configured_id(raw: str) -> str:
    """An agent id from the config, normalized; the config has already rejected bad ids."""
    agent_id = normalize_agent_id(raw)
    assert agent_id is not None, raw
    return agent_id


class AgentRegistry:
    def __init__(self, config: Config):
        defaults = config.agents.defaults
        entries: tuple[AgentConfig, ...] = config.agents.list or (AgentConfig(id=DEFAULT_AGENT_ID),)
        self._agents: dict[str, Agent] = {}
        for entry in entries:
            agent_id = _configured_id(entry.id)
            self._agents[agent_id] = Agent(
                id=agent_id,
                name=entry.name,
                system_prompt=entry.systemPrompt,
                model=entry.model or defaults.model,
                allowed_models=entry.models,
                embedding_model=entry.embeddingModel,
                workspace=entry.workspace,
                timeout_seconds=entry.timeoutSeconds or defaults.timeoutSeconds,
                history=entry.history or defaults.history,
                max_reply_chars=defaults.maxReplyChars,
                tool_limits=defaults.tools,
            )
        marked = [_configured_id(e.id) for e in entries if e.default]
        self.default_id = marked[0] if marked else _configured_id(entries[0].id)

    def __iter__(self):
        return iter(self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._agents)

    def get(self, raw_id: Optional[str] = None) -> Agent:
        """The agent named ``raw_id`` (trimmed, lowercased), or the default for ``None``."""
        if raw_id is None or not raw_id.strip():
            return self._agents[self.default_id]
        agent_id = normalize_agent_id(raw_id)
        agent = self._agents.get(agent_id) if agent_id else None
        if agent is None:
            raise UnknownAgent(raw_id.strip())
        return agent
