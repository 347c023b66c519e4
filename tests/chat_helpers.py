"""Shared by the end-to-end tests of the OpenAI endpoint (raw HTTP and the ``openai`` SDK):
the gateway config with two agents on a fake upstream, and the fixtures that keep each test
clean (no pooled HTTP connection; the leak check itself is autouse from tests/conftest.py)."""
from __future__ import annotations

# re-exported for the modules that import them from here; both live in tests/conftest.py
from .conftest import http  # noqa: F401
from .support.leaks import no_leftovers  # noqa: F401

PATH = "/v1/chat/completions"
MAIN_PROMPT = "You are Main, the default agent."
BETA_PROMPT = "You are Beta, the second agent."
HI = [{"role": "user", "content": "hi"}]
DONE = b"data: [DONE]\n\n"


def config(up=None, *, enabled=True, chat=None, provider=None, main_model="builtin/echo",
           gateway=None):
    """Agents ``main`` (default) and, with an upstream, ``beta`` on ``up/some-model``."""
    endpoint = {"chatCompletions": {"enabled": enabled, **(chat or {})}}
    if enabled is None:
        endpoint = {}
    raw = {"gateway": {"shutdownGraceSeconds": 3, "http": {"endpoints": endpoint},
                       **(gateway or {})},
           "agents": {"list": [{"id": "main", "default": True, "systemPrompt": MAIN_PROMPT,
                                "model": main_model}]}}
    if up is not None:
        raw["models"] = {"providers": {"up": {"api": "openai-completions",
                                              "baseUrl": up.base_url, **(provider or {})}}}
        raw["agents"]["list"].append({"id": "beta", "systemPrompt": BETA_PROMPT,
                                      "model": "up/some-model"})
    return raw
