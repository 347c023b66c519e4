"""The gateway's JSON5 config, loaded once at start and validated into frozen objects.

The models are pydantic dataclasses by section (``gateway.py``, ``providers.py``,
``agents.py``, ``root.py``); ``loading.py`` reads the file and the environment; ``errors.py``
words every fault as ``dotted.path: problem``; ``docs.py`` renders the key table of
docs/configuration.rst. Import everything from here.
"""
from .agents import (
                     AgentConfig,
                     AgentDefaults,
                     AgentsConfig,
                     HistoryConfig,
                     ModelChoice,
                     SessionConfig,
)
from .docs import iter_keys, render_key_table
from .errors import ConfigError
from .gateway import (
                     DEFAULT_PORT,
                     MIN_EXPOSED_SECRET_LENGTH,
                     AuthConfig,
                     ChatCompletionsConfig,
                     CorsConfig,
                     EndpointsConfig,
                     GatewayConfig,
                     HttpConfig,
                     ImagesConfig,
                     LimitsConfig,
                     MetricsConfig,
                     RateLimitConfig,
                     ResponsesConfig,
                     WebSocketConfig,
)
from .loading import (
                     load_config,
                     parse_config,
                     resolve_config_path,
                     resolve_state_dir,
                     substitute_env,
                     with_overrides,
)
from .providers import ModelsConfig, ProviderConfig
from .root import Config, ConfigFile, json_schema
from .types import AGENT_ID_RE, normalize_agent_id, parse_model_ref

__all__ = [
    "AGENT_ID_RE", "DEFAULT_PORT", "MIN_EXPOSED_SECRET_LENGTH", "AgentConfig", "AgentDefaults",
    "AgentsConfig", "AuthConfig", "ChatCompletionsConfig", "Config", "ConfigError",
    "ConfigFile", "CorsConfig", "EndpointsConfig", "GatewayConfig", "HistoryConfig",
    "HttpConfig", "ImagesConfig", "LimitsConfig", "MetricsConfig", "ModelChoice",
    "ModelsConfig", "ProviderConfig", "RateLimitConfig", "ResponsesConfig", "SessionConfig",
    "WebSocketConfig", "iter_keys", "json_schema", "load_config", "normalize_agent_id",
    "parse_config", "parse_model_ref", "render_key_table", "resolve_config_path",
    "resolve_state_dir", "substitute_env", "with_overrides",
]
