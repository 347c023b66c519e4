"""moltbot-gw: a Twisted gateway that runs LLM agents behind a WebSocket protocol and an
OpenAI-compatible HTTP API on one port."""

__version__ = "0.1.0"
