"""Rules across fields that no single key's type can check: agent ids valid and unique, at
most one default agent, every model reference naming a configured provider, and the
providers' own cross-field needs."""
from __future__ import annotations

from .agents import ModelChoice
from .errors import show
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
    return errors
