"""Rules across fields that no single key's type can check: agent ids valid and unique, at
most one default agent, every model reference naming a configured provider, and the
providers' own cross-field needs, tool policy names known, and a workspace for every agent
that may use the fs tools."""
from __future__ import annotations

from ..tools.catalogue import effective_policy, unknown_names
from .agents import ModelChoice
from .errors import show
from .mcp import mcp_problems
from .root import ConfigFile
from .types import normalize_agent_id, parse_model_ref


def reference_problems(config: ConfigFile) -> list[str]:
    """Every cross-field fault of an otherwise valid config, as ``path: problem`` lines."""
    errors: list[str] = []
    providers = set(config.models.providers) | {"builtin"}

    def check_ref(ref: str, where: str) -> None:
        parsed = parse_model_ref(ref)
        if parsed and parsed[0] not in providers:
            errors.append(f'{where}: unknown provider "{parsed[0]}" in {show(ref)} '
                          f"(configured: {', '.join(sorted(providers))})")

    for name, provider in config.models.providers.items():
        if name == "builtin":
            errors.append('models.providers.builtin: "builtin" is reserved for the built-in '
                          'provider')
        if provider.api == "openai-completions" and not provider.baseUrl:
            errors.append(f"models.providers.{name}.baseUrl: required for openai-completions")

    def check_choice(choice: ModelChoice, where: str) -> None:
        check_ref(choice.primary, f"{where}.primary" if choice.fallbacks else where)
        for i, ref in enumerate(choice.fallbacks):
            check_ref(ref, f"{where}.fallbacks[{i}]")

    check_choice(config.agents.defaults.model, "agents.defaults.model")
    seen: set[str] = set()
    defaults = 0
    for i, agent in enumerate(config.agents.list):
        where = f"agents.list[{i}]"
        if normalize_agent_id(agent.id) is None:
            errors.append(f"{where}.id: expected a lowercase id matching "
                          f"[a-z0-9][a-z0-9_-]{{0,63}}, got {show(agent.id)}")
        elif normalize_agent_id(agent.id) in seen:
            errors.append(f"{where}.id: duplicate agent id {show(agent.id)}")
        seen.add(normalize_agent_id(agent.id) or agent.id)
        defaults += agent.default
        if agent.model is not None:
            check_choice(agent.model, f"{where}.model")
        for j, ref in enumerate(agent.models):
            check_ref(ref, f"{where}.models[{j}]")
        if agent.embeddingModel:
            check_ref(agent.embeddingModel, f"{where}.embeddingModel")
    if defaults > 1:
        errors.append("agents.list: more than one agent is marked default")
    errors += tool_policy_problems(config)
    errors += mcp_problems(config)
    return errors


def tool_policy_problems(config: ConfigFile) -> list[str]:
    """Unknown tool names in ``tools`` / ``agents.list[].tools``; an agent that may use the
    fs tools without a workspace."""
    errors = unknown_names(config.tools, "tools")
    for i, agent in enumerate(config.agents.list):
        errors += unknown_names(agent.tools, f"agents.list[{i}].tools")
    if errors:
        return errors
    if not config.agents.list:
        if effective_policy(config.tools, None, "").allows_group("group:fs"):
            errors.append('tools: the fs tools need a workspace, and the implicit agent "main" '
                          "has none (declare it in agents.list with a workspace)")
        return errors
    for i, agent in enumerate(config.agents.list):
        where = f"agents.list[{i}]"
        policy = effective_policy(config.tools, agent.tools, where)
        if not agent.workspace and policy.allows_group("group:fs"):
            errors.append(f"{where}.workspace: required, the agent may use the group:fs tools")
    return errors
