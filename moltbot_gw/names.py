"""The product's names and their clawdbot aliases: the environment variables and request
headers that also answer to the old ``clawdbot`` name. moltbot is canonical; where both are
given, the moltbot name wins. Documented once, in docs/configuration.rst ("Names and the
clawdbot aliases").
"""
from __future__ import annotations

# Environment variables, canonical name first.
CONFIG_PATH_ENV = ("MOLTBOT_CONFIG_PATH", "CLAWDBOT_CONFIG_PATH")
STATE_DIR_ENV = ("MOLTBOT_STATE_DIR", "CLAWDBOT_STATE_DIR")
GATEWAY_TOKEN_ENV = ("MOLTBOT_GATEWAY_TOKEN", "CLAWDBOT_GATEWAY_TOKEN")
GATEWAY_PASSWORD_ENV = ("MOLTBOT_GATEWAY_PASSWORD", "CLAWDBOT_GATEWAY_PASSWORD")

# Request headers of the OpenAI-shaped endpoints (lower case), canonical name first.
AGENT_ID_HEADERS = (b"x-moltbot-agent-id", b"x-clawdbot-agent-id")
SESSION_KEY_HEADERS = (b"x-moltbot-session-key", b"x-clawdbot-session-key")
MODEL_HEADERS = (b"x-moltbot-model", b"x-clawdbot-model")
# All of them: the canonical names, then the aliases (CORS allows each).
GATEWAY_HEADERS = tuple(names[i] for i in (0, 1)
                        for names in (AGENT_ID_HEADERS, SESSION_KEY_HEADERS, MODEL_HEADERS))
